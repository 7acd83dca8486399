-- billing.refund(transaction_id, amount_usd, reason, idempotency_key, actor) -> (transaction_id, refund_of,
--     amount_usd, balance_before_usd, balance_after_usd, refunded_total_usd, replayed)
-- Gives back part or all of a charge: a new 'refund' ledger row referencing the charge (the charge row
-- itself is never changed), balance raised. Refunds of one charge never add up to more than the charge.
-- Spend counters (totals, day/month) stay gross: a refund does not reopen room under a limit.
-- An operator's act, audited: the reason is required (not blank) and recorded as the row's description,
-- and the actor on the row's `actor` (NULL: the database login that called, session_user).
-- Refund cap (docs/abuse.md, "Velocity flags and refund caps"): the refunds of one account over the last
-- velocity.refund_cap_days days (billing.abuse_policy; default 30) may add up to at most
-- velocity.refund_cap_usd (default 100); past it the refund is refused (BL030, DETAIL: the cap, the
-- period, what was refunded in it, what is left). 0 in either figure turns the cap off. The sum is read
-- under the account's lock, so concurrent refunds of one account never pass the cap together. Refusing
-- rolls back, so the refusal's audit row is written by billing.record_refused_refund, which the caller runs
-- after catching BL030 (the gateway's admin API does).
-- Idempotent on idempotency_key: a replay with the same charge and amount returns the original refund
-- (replayed = true), whatever the cap says now; the same key with another charge or amount is a conflict.
-- Locks: the user_billing row of the charged user.
-- Errors: BL006 invalid_amount, BL009 invalid_argument (reason, key, actor), BL010 unknown_transaction,
--         BL012 invalid_state (not a charge), BL011 refund_exceeds_charge, BL030 refund_cap_exceeded,
--         BL005 idempotency_conflict.
CREATE OR REPLACE FUNCTION billing.refund(
    p_transaction_id bigint, p_amount_usd numeric, p_reason text, p_idempotency_key text,
    p_actor text DEFAULT NULL,
    OUT transaction_id bigint, OUT refund_of bigint, OUT amount_usd numeric, OUT balance_before_usd numeric,
    OUT balance_after_usd numeric, OUT refunded_total_usd numeric, OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now      timestamptz;
    v_clock      timestamptz;
    v_tz       text;
    v_charge   billing.billing_transactions;
    v_account  billing.user_billing;
    v_tx       billing.billing_transactions;
    v_refunded numeric;
    v_cap      record;
BEGIN
    PERFORM billing._check_usd(p_amount_usd, 'amount_usd');
    PERFORM billing._check_text(p_reason, 'reason', 1000, true, true);
    PERFORM billing._check_text(p_idempotency_key, 'idempotency_key');
    p_actor := coalesce(billing._check_text(p_actor, 'actor', 200, false), session_user::text);
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;

    SELECT * INTO v_charge FROM billing.billing_transactions t WHERE t.id = p_transaction_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown transaction: there is no ledger transaction %.', coalesce(p_transaction_id::text, 'NULL')
            USING ERRCODE = 'BL010', DETAIL = jsonb_build_object('transaction_id', p_transaction_id)::text;
    END IF;
    IF v_charge.type <> 'charge' THEN
        RAISE EXCEPTION 'Invalid state: transaction % is a %, and only charges can be refunded.',
                p_transaction_id, v_charge.type
            USING ERRCODE = 'BL012',
                  DETAIL = jsonb_build_object('transaction_id', p_transaction_id, 'type', v_charge.type)::text,
                  HINT = 'Use billing.adjust for other corrections.';
    END IF;
    v_account := billing._load_account(v_charge.user_id, v_tz, v_clock);
    v_now := v_account.updated_at;

    SELECT coalesce(sum(t.amount_usd), 0) INTO v_refunded
      FROM billing.billing_transactions t WHERE t.refund_of = p_transaction_id;
    SELECT * INTO v_tx FROM billing.billing_transactions t
     WHERE t.type = 'refund' AND t.idempotency_key = p_idempotency_key;
    IF FOUND THEN
        IF v_tx.refund_of <> p_transaction_id OR v_tx.amount_usd <> p_amount_usd THEN
            RAISE EXCEPTION 'Idempotency conflict: refund key % was already used for % USD of transaction %.',
                    p_idempotency_key, billing._fmt_usd(v_tx.amount_usd), v_tx.refund_of
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object('idempotency_key', p_idempotency_key,
                                                  'refund_of', v_tx.refund_of, 'refunded_usd', v_tx.amount_usd,
                                                  'requested_usd', p_amount_usd)::text;
        END IF;
        replayed := true;
    ELSE
        IF v_refunded + p_amount_usd > -v_charge.amount_usd THEN
            RAISE EXCEPTION 'Refund too large: transaction % charged % USD, % USD is already refunded, so at most % USD more can be.',
                    p_transaction_id, billing._fmt_usd(-v_charge.amount_usd), billing._fmt_usd(v_refunded),
                    billing._fmt_usd(-v_charge.amount_usd - v_refunded)
                USING ERRCODE = 'BL011',
                      DETAIL = jsonb_build_object(
                          'transaction_id', p_transaction_id, 'charged_usd', -v_charge.amount_usd,
                          'refunded_usd', v_refunded, 'requested_usd', p_amount_usd,
                          'refundable_usd', -v_charge.amount_usd - v_refunded)::text;
        END IF;
        v_cap := billing._refund_cap_status(v_charge.user_id, v_now);
        IF v_cap.cap_usd > 0 AND v_cap.refunded_usd + p_amount_usd > v_cap.cap_usd THEN
            RAISE EXCEPTION 'Refund cap reached: % USD was refunded to this account in the last % days, and the cap is % USD, so at most % USD more can be refunded now (% USD was asked).',
                    billing._fmt_usd(v_cap.refunded_usd), v_cap.period_days, billing._fmt_usd(v_cap.cap_usd),
                    billing._fmt_usd(greatest(v_cap.cap_usd - v_cap.refunded_usd, 0)), billing._fmt_usd(p_amount_usd)
                USING ERRCODE = 'BL030',
                      DETAIL = jsonb_build_object(
                          'transaction_id', p_transaction_id, 'cap_usd', v_cap.cap_usd,
                          'period_days', v_cap.period_days, 'refunded_usd', v_cap.refunded_usd,
                          'requested_usd', p_amount_usd,
                          'remaining_usd', greatest(v_cap.cap_usd - v_cap.refunded_usd, 0))::text,
                      HINT = 'Refunds to one account are capped per period ([abuse.velocity] refund_cap_usd, refund_cap_days); a provider refund of the payment is not.';
        END IF;
        v_tx := billing._append_ledger(
            v_account, v_now, 'refund', p_amount_usd, v_charge.request_id, p_reason, '{}'::jsonb,
            p_key => p_idempotency_key, p_refund_of => p_transaction_id, p_actor => p_actor);
        IF v_tx.id IS NULL THEN
            RAISE EXCEPTION 'Idempotency conflict: refund key % is already used by another refund.', p_idempotency_key
                USING ERRCODE = 'BL005', DETAIL = jsonb_build_object('idempotency_key', p_idempotency_key)::text;
        END IF;
        PERFORM billing._save_account(billing._account_after(v_account, v_tx));
        v_refunded := v_refunded + p_amount_usd;
        replayed := false;
    END IF;

    transaction_id := v_tx.id;
    refund_of := v_tx.refund_of;
    amount_usd := v_tx.amount_usd;
    balance_before_usd := v_tx.balance_before_usd;
    balance_after_usd := v_tx.balance_after_usd;
    refunded_total_usd := v_refunded;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.refund(bigint, numeric, text, text, text) TO tollgate_operator;
