-- billing.settle(request_id, actual_usd, description, metadata) -> (transaction_id, request_id, status,
--     charged_usd, released_usd, balance_after_usd, replayed)
-- Converts a hold taken by billing.reserve into a charge of the actual price, which may be lower or
-- higher than the hold, and frees the hold: one 'charge' ledger row (none when the price is 0 or
-- billing is disabled for the user), balance, totals and day/month spend updated, the reservation
-- marked 'settled' — one transaction.
-- Overrun policy: the tool already ran, so the actual price is charged in full even when it is above
-- the hold, above the available balance or past a limit, and even if the hold expired meanwhile. The
-- balance can go below zero only this way (by the overrun of calls already running, never by a new
-- call); the next billing.reserve/charge is then refused until the balance is topped up.
-- Idempotent on request_id: a replay with the same actual price returns the original result
-- (replayed = true; also when billing was disabled and nothing was charged); a different price is a
-- conflict. Settling a released hold is refused, and so is settling a request that was already
-- charged directly with billing.charge (a conflict: one charge per request).
-- Locks: the user's user_billing row (the reservation is only changed under it).
-- Errors: BL006 invalid_amount, BL009 invalid_argument, BL008 unknown_request, BL005 idempotency_conflict,
--         BL012 invalid_state.
CREATE OR REPLACE FUNCTION billing.settle(
    p_request_id text, p_actual_usd numeric, p_description text DEFAULT NULL, p_metadata jsonb DEFAULT NULL,
    OUT transaction_id bigint, OUT request_id text, OUT status text, OUT charged_usd numeric,
    OUT released_usd numeric, OUT balance_after_usd numeric, OUT replayed boolean)
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
    v_tx          billing.billing_transactions;
BEGIN
    PERFORM billing._check_usd(p_actual_usd, 'actual_usd', 'non_negative');
    PERFORM billing._check_text(p_request_id, 'request_id');
    PERFORM billing._check_text(p_description, 'description', 1000, false, true);
    p_metadata := billing._check_metadata(p_metadata);
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;

    SELECT r.user_id INTO v_user_id FROM billing.reservations r WHERE r.request_id = p_request_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown request: no hold was taken for request %.', p_request_id
            USING ERRCODE = 'BL008', DETAIL = jsonb_build_object('request_id', p_request_id)::text,
                  HINT = 'Call billing.reserve before settling, or billing.charge to charge without a hold.';
    END IF;
    v_account := billing._load_account(v_user_id, v_tz, v_clock);
    v_now := v_account.updated_at;
    SELECT * INTO v_reservation FROM billing.reservations r WHERE r.request_id = p_request_id;
    request_id := p_request_id;

    IF v_reservation.status = 'settled' THEN
        SELECT * INTO v_tx FROM billing.billing_transactions t WHERE t.id = v_reservation.transaction_id;
        charged_usd := coalesce(-v_tx.amount_usd, 0);
        IF v_reservation.settled_usd <> p_actual_usd THEN
            RAISE EXCEPTION 'Idempotency conflict: request % was already settled at % USD, not % USD.',
                    p_request_id, billing._fmt_usd(v_reservation.settled_usd), billing._fmt_usd(p_actual_usd)
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object('request_id', p_request_id, 'settled_usd', v_reservation.settled_usd,
                                                  'charged_usd', charged_usd, 'requested_usd', p_actual_usd)::text;
        END IF;
        transaction_id := v_tx.id;
        status := 'settled';
        released_usd := greatest(v_reservation.amount_usd - charged_usd, 0);
        balance_after_usd := coalesce(v_tx.balance_after_usd, v_account.balance_usd);
        replayed := true;
        RETURN;
    ELSIF v_reservation.status = 'released' THEN
        RAISE EXCEPTION 'Invalid state: the hold for request % was released (the call failed), so it cannot be settled.',
                p_request_id
            USING ERRCODE = 'BL012',
                  DETAIL = jsonb_build_object('request_id', p_request_id, 'status', 'released')::text,
                  HINT = 'To charge for it anyway, use billing.charge with a new request_id.';
    END IF;

    -- 'held', or 'expired' (the tool outlived its hold; the work was done, so it is still charged).
    IF v_reservation.status = 'held' THEN
        v_account.held_usd := v_account.held_usd - v_reservation.amount_usd;
    END IF;
    IF p_actual_usd > 0 AND v_account.billing_enabled THEN
        v_tx := billing._record_charge(v_account, v_now, p_request_id, p_actual_usd, p_description, p_metadata);
        v_account := billing._account_after(v_account, v_tx);
    END IF;
    UPDATE billing.reservations r
       SET status = 'settled', resolved_at = v_now, settled_usd = p_actual_usd, transaction_id = v_tx.id
     WHERE r.id = v_reservation.id;
    PERFORM billing._save_account(v_account);

    transaction_id := v_tx.id;
    status := 'settled';
    charged_usd := coalesce(-v_tx.amount_usd, 0);
    released_usd := greatest(v_reservation.amount_usd - charged_usd, 0);
    balance_after_usd := v_account.balance_usd;
    replayed := false;
END;
$$;
