-- billing._record_charge(account, now, request_id, amount_usd, description, metadata) -> billing.billing_transactions
-- Appends the charge ledger row for a request on a locked account and returns it. It does not check
-- funds or limits: billing.charge and billing.reserve do that before; billing.settle and
-- billing.complete_request bound the charge of work already done with billing._settlement_cover first
-- (see the overrun policy in db/README.md). Raises a conflict when the request already has a charge (the caller has ruled out
-- its own replay; the DETAIL says whether that charge is the same user's).
-- The caller applies the row with billing._account_after and saves the account.
-- Locks: none beyond the caller's.  Errors: BL005 idempotency_conflict.
CREATE OR REPLACE FUNCTION billing._record_charge(
    p_account billing.user_billing, p_now timestamptz, p_request_id text, p_amount_usd numeric,
    p_description text, p_metadata jsonb)
RETURNS billing.billing_transactions
LANGUAGE plpgsql
AS $$
DECLARE
    v_tx billing.billing_transactions;
BEGIN
    v_tx := billing._append_ledger(
        p_account, p_now, 'charge', -p_amount_usd, p_request_id,
        p_description, p_metadata);
    IF v_tx.id IS NULL THEN
        SELECT * INTO v_tx FROM billing.billing_transactions t WHERE t.request_id = p_request_id AND t.type = 'charge';
        RAISE EXCEPTION 'Idempotency conflict: request % was already charged % USD%.',
                p_request_id, billing._fmt_usd(-v_tx.amount_usd),
                CASE WHEN v_tx.user_id = p_account.user_id THEN '' ELSE ' to another user' END
            USING ERRCODE = 'BL005',
                  DETAIL = jsonb_build_object('request_id', p_request_id, 'transaction_id', v_tx.id,
                                              'charged_usd', -v_tx.amount_usd,
                                              'same_user', v_tx.user_id = p_account.user_id)::text,
                  HINT = 'Use a new request_id for a new call.';
    END IF;
    RETURN v_tx;
END;
$$;
