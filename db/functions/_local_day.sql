-- billing._local_day(at, time_zone) -> date
-- The calendar day of `at` in the configured time zone: the day window a charge at `at` belongs to
-- (its month window: billing._local_month). Inlined into the fast paths.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._local_day(p_at timestamptz, p_time_zone text)
RETURNS date
LANGUAGE sql IMMUTABLE
AS $$ SELECT (p_at AT TIME ZONE p_time_zone)::date $$;
