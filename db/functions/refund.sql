-- billing.refund(transaction_id, amount_usd, reason, idempotency_key) -> (transaction_id, refund_of,
--     amount_usd, balance_before_usd, balance_after_usd, refunded_total_usd, replayed)
-- Gives back part or all of a charge: a new 'refund' ledger row referencing the charge (the charge row
-- itself is never changed), balance raised. Refunds of one charge never add up to more than the charge.
-- Spend counters (totals, day/month) stay gross: a refund does not reopen room under a limit.
-- Idempotent on idempotency_key: a replay with the same charge and amount returns the original refund
-- (replayed = true); the same key with another charge or amount is a conflict.
-- Locks: the user_billing row of the charged user.
-- Errors: BL006 invalid_amount, BL009 invalid_argument, BL010 unknown_transaction, BL012 invalid_state
--         (not a charge), BL011 refund_exceeds_charge, BL005 idempotency_conflict.
CREATE OR REPLACE FUNCTION billing.refund(
    p_transaction_id bigint, p_amount_usd numeric, p_reason text, p_idempotency_key text,
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
BEGIN
    PERFORM billing._check_usd(p_amount_usd, 'amount_usd');
    PERFORM billing._check_text(p_reason, 'reason', 1000, true, true);
    PERFORM billing._check_text(p_idempotency_key, 'idempotency_key');
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
        v_tx := billing._append_ledger(
            v_account, v_now, 'refund', p_amount_usd, v_charge.request_id, p_reason, '{}'::jsonb,
            p_key => p_idempotency_key, p_refund_of => p_transaction_id);
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

GRANT EXECUTE ON FUNCTION billing.refund(bigint, numeric, text, text) TO tollgate_operator;
