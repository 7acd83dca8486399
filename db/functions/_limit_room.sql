-- billing._limit_room(limit_usd, spent_usd, held_usd) -> numeric
-- What a daily or monthly limit still allows: the limit less the window's spend (rolled over:
-- billing._window_spend) and the open holds. Negative when a lowered limit is already passed.
-- Used by billing._within_limits, billing._limit_status and billing._settlement_cover.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._limit_room(p_limit_usd numeric, p_spent_usd numeric, p_held_usd numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$ SELECT p_limit_usd - p_spent_usd - p_held_usd $$;
