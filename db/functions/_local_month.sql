-- billing._local_month(at, time_zone) -> date
-- The month window a charge at `at` belongs to, in the configured time zone: the first day of the month of
-- billing._local_day(at, time_zone). Truncates the local timestamp (date_trunc of a timestamp, IMMUTABLE), so
-- it inlines like _local_day. Shared by the fast paths and billing._load_account.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._local_month(p_at timestamptz, p_time_zone text)
RETURNS date
LANGUAGE sql IMMUTABLE
AS $$ SELECT date_trunc('month', p_at AT TIME ZONE p_time_zone)::date $$;
