-- billing.estimate_price(tool_name) -> numeric
-- The amount to hold before a call of the tool (what billing.begin_request reserves):
--  * a priced tool (tool_pricing row): its estimate_usd, or its base_price_usd when that is NULL;
--  * a variable-cost tool (variable_cost = true), or a tool with no tool_pricing row (priced at cost):
--    the greater of that figure (0 for an unpriced tool) and the 95th percentile of price_usd over the
--    tool's newest 200 completed calls with a price. No history: the figure alone.
-- The percentile is percentile_disc: a price some recent call actually had (the smallest one at or
-- above 95% of them), never an interpolation, so it already has at most 8 decimals and needs no
-- rounding; a hold is then the price of a real call, and 5% of calls may overrun it (the overrun
-- policy of billing.settle charges them in full).
-- Cost: one primary-key lookup and, for variable-cost tools, an index-only scan of at most 200 entries
-- of cost_tracking_completed_by_tool (migration 0004). Reads only.
-- Locks: none.  Errors: BL009 invalid_argument (tool_name).
CREATE OR REPLACE FUNCTION billing.estimate_price(p_tool_name text)
RETURNS numeric
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_pricing    billing.tool_pricing;
    v_configured numeric := 0;
    v_recent     numeric;
BEGIN
    PERFORM billing._check_text(p_tool_name, 'tool_name');
    SELECT * INTO v_pricing FROM billing.tool_pricing p WHERE p.tool_name = p_tool_name;
    IF FOUND THEN
        v_configured := coalesce(v_pricing.estimate_usd, v_pricing.base_price_usd);
        IF NOT v_pricing.variable_cost THEN
            RETURN v_configured;
        END IF;
    END IF;
    -- The predicate repeats the partial index's, so the planner can use it.
    SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY recent.price_usd)
      INTO v_recent
      FROM (SELECT ct.price_usd
              FROM billing.cost_tracking ct
             WHERE ct.tool_name = p_tool_name AND ct.status = 'completed' AND ct.price_usd IS NOT NULL
             ORDER BY ct.id DESC
             LIMIT 200) recent;
    RETURN greatest(v_configured, coalesce(v_recent, 0));
END;
$$;

GRANT EXECUTE ON FUNCTION billing.estimate_price(text) TO tollgate_metering;
