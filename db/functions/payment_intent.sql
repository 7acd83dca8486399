-- billing.payment_intent(intent_id, user_id) -> (intent_id, provider, status, amount, currency, checkout_url,
--     expires_at, paid_amount, paid_currency, credited_usd, exchange_rate, transaction_id, reversed_usd,
--     mismatch, created_at, updated_at)
-- One payment as its owner sees it: whether it is still open, credited (and how much in USD), how much
-- of it the provider reversed since. `user_id` NULL (operators) reads any intent.
-- Locks: none.
-- Errors: BL016 unknown_payment (no such intent, or not this user's).
CREATE OR REPLACE FUNCTION billing.payment_intent(p_intent_id uuid, p_user_id uuid DEFAULT NULL)
RETURNS TABLE (intent_id uuid, provider text, status text, amount numeric, currency text, checkout_url text,
               expires_at timestamptz, paid_amount numeric, paid_currency text, credited_usd numeric,
               exchange_rate numeric, transaction_id bigint, reversed_usd numeric, mismatch text,
               created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT i.id, i.provider, i.status, i.amount, i.currency, i.checkout_url, i.expires_at, i.paid_amount,
           i.paid_currency, i.credited_usd, i.exchange_rate, i.transaction_id,
           coalesce((SELECT sum(r.clawed_usd) FROM billing.payment_reversals r
                      WHERE r.provider = i.provider AND r.payment_ref = i.payment_ref), 0),
           i.mismatch, i.created_at, i.updated_at
      FROM billing.payment_intents i
     WHERE i.id = p_intent_id AND (p_user_id IS NULL OR i.user_id = p_user_id);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown payment: there is no payment % for this user.', coalesce(p_intent_id::text, 'NULL')
            USING ERRCODE = 'BL016', DETAIL = jsonb_build_object('intent_id', p_intent_id)::text;
    END IF;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.payment_intent(uuid, uuid) TO tollgate_metering, tollgate_payments, tollgate_operator;
