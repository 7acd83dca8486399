-- billing._within_limits(override, daily_limit_usd, day_spent_usd, monthly_limit_usd, month_spent_usd,
--                        held_usd, amount_usd) -> boolean
-- The spend-limit rule for a new hold or charge: `amount_usd` more must fit the room of the daily and of
-- the monthly limit (billing._limit_room: limit - the window's spend - open holds), unless the admin override
-- (user_billing.limit_override) is set. The spend figures are the current windows' (billing._window_spend).
-- Used by the fast paths of charge and reserve and by billing._limit_status (the exact paths); inlined by
-- the planner (it calls billing._limit_room, whose file sorts before this one: a LANGUAGE sql body must
-- find the functions it calls when it is created).
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._within_limits(
    p_override boolean, p_daily_limit_usd numeric, p_day_spent_usd numeric, p_monthly_limit_usd numeric,
    p_month_spent_usd numeric, p_held_usd numeric, p_amount_usd numeric)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT p_override
        OR (billing._limit_room(p_daily_limit_usd, p_day_spent_usd, p_held_usd) >= p_amount_usd
            AND billing._limit_room(p_monthly_limit_usd, p_month_spent_usd, p_held_usd) >= p_amount_usd)
$$;
