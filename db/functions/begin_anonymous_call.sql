-- billing.begin_anonymous_call(tool_name, client_ip)
--     -> (usage_day, client_network, access, calls_today, daily_calls, resets_at)
-- The pre-flight of a tool call by a caller without credentials (the anonymous path; billed and API-key
-- callers go through billing.begin_request). It reads the tool's anonymous policy
-- (tool_pricing.anonymous_access; a tool with no price row is free) and:
--   * 'deny' (the default for a tool that can cost money): refuses with BL040, saying to sign in;
--   * 'free': counts the call in billing.anonymous_usage — one row per (day, tool, client network), an
--     upsert — and lets it run;
--   * 'free:N/day': the same, unless the caller's network has already made N calls of the tool today:
--     then BL041, with the limit and when it resets (the next midnight of the configured time zone,
--     billing.config, test clock included) in DETAIL, so the caller can wait exactly that long.
-- Nothing else is written: no cost_tracking row, no hold (anonymous calls are never charged). A refusal
-- writes nothing at all. The quota is exact under any concurrency (several connections or gateway
-- processes): the count and its check are one INSERT ... ON CONFLICT DO UPDATE ... WHERE calls < N on the
-- row, whose lock serialises the callers of one (day, tool, network), and only those. Failed calls count
-- against the quota too (they cost the operator the same); billing.record_anonymous_failure marks them.
-- client_ip is the caller's address (NULL when unknown), grouped by billing._anonymous_network.
-- Result: usage_day and client_network are the aggregate row's key (pass them to
-- billing.record_anonymous_failure); access is the policy applied; calls_today is the count including this
-- call; daily_calls is N (NULL: unlimited); resets_at is when today's count ends.
-- Locks: the anonymous_usage row of (today, tool, network).
-- Errors: BL009 invalid_argument (tool_name), BL040 anonymous_denied, BL041 anonymous_quota_exceeded.
CREATE OR REPLACE FUNCTION billing.begin_anonymous_call(
    p_tool_name text, p_client_ip inet DEFAULT NULL,
    OUT usage_day date, OUT client_network inet, OUT access text, OUT calls_today bigint,
    OUT daily_calls integer, OUT resets_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_tz   text;
    v_now  timestamptz;
BEGIN
    PERFORM billing._check_text(p_tool_name, 'tool_name');
    SELECT p.anonymous_access, p.anonymous_daily_calls INTO access, daily_calls
      FROM billing.tool_pricing p WHERE p.tool_name = p_tool_name;
    access := coalesce(access, 'free');
    IF access = 'deny' THEN
        RAISE EXCEPTION 'Sign-in required: the tool % is not served to anonymous callers.', p_tool_name
            USING ERRCODE = 'BL040',
                  DETAIL = jsonb_build_object('tool_name', p_tool_name, 'anonymous', access)::text,
                  HINT = 'Call it with credentials: an API key or a user''s token (JWT).';
    END IF;

    SELECT c.time_zone, coalesce(c.clock_override, now()) INTO v_tz, v_now FROM billing.config c;
    usage_day := billing._local_day(v_now, v_tz);
    resets_at := (usage_day + 1)::timestamp AT TIME ZONE v_tz;
    client_network := billing._anonymous_network(p_client_ip);

    INSERT INTO billing.anonymous_usage AS u (day, tool_name, client_network, calls, first_call_at, last_call_at)
    VALUES (usage_day, p_tool_name, client_network, 1, v_now, v_now)
    ON CONFLICT ON CONSTRAINT anonymous_usage_pkey DO UPDATE
        SET calls = u.calls + 1, last_call_at = greatest(u.last_call_at, excluded.last_call_at)
        WHERE daily_calls IS NULL OR u.calls < daily_calls
    RETURNING u.calls INTO calls_today;
    IF calls_today IS NULL THEN
        RAISE EXCEPTION 'Anonymous quota reached: the tool % serves % free calls a day to each anonymous client, and this one has used them. They renew at % (%).',
                p_tool_name, daily_calls,
                to_char(resets_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), v_tz
            USING ERRCODE = 'BL041',
                  DETAIL = jsonb_build_object('tool_name', p_tool_name, 'anonymous', access,
                                              'daily_calls', daily_calls, 'calls_today', daily_calls,
                                              'client_network', abbrev(client_network),
                                              'resets_at', resets_at, 'time_zone', v_tz)::text,
                  HINT = 'Wait until then, or call it with credentials: an API key or a user''s token (JWT).';
    END IF;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.begin_anonymous_call(text, inet) TO tollgate_metering;
