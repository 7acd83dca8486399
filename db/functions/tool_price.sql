-- billing.tool_price(tool_name, cost_usd) -> numeric
-- The price of one call of a tool whose metered cost was `cost_usd`: base_price_usd + cost_usd x
-- (1 + markup_percent/100), rounded half away from zero to 8 decimals. A tool with no row in
-- tool_pricing is priced at cost (pass-through, no markup).
-- Locks: none.  Errors: BL009 invalid_argument (tool_name), BL006 invalid_amount (cost_usd).
CREATE OR REPLACE FUNCTION billing.tool_price(p_tool_name text, p_cost_usd numeric DEFAULT 0)
RETURNS numeric
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_pricing billing.tool_pricing;
BEGIN
    PERFORM billing._check_text(p_tool_name, 'tool_name');
    PERFORM billing._check_usd(p_cost_usd, 'cost_usd', 'non_negative');
    SELECT * INTO v_pricing FROM billing.tool_pricing p WHERE p.tool_name = p_tool_name;
    IF NOT FOUND THEN
        RETURN p_cost_usd;
    END IF;
    RETURN v_pricing.base_price_usd + round(p_cost_usd * (1 + v_pricing.markup_percent / 100), 8);
END;
$$;

GRANT EXECUTE ON FUNCTION billing.tool_price(text, numeric) TO tollgate_metering;
