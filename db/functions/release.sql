-- billing.release(request_id) -> (request_id, status, released_usd, replayed)
-- Drops a hold taken by billing.reserve (the tool failed or was not run): the reservation is marked
-- 'released' and its amount stops counting against the balance and the limits. Nothing is charged.
-- A hold that already expired stays 'expired' (released_usd 0: expiry freed it).
-- Idempotent: releasing a released hold returns the original result with replayed = true.
-- Releasing a settled hold is refused (refund the charge instead).
-- Locks: the user's user_billing row.
-- Errors: BL009 invalid_argument, BL008 unknown_request, BL012 invalid_state.
CREATE OR REPLACE FUNCTION billing.release(
    p_request_id text,
    OUT request_id text, OUT status text, OUT released_usd numeric, OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now         timestamptz;
    v_clock         timestamptz;
    v_tz          text;
    v_user_id     uuid;
    v_account     billing.user_billing;
    v_reservation billing.reservations;
BEGIN
    PERFORM billing._check_text(p_request_id, 'request_id');
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;
    SELECT r.user_id INTO v_user_id FROM billing.reservations r WHERE r.request_id = p_request_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown request: no hold was taken for request %.', p_request_id
            USING ERRCODE = 'BL008', DETAIL = jsonb_build_object('request_id', p_request_id)::text;
    END IF;
    v_account := billing._load_account(v_user_id, v_tz, v_clock);
    v_now := v_account.updated_at;
    SELECT * INTO v_reservation FROM billing.reservations r WHERE r.request_id = p_request_id;
    request_id := p_request_id;
    status := v_reservation.status;
    replayed := false;
    released_usd := 0;

    CASE v_reservation.status
    WHEN 'held' THEN
        UPDATE billing.reservations r SET status = 'released', resolved_at = v_now WHERE r.id = v_reservation.id;
        v_account.held_usd := v_account.held_usd - v_reservation.amount_usd;
        PERFORM billing._save_account(v_account);
        status := 'released';
        released_usd := v_reservation.amount_usd;
    WHEN 'released' THEN
        released_usd := v_reservation.amount_usd;
        replayed := true;
    WHEN 'expired' THEN
        NULL;
    ELSE
        RAISE EXCEPTION 'Invalid state: the hold for request % was already settled, so it cannot be released.',
                p_request_id
            USING ERRCODE = 'BL012',
                  DETAIL = jsonb_build_object('request_id', p_request_id, 'status', v_reservation.status,
                                              'transaction_id', v_reservation.transaction_id)::text,
                  HINT = 'To give the money back, refund the charge with billing.refund.';
    END CASE;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.release(text) TO tollgate_metering;
