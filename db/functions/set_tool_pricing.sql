-- billing.set_tool_pricing(tool_name, base_price_usd, markup_percent, estimate_usd, variable_cost, description,
--     max_price_usd, per_input_char_usd, anonymous) -> billing.tool_pricing
-- Creates or replaces the price of a tool: a base price per call plus a markup on its metered cost
-- (see billing.tool_price); variable_cost marks tools whose cost is only known afterwards. What is held
-- before a call (billing.estimate_price):
--  * max_price_usd, when declared, is the most one call is ever charged (billing.complete_request writes
--    off the rest) and the hold; at least base_price_usd;
--  * per_input_char_usd, when declared, estimates the hold from the call's size: base_price_usd + input
--    characters x per_input_char_usd x (1 + markup_percent / 100), at most max_price_usd; at most 12
--    decimals (rates per character are often below a micro-cent), below 1000000;
--  * estimate_usd is the hold of a tool without either (NULL: the base price); not above max_price_usd.
-- What callers without credentials get (billing.begin_anonymous_call), `anonymous`:
--  * 'deny': refused, told to sign in; 'free': served, never charged; 'free:N/day': served up to N calls a
--    day per client network (1 <= N < 1e9), then refused until the next day;
--  * NULL: the default, which follows the price: 'deny' for a tool that can cost money (base price or markup
--    above 0, variable cost, a maximum or a per-character rate), 'free' otherwise. The effective answer
--    is the row's anonymous_access (a generated column).
-- Locks: the tool_pricing row.  Errors: BL009 invalid_argument (also an unknown anonymous policy),
-- BL006 invalid_amount.
CREATE OR REPLACE FUNCTION billing.set_tool_pricing(
    p_tool_name text, p_base_price_usd numeric, p_markup_percent numeric DEFAULT 0,
    p_estimate_usd numeric DEFAULT NULL, p_variable_cost boolean DEFAULT false, p_description text DEFAULT NULL,
    p_max_price_usd numeric DEFAULT NULL, p_per_input_char_usd numeric DEFAULT NULL,
    p_anonymous text DEFAULT NULL)
RETURNS billing.tool_pricing
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_row          billing.tool_pricing;
    v_spec         text := lower(btrim(p_anonymous));
    v_policy       text;
    v_daily_calls  integer;
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
    IF v_spec IN ('deny', 'free') THEN
        v_policy := v_spec;
    ELSIF v_spec ~ '^free\s*:\s*[1-9][0-9]{0,8}\s*/\s*day$' THEN
        v_policy := 'free';
        v_daily_calls := substring(v_spec FROM '[0-9]+')::integer;
    ELSIF p_anonymous IS NOT NULL THEN
        RAISE EXCEPTION 'Invalid argument: anonymous must be deny, free or free:N/day (N from 1 to 999999999), not %.',
                left(p_anonymous, 60)
            USING ERRCODE = 'BL009',
                  DETAIL = jsonb_build_object('field', 'anonymous', 'value', left(p_anonymous, 60))::text,
                  HINT = 'Leave it unset for the default: deny for a priced tool, free for a free one.';
    END IF;
    INSERT INTO billing.tool_pricing AS p
           (tool_name, base_price_usd, markup_percent, estimate_usd, variable_cost, description, updated_at,
            max_price_usd, per_input_char_usd, anonymous_policy, anonymous_daily_calls)
    VALUES (p_tool_name, p_base_price_usd, p_markup_percent, p_estimate_usd, coalesce(p_variable_cost, false),
            p_description, now(), p_max_price_usd, p_per_input_char_usd, v_policy, v_daily_calls)
    ON CONFLICT (tool_name) DO UPDATE
       SET base_price_usd = EXCLUDED.base_price_usd, markup_percent = EXCLUDED.markup_percent,
           estimate_usd = EXCLUDED.estimate_usd, variable_cost = EXCLUDED.variable_cost,
           description = EXCLUDED.description, updated_at = EXCLUDED.updated_at,
           max_price_usd = EXCLUDED.max_price_usd, per_input_char_usd = EXCLUDED.per_input_char_usd,
           anonymous_policy = EXCLUDED.anonymous_policy, anonymous_daily_calls = EXCLUDED.anonymous_daily_calls
    RETURNING p.* INTO v_row;
    RETURN v_row;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.set_tool_pricing(text, numeric, numeric, numeric, boolean, text, numeric, numeric, text) TO tollgate_operator;
