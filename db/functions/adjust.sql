-- billing.adjust(user_id, amount_usd, reason, actor, idempotency_key) -> (transaction_id, amount_usd,
--     balance_before_usd, balance_after_usd, replayed)
-- Administrative correction: one 'adjustment' ledger row of a signed amount (positive credits,
-- negative debits), with the reason and the acting administrator recorded. A debit may take the
-- balance below zero (an operator decision, audited); it does not count as spend.
-- Idempotent on idempotency_key: a replay with the same user and amount returns the original row
-- (replayed = true); the same key with another user or amount is a conflict.
-- Locks: the user's user_billing row.
-- Errors: BL006 invalid_amount (zero, NaN, ...), BL009 invalid_argument (reason, actor, key),
--         BL007 unknown_user, BL005 idempotency_conflict.
CREATE OR REPLACE FUNCTION billing.adjust(
    p_user_id uuid, p_amount_usd numeric, p_reason text, p_actor text, p_idempotency_key text,
    OUT transaction_id bigint, OUT amount_usd numeric, OUT balance_before_usd numeric,
    OUT balance_after_usd numeric, OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now     timestamptz;
    v_clock     timestamptz;
    v_tz      text;
    v_account billing.user_billing;
    v_tx      billing.billing_transactions;
BEGIN
    PERFORM billing._check_usd(p_amount_usd, 'amount_usd', 'non_zero');
    PERFORM billing._check_text(p_reason, 'reason', 1000, true, true);
    PERFORM billing._check_text(p_actor, 'actor');
    PERFORM billing._check_text(p_idempotency_key, 'idempotency_key');
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;
    v_account := billing._load_account(p_user_id, v_tz, v_clock);
    v_now := v_account.updated_at;

    SELECT * INTO v_tx FROM billing.billing_transactions t
     WHERE t.type = 'adjustment' AND t.idempotency_key = p_idempotency_key;
    IF FOUND THEN
        IF v_tx.user_id <> p_user_id OR v_tx.amount_usd <> p_amount_usd THEN
            RAISE EXCEPTION 'Idempotency conflict: adjustment key % was already used for % USD.',
                    p_idempotency_key, billing._fmt_usd(v_tx.amount_usd)
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object('idempotency_key', p_idempotency_key,
                                                  'adjusted_usd', v_tx.amount_usd, 'requested_usd', p_amount_usd,
                                                  'same_user', v_tx.user_id = p_user_id)::text;
        END IF;
        replayed := true;
    ELSE
        v_tx := billing._append_ledger(
            v_account, v_now, 'adjustment', p_amount_usd, NULL, p_reason, '{}'::jsonb,
            p_key => p_idempotency_key, p_actor => p_actor);
        IF v_tx.id IS NULL THEN
            RAISE EXCEPTION 'Idempotency conflict: adjustment key % is already used for another user.',
                    p_idempotency_key
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object('idempotency_key', p_idempotency_key, 'same_user', false)::text;
        END IF;
        PERFORM billing._save_account(billing._account_after(v_account, v_tx));
        replayed := false;
    END IF;
    transaction_id := v_tx.id;
    amount_usd := v_tx.amount_usd;
    balance_before_usd := v_tx.balance_before_usd;
    balance_after_usd := v_tx.balance_after_usd;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.adjust(uuid, numeric, text, text, text) TO tollgate_operator;
