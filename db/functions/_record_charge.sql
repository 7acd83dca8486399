-- billing._record_charge(account, now, request_id, amount_usd, description, metadata) -> billing.billing_transactions
-- Appends the charge ledger row for a request on a locked account and returns it. It does not check
-- funds or limits: billing.charge and billing.reserve do that before; billing.settle and
-- billing.complete_request record the charge of work already done (see the overrun policy in
-- db/README.md). Raises a conflict when another user already has a charge for this request id.
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
        coalesce(p_description, 'Charge for request ' || p_request_id), p_metadata);
    IF v_tx.id IS NULL THEN
        RAISE EXCEPTION 'Idempotency conflict: request % was already charged to another user.', p_request_id
            USING ERRCODE = 'BL005',
                  DETAIL = jsonb_build_object('request_id', p_request_id, 'same_user', false)::text,
                  HINT = 'Use a new request_id for a new call.';
    END IF;
    RETURN v_tx;
END;
$$;
