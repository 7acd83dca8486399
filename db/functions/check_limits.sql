-- billing.check_limits(user_id, cost) -> (allowed, limit_type, spent_usd, held_usd, limit_usd,
--                                         remaining_usd, resets_at, override)
-- Whether `cost` more fits today's and this month's spend limits (spend + open holds + cost), naming
-- the limit that refuses (or, when allowed, the one with less room), its figures and when its window
-- resets (in the configured time zone). With the admin override set, always allowed. Read-only: no
-- lock; billing.reserve and billing.charge decide atomically.
-- Locks: none.  Errors: BL006 invalid_amount (cost), BL007 unknown_user.
CREATE OR REPLACE FUNCTION billing.check_limits(
    p_user_id uuid, p_cost numeric,
    OUT allowed boolean, OUT limit_type text, OUT spent_usd numeric, OUT held_usd numeric,
    OUT limit_usd numeric, OUT remaining_usd numeric, OUT resets_at timestamptz, OUT override boolean)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_clock timestamptz;
    v_tz  text;
BEGIN
    PERFORM billing._check_usd(p_cost, 'cost', 'non_negative');
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;
    SELECT * INTO allowed, limit_type, spent_usd, held_usd, limit_usd, remaining_usd, resets_at, override
      FROM billing._limit_status(billing._load_account(p_user_id, v_tz, v_clock, false), p_cost, v_tz);
END;
$$;

GRANT EXECUTE ON FUNCTION billing.check_limits(uuid, numeric) TO tollgate_metering;
