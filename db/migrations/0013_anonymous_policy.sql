-- depends: 0012_velocity
-- The anonymous policy (issue 14, item 2): what a caller without credentials may call, and a bounded
-- record of what they called.
--  * tool_pricing.anonymous_policy / anonymous_daily_calls: the operator's setting per tool — 'deny', 'free',
--    or 'free' with a number of calls a day per client network (set_tool_pricing's p_anonymous, written
--    'deny' | 'free' | 'free:N/day'); NULL means the default, which follows the price: a tool that can cost
--    money (base price, markup, variable cost, a declared maximum or a per-character rate) is denied to
--    anonymous callers, a free or unpriced one is served. tool_pricing.anonymous_access is that effective
--    answer, kept by the database itself (a generated column), so the rule lives in one place and every
--    reader (billing.begin_anonymous_call, list_tool_pricing, the view) sees the same.
--  * anonymous_usage: anonymous calls are aggregated, not tracked one by one: one row per (day in the
--    configured time zone, tool, client network), counted by an upsert. Its size is bounded by
--    days x tools x active client networks, whatever the call rate (a flood from one address is one row a
--    day per tool), where cost_tracking grew ~535 bytes per call. Anonymous calls are never charged, so
--    they need no hold and no cost_tracking row. The daily quota is enforced on the same row, under its
--    row lock, so it is exact with any number of concurrent callers and gateway processes.
-- Functions whose signature changes are dropped here (db/functions re-creates them; see 0008).

ALTER TABLE billing.tool_pricing
    ADD COLUMN anonymous_policy text
        CONSTRAINT tool_pricing_anonymous_policy_known CHECK (anonymous_policy IN ('deny', 'free')),
    ADD COLUMN anonymous_daily_calls integer
        CONSTRAINT tool_pricing_anonymous_daily_calls_range
        CHECK (anonymous_daily_calls IS NULL
               OR (coalesce(anonymous_policy = 'free', false)
                   AND anonymous_daily_calls BETWEEN 1 AND 1000000000));

ALTER TABLE billing.tool_pricing
    ADD COLUMN anonymous_access text GENERATED ALWAYS AS (
        CASE
            WHEN anonymous_policy = 'free' AND anonymous_daily_calls IS NOT NULL
                THEN 'free:' || anonymous_daily_calls || '/day'
            WHEN anonymous_policy IS NOT NULL THEN anonymous_policy
            WHEN base_price_usd > 0 OR markup_percent > 0 OR variable_cost OR max_price_usd IS NOT NULL
                 OR coalesce(per_input_char_usd > 0, false) THEN 'deny'
            ELSE 'free'
        END) STORED;

CREATE TABLE billing.anonymous_usage (
    -- The calendar day in the configured time zone (billing.config.time_zone, the spend limits' zone).
    day             date NOT NULL,
    tool_name       text NOT NULL CONSTRAINT anonymous_usage_tool_name_length CHECK (length(tool_name) BETWEEN 1 AND 200),
    -- The caller's address as the quota counts it: an IPv4 address (/32), an IPv6 /64 (one host's subnet);
    -- 0.0.0.0/0 when the address is unknown (every such caller shares one count).
    client_network  inet NOT NULL,
    calls           bigint NOT NULL CONSTRAINT anonymous_usage_calls_positive CHECK (calls > 0),
    failures        bigint NOT NULL DEFAULT 0
                    CONSTRAINT anonymous_usage_failures_range CHECK (failures >= 0 AND failures <= calls),
    first_call_at   timestamptz NOT NULL,
    last_call_at    timestamptz NOT NULL,
    CONSTRAINT anonymous_usage_pkey PRIMARY KEY (day, tool_name, client_network)
) WITH (fillfactor = 70);  -- room for HOT updates: each call rewrites its row's counters, never the key
ALTER TABLE billing.anonymous_usage OWNER TO tollgate_owner;

DROP FUNCTION IF EXISTS billing.set_tool_pricing(text, numeric, numeric, numeric, boolean, text, numeric, numeric);
