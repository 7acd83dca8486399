-- billing.record_anonymous_failure(usage_day, tool_name, client_network) -> boolean
-- Marks one anonymous call counted by billing.begin_anonymous_call as failed (the tool errored or timed
-- out): failures + 1 on its billing.anonymous_usage row, never past the row's calls. Pass the usage_day
-- and client_network begin_anonymous_call answered (a call that crosses midnight is counted on the day it
-- began). A successful call needs no second statement. Returns false when there is no such row or every
-- call on it is already marked failed (nothing written).
-- Locks: that anonymous_usage row.  Errors: BL009 invalid_argument (missing argument, tool_name).
CREATE OR REPLACE FUNCTION billing.record_anonymous_failure(
    p_usage_day date, p_tool_name text, p_client_network inet)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
BEGIN
    PERFORM billing._check_text(p_tool_name, 'tool_name');
    IF p_usage_day IS NULL OR p_client_network IS NULL THEN
        RAISE EXCEPTION 'Invalid argument: usage_day and client_network are required (as billing.begin_anonymous_call answered them).'
            USING ERRCODE = 'BL009',
                  DETAIL = jsonb_build_object('field', CASE WHEN p_usage_day IS NULL THEN 'usage_day'
                                                            ELSE 'client_network' END)::text;
    END IF;
    UPDATE billing.anonymous_usage u
       SET failures = u.failures + 1
     WHERE u.day = p_usage_day AND u.tool_name = p_tool_name AND u.client_network = p_client_network
       AND u.failures < u.calls;
    RETURN FOUND;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.record_anonymous_failure(date, text, inet) TO tollgate_metering;
