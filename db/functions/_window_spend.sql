-- billing._window_spend(spent_usd, counted_from, window_start) -> numeric
-- The lazy roll-over of a day or month spend counter: what `spent_usd`, the counter of the window starting
-- on `counted_from` (user_billing.day_start or month_start, NULL before the first charge), counts in the
-- window starting on `window_start` (billing._local_day / billing._local_month of the current time): all of
-- it in the same window, nothing once the window has moved on. The one statement of the rule, used by the
-- fast paths of charge, reserve and settle and by billing._load_account (the exact paths); a LANGUAGE sql
-- expression so that the planner inlines it into the fast paths' single statements.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._window_spend(p_spent_usd numeric, p_counted_from date, p_window_start date)
RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN p_counted_from = p_window_start THEN p_spent_usd ELSE 0 END $$;
