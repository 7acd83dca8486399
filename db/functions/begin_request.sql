-- billing.begin_request(request_id, tool_name, user_id, client_key, estimate_usd, ttl, input_chars, client_ip)
--     -> (tracking_id, request_id, status, estimate_usd, reservation_id, reservation_status, available_usd, replayed)
-- The pre-flight half of a metered tool call, in one transaction and one round trip:
--   1. billing.start_request opens the cost-tracking record (status 'pending'), with the caller's address
--      (client_ip, optional: the velocity detector's fan-out rule counts a user's addresses);
--   2. the estimate: estimate_usd, or billing.estimate_price(tool_name, input_chars) when NULL — the
--      tool's declared bound (max_price_usd, or the per-character estimator applied to input_chars, the
--      size of the call's arguments: the gateway counts the characters of every string value in them, at
--      any depth; keys, numbers, booleans and nulls count 0), else its configured figure or recent prices;
--   3. with a user and an estimate > 0, billing.reserve holds it (ttl as there).
-- The hold bounds the charge: billing.complete_request charges above it only what the balance and the
-- limits cover when the call completes (db/README.md, "Overrun").
-- A refused hold raises reserve's error (BL001/BL002/BL003/BL004, with its DETAIL), which rolls back the
-- whole call, the tracking record included: nothing at all is written for a refused call, so a refused
-- call never shows up as pending or unbilled. Billing disabled: reserve answers 'not_billed' and that
-- is passed through (the call is tracked, not charged).
-- With a user and an estimate of 0 there is nothing to hold, but the account is still read (no lock)
-- and a deactivated account (BL004) or one already below zero (a clawback or a debit) or past a limit
-- (lowered since) (BL001/BL002/BL003) is refused: a new call is never taken for them, whatever its estimate.
-- Anonymous and API-key callers (user_id NULL) are tracked, never held.
-- Result: status is the tracking record's; reservation_status is 'held', 'not_billed', the hold's
-- current status on a replay ('settled', 'released', 'expired'), or NULL when no hold applies
-- (no user, or estimate 0 on a billed account); available_usd is the user's available balance after
-- the hold (NULL without a user).
-- Idempotent on request_id: a replay (same tool, user and client key) returns replayed = true and never
-- holds twice. When the first call took a hold, the replay answers from that hold (whatever its
-- status now, through billing.reserve's replay) and the estimate is the held amount, even if the
-- estimate has moved since; an explicit estimate_usd that differs from the hold is a conflict (BL005).
-- A replay of a closed call (completed or failed) takes no hold. A replay of a still-pending call that
-- has no hold (opened by billing.start_request alone, or estimated at 0) proceeds as a first call would.
-- Locks: the user's user_billing row (through billing.reserve) when a hold is taken or replayed.
-- Errors: BL009 invalid_argument (also a negative input_chars), BL006 invalid_amount (estimate_usd),
--         BL007 unknown_user, BL005 idempotency_conflict, BL004 account_inactive, BL001 insufficient_funds,
--         BL002 daily_limit_exceeded, BL003 monthly_limit_exceeded.
CREATE OR REPLACE FUNCTION billing.begin_request(
    p_request_id text, p_tool_name text, p_user_id uuid DEFAULT NULL, p_client_key text DEFAULT NULL,
    p_estimate_usd numeric DEFAULT NULL, p_ttl interval DEFAULT NULL, p_input_chars integer DEFAULT NULL,
    p_client_ip inet DEFAULT NULL,
    OUT tracking_id bigint, OUT request_id text, OUT status text, OUT estimate_usd numeric,
    OUT reservation_id bigint, OUT reservation_status text, OUT available_usd numeric, OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_held_usd  numeric;
    v_tz        text;
    v_clock     timestamptz;
    v_account   billing.user_billing;
BEGIN
    IF p_estimate_usd IS NOT NULL THEN
        PERFORM billing._check_usd(p_estimate_usd, 'estimate_usd', 'non_negative');
    END IF;
    IF p_ttl IS NOT NULL AND (p_ttl <= interval '0' OR p_ttl > interval '1 day') THEN
        RAISE EXCEPTION 'Invalid argument: ttl must be positive and at most 1 day, not %.', p_ttl
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'ttl', 'value', p_ttl::text)::text;
    END IF;
    IF p_input_chars < 0 THEN
        RAISE EXCEPTION 'Invalid argument: input_chars must not be negative (got %).', p_input_chars
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'input_chars', 'value', p_input_chars)::text;
    END IF;

    SELECT s.tracking_id, s.request_id, s.status, s.replayed
      INTO tracking_id, request_id, status, replayed
      FROM billing.start_request(p_request_id, p_tool_name, p_user_id, p_client_key, p_client_ip) s;

    IF replayed THEN
        SELECT r.amount_usd INTO v_held_usd FROM billing.reservations r WHERE r.request_id = p_request_id;
        IF FOUND THEN
            IF p_user_id IS NULL THEN
                RAISE EXCEPTION 'Idempotency conflict: request % holds money of a user but is tracked for a caller without one.',
                        p_request_id
                    USING ERRCODE = 'BL005',
                          DETAIL = jsonb_build_object('request_id', p_request_id, 'held_usd', v_held_usd)::text,
                          HINT = 'Use one request_id per call.';
            END IF;
            -- reserve's replay: the hold as it is now (never a second one), or BL005 for another amount.
            estimate_usd := coalesce(p_estimate_usd, v_held_usd);
            SELECT r.reservation_id, r.status, r.available_usd
              INTO reservation_id, reservation_status, available_usd
              FROM billing.reserve(p_user_id, p_request_id, estimate_usd, p_ttl) r;
            RETURN;
        END IF;
        IF status <> 'pending' THEN
            -- A closed call: a hold now could never be settled.
            estimate_usd := coalesce(p_estimate_usd, billing.estimate_price(p_tool_name, p_input_chars));
            RETURN;
        END IF;
    END IF;

    estimate_usd := coalesce(p_estimate_usd, billing.estimate_price(p_tool_name, p_input_chars));
    IF p_user_id IS NULL THEN
        RETURN;
    END IF;
    IF estimate_usd > 0 THEN
        SELECT r.reservation_id, r.status, r.available_usd
          INTO reservation_id, reservation_status, available_usd
          FROM billing.reserve(p_user_id, p_request_id, estimate_usd, p_ttl) r;
        RETURN;
    END IF;

    SELECT c.time_zone, c.clock_override INTO v_tz, v_clock FROM billing.config c;
    v_account := billing._load_account(p_user_id, v_tz, v_clock, false);
    IF v_account.billing_enabled THEN
        PERFORM billing._refuse_unaffordable(v_account, 0, v_tz);
    ELSE
        reservation_status := 'not_billed';
    END IF;
    available_usd := billing._available_usd(v_account.balance_usd, v_account.held_usd, v_account.cooling_usd);
END;
$$;

GRANT EXECUTE ON FUNCTION billing.begin_request(text, text, uuid, text, numeric, interval, integer, inet) TO tollgate_metering;
