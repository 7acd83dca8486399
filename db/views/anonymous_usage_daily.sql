-- billing.anonymous_usage_daily: what callers without credentials called, a row per day, tool and client
-- network (billing.anonymous_usage: aggregated by an upsert per call, never a row per call), with the
-- tool's anonymous policy as it stands now. Sum over client_network for a tool's day; count the rows for
-- its distinct anonymous clients. Refused calls are not here (a refusal writes nothing): the gateway's
-- metrics count them (tollgate_refusals_total{reason="anonymous_denied" | "anonymous_quota_exceeded"}).
CREATE OR REPLACE VIEW billing.anonymous_usage_daily AS
SELECT u.day,
       u.tool_name,
       u.client_network,
       u.calls,
       u.failures,
       u.first_call_at,
       u.last_call_at,
       coalesce(p.anonymous_access, 'free') AS anonymous_policy,
       p.anonymous_daily_calls AS daily_calls,
       coalesce(u.calls >= p.anonymous_daily_calls, false) AS quota_reached
  FROM billing.anonymous_usage u
  LEFT JOIN billing.tool_pricing p ON p.tool_name = u.tool_name;

COMMENT ON VIEW billing.anonymous_usage_daily IS 'Anonymous tool calls per day, tool and client network (aggregated, one row per day x tool x network whatever the call rate; kept until `tollgate ledger prune-anonymous`). Refused calls are not counted here.';
COMMENT ON COLUMN billing.anonymous_usage_daily.day IS 'Calendar day of the calls in the ledger''s configured time zone (billing.configure), the day a daily quota counts.';
COMMENT ON COLUMN billing.anonymous_usage_daily.tool_name IS 'Tool called.';
COMMENT ON COLUMN billing.anonymous_usage_daily.client_network IS 'Caller''s address as counted: an IPv4 address, or an IPv6 /64; 0.0.0.0/0 when the gateway could not tell the address.';
COMMENT ON COLUMN billing.anonymous_usage_daily.calls IS 'Calls served that day (each counted before it ran, failed ones included).';
COMMENT ON COLUMN billing.anonymous_usage_daily.failures IS 'Of those, the calls whose tool failed or timed out.';
COMMENT ON COLUMN billing.anonymous_usage_daily.first_call_at IS 'When the first of those calls began.';
COMMENT ON COLUMN billing.anonymous_usage_daily.last_call_at IS 'When the last of those calls began.';
COMMENT ON COLUMN billing.anonymous_usage_daily.anonymous_policy IS 'The tool''s anonymous policy now (deny, free or free:N/day; it may have changed since): tool_pricing.anonymous_access, free for a tool without a price.';
COMMENT ON COLUMN billing.anonymous_usage_daily.daily_calls IS 'N of free:N/day: calls a client network may make a day; NULL when unlimited (or denied).';
COMMENT ON COLUMN billing.anonymous_usage_daily.quota_reached IS 'True when calls reached daily_calls: that network''s further calls of the day were refused.';

GRANT SELECT ON billing.anonymous_usage_daily TO tollgate_analyst, tollgate_operator;
