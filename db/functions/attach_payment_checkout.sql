-- billing.attach_payment_checkout(intent_id, external_id, checkout_url, expires_at) -> (intent_id, status,
--     external_id, checkout_url, expires_at, replayed)
-- Records the provider's checkout of an intent: its id and the URL the user pays at; a 'created'
-- intent becomes 'pending' (the provider's expiry, when given, replaces ours), and so does one that
-- failed because its checkout could not be created (billing.fail_payment_intent): the user retried. Idempotent: attaching
-- the same checkout again changes nothing (replayed = true). An intent that already moved on (a
-- webhook may beat this call) keeps its status and gets the checkout recorded if it had none.
-- Locks: the intent's row.
-- Errors: BL009 invalid_argument, BL016 unknown_payment, BL005 idempotency_conflict (another checkout
--         is already attached).
CREATE OR REPLACE FUNCTION billing.attach_payment_checkout(
    p_intent_id uuid, p_external_id text, p_checkout_url text, p_expires_at timestamptz DEFAULT NULL,
    OUT intent_id uuid, OUT status text, OUT external_id text, OUT checkout_url text, OUT expires_at timestamptz,
    OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_intent billing.payment_intents;
    v_now    timestamptz := coalesce((SELECT c.clock_override FROM billing.config c), clock_timestamp());
BEGIN
    PERFORM billing._check_text(p_external_id, 'external_id', 255);
    PERFORM billing._check_text(p_checkout_url, 'checkout_url', 2048);
    SELECT * INTO v_intent FROM billing.payment_intents i WHERE i.id = p_intent_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown payment: there is no payment intent %.', coalesce(p_intent_id::text, 'NULL')
            USING ERRCODE = 'BL016', DETAIL = jsonb_build_object('intent_id', p_intent_id)::text;
    END IF;
    IF v_intent.external_id IS NOT NULL THEN
        IF v_intent.external_id <> p_external_id THEN
            RAISE EXCEPTION 'Idempotency conflict: payment % already has checkout %.', p_intent_id, v_intent.external_id
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object('intent_id', p_intent_id, 'external_id', v_intent.external_id,
                                                  'requested_external_id', p_external_id)::text;
        END IF;
        replayed := true;
    ELSE
        UPDATE billing.payment_intents i
           SET external_id = p_external_id, checkout_url = p_checkout_url,
               expires_at = coalesce(p_expires_at, i.expires_at),
               status = CASE WHEN i.status = 'created' OR (i.status = 'failed' AND i.failure IS NOT NULL
                                                           AND i.payment_ref IS NULL)
                             THEN 'pending' ELSE i.status END,
               failure = CASE WHEN i.status = 'failed' AND i.payment_ref IS NULL THEN NULL ELSE i.failure END,
               updated_at = v_now
         WHERE i.id = p_intent_id
        RETURNING i.* INTO v_intent;
        replayed := false;
    END IF;
    intent_id := v_intent.id;
    status := v_intent.status;
    external_id := v_intent.external_id;
    checkout_url := v_intent.checkout_url;
    expires_at := v_intent.expires_at;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.attach_payment_checkout(uuid, text, text, timestamp with time zone) TO tollgate_payments;
