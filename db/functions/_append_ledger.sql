-- billing._append_ledger(account, now, type, amount_usd, ...) -> billing.billing_transactions
-- Appends one ledger row for an account the caller has locked, with the before/after snapshot taken
-- from the locked row and the next per-user version. UAH: when the caller gives no UAH amount, it is
-- derived from amount_usd at the rate in force (billing.config.uah_per_usd; none set: UAH amount and
-- rate stay NULL); the rate is recorded on the row. Returns the new row, or NULL when a unique index (one charge per request,
-- one top-up per payment, one refund/adjustment per key) already holds another user's row: the caller
-- has already looked for its own replay, so NULL means a conflict.
-- The caller must then apply the row to its in-memory account with billing._account_after.
-- Locks: none beyond the caller's.
-- Errors: BL006 invalid_amount when the balance, or for a charge the total spent, would leave the range of
--         numeric(20,8) (>= 1e12).
CREATE OR REPLACE FUNCTION billing._append_ledger(
    p_account     billing.user_billing,
    p_now         timestamptz,
    p_type        text,
    p_amount_usd  numeric,
    p_request_id  text DEFAULT NULL,
    p_description text DEFAULT NULL,
    p_metadata    jsonb DEFAULT '{}'::jsonb,
    p_currency    text DEFAULT 'USD',
    p_amount_uah  numeric DEFAULT NULL,
    p_rate        numeric DEFAULT NULL,
    p_provider    text DEFAULT NULL,
    p_payment_id  text DEFAULT NULL,
    p_key         text DEFAULT NULL,
    p_refund_of   bigint DEFAULT NULL,
    p_actor       text DEFAULT NULL)
RETURNS billing.billing_transactions
LANGUAGE plpgsql
AS $$
DECLARE
    v_rate numeric := p_rate;
    v_uah  numeric := p_amount_uah;
    v_row  billing.billing_transactions;
BEGIN
    IF abs(p_account.balance_usd + p_amount_usd) >= 1e12 THEN
        RAISE EXCEPTION 'Invalid amount: the balance would become % USD, beyond the largest balance kept (1000000000000).',
                p_account.balance_usd + p_amount_usd
            USING ERRCODE = 'BL006',
                  DETAIL = jsonb_build_object('balance_usd', p_account.balance_usd, 'amount_usd', p_amount_usd)::text;
    END IF;
    -- A charge also adds to the spend counters (numeric(20,8) too): an overrun settled in full may not
    -- take them out of range either (the fuzzing found a 22003 from settle here).
    IF p_type = 'charge' AND p_account.total_spent_usd - p_amount_usd >= 1e12 THEN
        RAISE EXCEPTION 'Invalid amount: the total spent would become % USD, beyond the largest total kept (1000000000000).',
                p_account.total_spent_usd - p_amount_usd
            USING ERRCODE = 'BL006',
                  DETAIL = jsonb_build_object('total_spent_usd', p_account.total_spent_usd, 'amount_usd', -p_amount_usd)::text;
    END IF;
    IF v_uah IS NULL THEN
        SELECT c.uah_per_usd INTO v_rate FROM billing.config c;
        v_uah := round(p_amount_usd * v_rate, 2);
    END IF;
    INSERT INTO billing.billing_transactions AS t (
        user_id, version, type, currency, amount_usd, amount_uah, exchange_rate,
        balance_before_usd, balance_after_usd, request_id, payment_provider, payment_id,
        idempotency_key, refund_of, actor, description, metadata, created_at, entry_hash)
    VALUES (
        p_account.user_id, p_account.version + 1, p_type, p_currency, p_amount_usd, v_uah, v_rate,
        p_account.balance_usd, p_account.balance_usd + p_amount_usd, p_request_id, p_provider, p_payment_id,
        p_key, p_refund_of, p_actor, p_description, coalesce(p_metadata, '{}'::jsonb), p_now,
        billing._entry_hash(
            p_account.ledger_head, p_account.user_id, p_account.version + 1, p_type, p_currency, p_amount_usd,
            v_uah, v_rate, p_account.balance_usd, p_account.balance_usd + p_amount_usd, p_request_id, p_provider,
            p_payment_id, p_key, p_refund_of, p_actor, p_description, coalesce(p_metadata, '{}'::jsonb), p_now))
    ON CONFLICT DO NOTHING
    RETURNING t.* INTO v_row;
    RETURN v_row;
END;
$$;
