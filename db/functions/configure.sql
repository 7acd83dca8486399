-- billing.configure(time_zone, hold_ttl) -> (time_zone, hold_ttl)
-- Sets the time zone of the daily/monthly spend windows (an IANA name, default 'UTC') and the default
-- lifetime of holds; NULL keeps a setting. Windows roll over lazily: after a time-zone change, an
-- account's counters restart at its next call when its current day differs in the new zone.
-- Locks: the billing.config row.  Errors: BL009 invalid_argument (unknown time zone, ttl out of range).
CREATE OR REPLACE FUNCTION billing.configure(
    p_time_zone text DEFAULT NULL, p_hold_ttl interval DEFAULT NULL,
    OUT time_zone text, OUT hold_ttl interval)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
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
    UPDATE billing.config c
       SET time_zone = coalesce(p_time_zone, c.time_zone), hold_ttl = coalesce(p_hold_ttl, c.hold_ttl)
    RETURNING c.time_zone, c.hold_ttl INTO time_zone, hold_ttl;
END;
$$;
