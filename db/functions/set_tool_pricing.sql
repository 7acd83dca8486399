-- billing.set_tool_pricing(tool_name, base_price_usd, markup_percent, estimate_usd, variable_cost, description)
--     -> billing.tool_pricing
-- Creates or replaces the price of a tool: a base price per call plus a markup on its metered cost
-- (see billing.tool_price); estimate_usd is the hold taken before the call (NULL: the base price);
-- variable_cost marks tools whose cost is only known afterwards.
-- Locks: the tool_pricing row.  Errors: BL009 invalid_argument, BL006 invalid_amount.
CREATE OR REPLACE FUNCTION billing.set_tool_pricing(
    p_tool_name text, p_base_price_usd numeric, p_markup_percent numeric DEFAULT 0,
    p_estimate_usd numeric DEFAULT NULL, p_variable_cost boolean DEFAULT false, p_description text DEFAULT NULL)
RETURNS billing.tool_pricing
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_row billing.tool_pricing;
BEGIN
    PERFORM billing._check_text(p_tool_name, 'tool_name');
    PERFORM billing._check_usd(p_base_price_usd, 'base_price_usd', 'non_negative');
    PERFORM billing._check_usd(p_markup_percent, 'markup_percent', 'non_negative');
    IF p_markup_percent > 100000 OR p_markup_percent <> round(p_markup_percent, 4) THEN
        RAISE EXCEPTION 'Invalid amount: markup_percent must be at most 100000 with at most 4 decimals, not %.',
                p_markup_percent
            USING ERRCODE = 'BL006', DETAIL = jsonb_build_object('field', 'markup_percent')::text;
    END IF;
    IF p_estimate_usd IS NOT NULL THEN
        PERFORM billing._check_usd(p_estimate_usd, 'estimate_usd', 'non_negative');
    END IF;
    PERFORM billing._check_text(p_description, 'description', 1000, false, true);
    INSERT INTO billing.tool_pricing AS p
           (tool_name, base_price_usd, markup_percent, estimate_usd, variable_cost, description, updated_at)
    VALUES (p_tool_name, p_base_price_usd, p_markup_percent, p_estimate_usd, coalesce(p_variable_cost, false),
            p_description, now())
    ON CONFLICT (tool_name) DO UPDATE
       SET base_price_usd = EXCLUDED.base_price_usd, markup_percent = EXCLUDED.markup_percent,
           estimate_usd = EXCLUDED.estimate_usd, variable_cost = EXCLUDED.variable_cost,
           description = EXCLUDED.description, updated_at = EXCLUDED.updated_at
    RETURNING p.* INTO v_row;
    RETURN v_row;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.set_tool_pricing(text, numeric, numeric, numeric, boolean, text) TO tollgate_operator;
