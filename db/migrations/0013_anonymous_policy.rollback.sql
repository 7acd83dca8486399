-- Rolls back 0013: the anonymous policy and the daily aggregate of anonymous calls. set_tool_pricing's
-- signature changed: it is dropped; the next `tollgate migrate` of the earlier code re-creates it.
DROP VIEW IF EXISTS billing.anonymous_usage_daily;
DROP FUNCTION IF EXISTS billing.begin_anonymous_call(text, inet);
DROP FUNCTION IF EXISTS billing.record_anonymous_failure(date, text, inet);
DROP FUNCTION IF EXISTS billing.prune_anonymous_usage(date);
DROP FUNCTION IF EXISTS billing._anonymous_network(inet);
DROP FUNCTION IF EXISTS billing.set_tool_pricing(text, numeric, numeric, numeric, boolean, text, numeric, numeric, text);
DROP TABLE billing.anonymous_usage;
ALTER TABLE billing.tool_pricing
    DROP COLUMN anonymous_access,
    DROP COLUMN anonymous_daily_calls,
    DROP COLUMN anonymous_policy;
