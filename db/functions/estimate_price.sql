-- billing.estimate_price(tool_name, input_chars) -> numeric
-- The amount to hold before a call of the tool (what billing.begin_request reserves), in this order:
--  1. a declared estimator and the call's size (per_input_char_usd and input_chars not NULL):
--     base_price_usd + input_chars x per_input_char_usd x (1 + markup_percent / 100), rounded UP to 8
--     decimals (a bound, not a price), at most max_price_usd when one is declared;
--  2. a declared max_price_usd (and no estimate from the size): max_price_usd;
--  3. otherwise the configured figure, estimate_usd or else base_price_usd (0 for a tool without a
--     tool_pricing row, priced at cost); for a variable-cost tool (variable_cost, or no tool_pricing row)
--     the greater of that figure and the 95th percentile of recent *billed* prices, described below.
-- The result is at most 999999999999.99999999 (a hold billing.reserve can refuse with BL001).
-- The percentile learns only from calls somebody paid for, so that no caller can steer everyone's holds:
--  * billed calls only: completed calls with a ledger charge (cost_tracking.transaction_id), never
--    anonymous, unbound API-key or billing-disabled calls (which pay nothing for the prices they report);
--  * at most 5 samples per user: of the tool's newest 1000 billed calls, each user's newest 5, and of
--    those the newest 200;
--  * at least 100 samples, or the configured figure alone. With 100 or more samples and at most 5 from
--    any user, the 95th percentile is never one of a single user's values at the top or bottom: one user
--    moves it at most 5 ranks either way. A user who fills the whole 1000-call window leaves 5 samples, so
--    the estimate falls back to the configured figure (the floor operators set), never to that user's.
-- The percentile is percentile_disc over the tool's price as computed (cost_tracking.price_usd, whatever
-- was written off): a price some recent call actually had, never an interpolation, so at most 8 decimals.
-- Cost: one primary-key lookup; for the percentile, an index-only scan of at most 1000 entries of
-- cost_tracking_billed_by_tool (migration 0008: tool, id DESC, with user and price), a sort of those by
-- user for the per-user cap, and one of at most 200 prices. Reads only.
-- Locks: none.  Errors: BL009 invalid_argument (tool_name, input_chars).
CREATE OR REPLACE FUNCTION billing.estimate_price(p_tool_name text, p_input_chars integer DEFAULT NULL)
RETURNS numeric
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_pricing    billing.tool_pricing;
    v_configured numeric := 0;
    v_recent     numeric;
    v_samples    bigint;
BEGIN
    PERFORM billing._check_text(p_tool_name, 'tool_name');
    IF p_input_chars < 0 THEN
        RAISE EXCEPTION 'Invalid argument: input_chars must not be negative (got %).', p_input_chars
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'input_chars', 'value', p_input_chars)::text;
    END IF;
    SELECT * INTO v_pricing FROM billing.tool_pricing p WHERE p.tool_name = p_tool_name;
    IF FOUND THEN
        IF v_pricing.per_input_char_usd IS NOT NULL AND p_input_chars IS NOT NULL THEN
            RETURN least(v_pricing.base_price_usd
                             + ceil(p_input_chars * v_pricing.per_input_char_usd
                                    * (1 + v_pricing.markup_percent / 100) * 1e8) / 1e8,
                         v_pricing.max_price_usd, 999999999999.99999999)::numeric(20, 8);
        ELSIF v_pricing.max_price_usd IS NOT NULL THEN
            RETURN v_pricing.max_price_usd;
        END IF;
        v_configured := coalesce(v_pricing.estimate_usd, v_pricing.base_price_usd);
        IF NOT v_pricing.variable_cost THEN
            RETURN v_configured;
        END IF;
    END IF;
    -- The innermost predicate repeats the partial index's, so the planner can use it.
    SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY sample.price_usd), count(*)
      INTO v_recent, v_samples
      FROM (SELECT capped.price_usd
              FROM (SELECT newest.id, newest.price_usd,
                           row_number() OVER (PARTITION BY newest.user_id ORDER BY newest.id DESC) AS nth
                      FROM (SELECT ct.id, ct.user_id, ct.price_usd
                              FROM billing.cost_tracking ct
                             WHERE ct.tool_name = p_tool_name AND ct.status = 'completed'
                               AND ct.transaction_id IS NOT NULL
                             ORDER BY ct.id DESC
                             LIMIT 1000) newest) capped
             WHERE capped.nth <= 5
             ORDER BY capped.id DESC
             LIMIT 200) sample;
    IF v_samples < 100 THEN
        RETURN v_configured;
    END IF;
    RETURN greatest(v_configured, v_recent);
END;
$$;

GRANT EXECUTE ON FUNCTION billing.estimate_price(text, integer) TO tollgate_metering;
