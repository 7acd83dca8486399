-- billing.set_tool_pricing(tool_name, base_price_usd, markup_percent, estimate_usd, variable_cost, description,
--     max_price_usd, per_input_char_usd) -> billing.tool_pricing
-- Creates or replaces the price of a tool: a base price per call plus a markup on its metered cost
-- (see billing.tool_price); variable_cost marks tools whose cost is only known afterwards. What is held
-- before a call (billing.estimate_price):
--  * max_price_usd, when declared, is the most one call is ever charged (billing.complete_request writes
--    off the rest) and the hold; at least base_price_usd;
--  * per_input_char_usd, when declared, estimates the hold from the call's size: base_price_usd + input
--    characters x per_input_char_usd x (1 + markup_percent / 100), at most max_price_usd; at most 12
--    decimals (rates per character are often below a micro-cent), below 1000000;
--  * estimate_usd is the hold of a tool without either (NULL: the base price); not above max_price_usd.
-- Locks: the tool_pricing row.  Errors: BL009 invalid_argument, BL006 invalid_amount.
CREATE OR REPLACE FUNCTION billing.set_tool_pricing(
    p_tool_name text, p_base_price_usd numeric, p_markup_percent numeric DEFAULT 0,
    p_estimate_usd numeric DEFAULT NULL, p_variable_cost boolean DEFAULT false, p_description text DEFAULT NULL,
    p_max_price_usd numeric DEFAULT NULL, p_per_input_char_usd numeric DEFAULT NULL)
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
    IF p_max_price_usd IS NOT NULL THEN
        PERFORM billing._check_usd(p_max_price_usd, 'max_price_usd', 'positive');
        IF p_max_price_usd < p_base_price_usd THEN
            RAISE EXCEPTION 'Invalid amount: max_price_usd % is below base_price_usd %: every call would be written off in part.',
                    billing._fmt_usd(p_max_price_usd), billing._fmt_usd(p_base_price_usd)
                USING ERRCODE = 'BL006',
                      DETAIL = jsonb_build_object('field', 'max_price_usd', 'max_price_usd', p_max_price_usd,
                                                  'base_price_usd', p_base_price_usd)::text;
        END IF;
        IF p_estimate_usd > p_max_price_usd THEN
            RAISE EXCEPTION 'Invalid amount: estimate_usd % is above max_price_usd %: a call is never charged more than its maximum.',
                    billing._fmt_usd(p_estimate_usd), billing._fmt_usd(p_max_price_usd)
                USING ERRCODE = 'BL006',
                      DETAIL = jsonb_build_object('field', 'estimate_usd', 'estimate_usd', p_estimate_usd,
                                                  'max_price_usd', p_max_price_usd)::text;
        END IF;
    END IF;
    IF p_per_input_char_usd IS NOT NULL AND (
           p_per_input_char_usd = 'NaN' OR p_per_input_char_usd < 0 OR p_per_input_char_usd >= 1000000
           OR p_per_input_char_usd <> round(p_per_input_char_usd, 12)) THEN
        RAISE EXCEPTION 'Invalid amount: per_input_char_usd must be a finite amount from 0 to below 1000000 with at most 12 decimals, not %.',
                p_per_input_char_usd
            USING ERRCODE = 'BL006',
                  DETAIL = jsonb_build_object('field', 'per_input_char_usd', 'value', p_per_input_char_usd::text)::text,
                  HINT = 'Send a decimal number such as 0.0000013 (USD per character of the call''s arguments).';
    END IF;
    PERFORM billing._check_text(p_description, 'description', 1000, false, true);
    INSERT INTO billing.tool_pricing AS p
           (tool_name, base_price_usd, markup_percent, estimate_usd, variable_cost, description, updated_at,
            max_price_usd, per_input_char_usd)
    VALUES (p_tool_name, p_base_price_usd, p_markup_percent, p_estimate_usd, coalesce(p_variable_cost, false),
            p_description, now(), p_max_price_usd, p_per_input_char_usd)
    ON CONFLICT (tool_name) DO UPDATE
       SET base_price_usd = EXCLUDED.base_price_usd, markup_percent = EXCLUDED.markup_percent,
           estimate_usd = EXCLUDED.estimate_usd, variable_cost = EXCLUDED.variable_cost,
           description = EXCLUDED.description, updated_at = EXCLUDED.updated_at,
           max_price_usd = EXCLUDED.max_price_usd, per_input_char_usd = EXCLUDED.per_input_char_usd
    RETURNING p.* INTO v_row;
    RETURN v_row;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.set_tool_pricing(text, numeric, numeric, numeric, boolean, text, numeric, numeric) TO tollgate_operator;
