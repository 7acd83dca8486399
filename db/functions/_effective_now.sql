-- billing._effective_now(clock_override, clock, last_change) -> timestamptz
-- The time a money-moving statement acts at: the test clock when set; otherwise `clock`, but never
-- earlier than the account's last change (user_billing.updated_at), so the times an account sees never
-- go backwards even for a statement whose clock was read before it waited for the account's lock.
-- Inlined into the single-statement fast paths of charge, reserve and settle.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._effective_now(
    p_clock_override timestamptz, p_clock timestamptz, p_last_change timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN p_clock_override IS NOT NULL THEN p_clock_override ELSE greatest(p_clock, p_last_change) END $$;
