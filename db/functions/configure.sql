-- billing.configure(time_zone, hold_ttl) -> (time_zone, hold_ttl)
-- Sets the time zone of the daily/monthly spend windows (an IANA name, default 'UTC') and the default
-- lifetime of holds; NULL keeps a setting.
-- A time-zone change moves the window boundaries, so the day and month counters of every account are
-- recomputed from the ledger for the windows that contain "now" in the new zone: spend already made
-- in the new day still counts against the limit, and billing.verify_ledger stays empty. That reads
-- the current month of the whole ledger: a rare operator action.
-- Locks: the billing.config row; on a time-zone change, every user_billing row.
-- Errors: BL009 invalid_argument (unknown time zone, ttl out of range).
CREATE OR REPLACE FUNCTION billing.configure(
    p_time_zone text DEFAULT NULL, p_hold_ttl interval DEFAULT NULL,
    OUT time_zone text, OUT hold_ttl interval)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
SET jit = off  -- JIT compiles big plans for seconds (seen on Debian's PostgreSQL 15); never worth it here
AS $$
DECLARE
    v_old_zone  text;
    v_now       timestamptz;
    v_today     date;
    v_month     date;
BEGIN
    IF p_time_zone IS NOT NULL AND NOT EXISTS (SELECT FROM pg_catalog.pg_timezone_names WHERE name = p_time_zone) THEN
        RAISE EXCEPTION 'Invalid argument: % is not a known time zone name.', p_time_zone
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'time_zone', 'value', p_time_zone)::text,
                  HINT = 'Use an IANA name such as UTC or Europe/Kyiv.';
    END IF;
    IF p_hold_ttl IS NOT NULL AND (p_hold_ttl <= interval '0' OR p_hold_ttl > interval '1 day') THEN
        RAISE EXCEPTION 'Invalid argument: hold_ttl must be positive and at most 1 day, not %.', p_hold_ttl
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'hold_ttl')::text;
    END IF;
    SELECT c.time_zone, coalesce(c.clock_override, now()) INTO v_old_zone, v_now FROM billing.config c FOR UPDATE;
    UPDATE billing.config c
       SET time_zone = coalesce(p_time_zone, c.time_zone), hold_ttl = coalesce(p_hold_ttl, c.hold_ttl)
    RETURNING c.time_zone, c.hold_ttl INTO time_zone, hold_ttl;

    IF time_zone <> v_old_zone THEN
        v_today := (v_now AT TIME ZONE time_zone)::date;
        v_month := date_trunc('month', v_today)::date;
        WITH spend AS (
            SELECT t.user_id,
                   sum(-t.amount_usd) FILTER (WHERE t.created_at >= v_today::timestamp AT TIME ZONE time_zone) AS day,
                   sum(-t.amount_usd) AS month
              FROM billing.billing_transactions t
             WHERE t.type = 'charge' AND t.created_at >= v_month::timestamp AT TIME ZONE time_zone
             GROUP BY t.user_id
        )
        UPDATE billing.user_billing b
           SET day_start = v_today,
               day_spent_usd = coalesce(s.day, 0),
               month_start = v_month,
               month_spent_usd = coalesce(s.month, 0),
               updated_at = greatest(b.updated_at, now())
          FROM billing.user_billing b2
          LEFT JOIN spend s ON s.user_id = b2.user_id
         WHERE b.user_id = b2.user_id;
    END IF;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.configure(text, interval) TO tollgate_operator;
