-- billing.start_request(request_id, tool_name, user_id, client_key, client_ip)
--     -> (tracking_id, request_id, status, replayed)
-- Opens the cost-tracking record of one tool call (the original CostTracker.createTrackingRecord):
-- status 'pending'. user_id is the billed user (JWT callers, or an API key bound to a user); API-key
-- callers are identified by client_key; anonymous calls have neither and are tracked all the same.
-- client_ip is the caller's address as the gateway saw it (behind trusted proxies: the forwarded client),
-- kept for the velocity detector's fan-out rule (billing.detect_velocity); optional.
-- Moves no money. Idempotent on request_id: a replay with the same tool, user and client key returns
-- the original record (replayed = true); anything else is a conflict. The address is not compared: a
-- retry may come from another address, and the record keeps the first one.
-- Locks: none.  Errors: BL009 invalid_argument, BL007 unknown_user, BL005 idempotency_conflict.
CREATE OR REPLACE FUNCTION billing.start_request(
    p_request_id text, p_tool_name text, p_user_id uuid DEFAULT NULL, p_client_key text DEFAULT NULL,
    p_client_ip inet DEFAULT NULL,
    OUT tracking_id bigint, OUT request_id text, OUT status text, OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now      timestamptz;
    v_tz       text;
    v_existing billing.cost_tracking;
BEGIN
    PERFORM billing._check_text(p_request_id, 'request_id');
    PERFORM billing._check_text(p_tool_name, 'tool_name');
    -- Optional: a blank client key is no client key (NULL), as for every optional identifier.
    p_client_key := billing._check_text(p_client_key, 'client_key', 200, false);
    SELECT coalesce(c.clock_override, now()), c.time_zone INTO v_now, v_tz FROM billing.config c;
    IF p_user_id IS NOT NULL THEN
        PERFORM billing._load_account(p_user_id, v_tz, NULL, false);  -- BL007 when unknown
    END IF;
    request_id := p_request_id;
    INSERT INTO billing.cost_tracking AS ct (request_id, tool_name, user_id, client_key, client_ip, created_at)
    VALUES (p_request_id, p_tool_name, p_user_id, p_client_key, p_client_ip, v_now)
    ON CONFLICT DO NOTHING
    RETURNING ct.id, ct.status INTO tracking_id, status;
    IF tracking_id IS NOT NULL THEN
        replayed := false;
        RETURN;
    END IF;
    SELECT * INTO v_existing FROM billing.cost_tracking ct WHERE ct.request_id = p_request_id;
    IF v_existing.tool_name <> p_tool_name OR v_existing.user_id IS DISTINCT FROM p_user_id
       OR v_existing.client_key IS DISTINCT FROM p_client_key THEN
        RAISE EXCEPTION 'Idempotency conflict: request % is already tracked for another tool or caller.', p_request_id
            USING ERRCODE = 'BL005',
                  DETAIL = jsonb_build_object('request_id', p_request_id, 'tool_name', v_existing.tool_name,
                                              'requested_tool_name', p_tool_name)::text,
                  HINT = 'Use a new request_id for a new call.';
    END IF;
    tracking_id := v_existing.id;
    status := v_existing.status;
    replayed := true;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.start_request(text, text, uuid, text, inet) TO tollgate_metering;
