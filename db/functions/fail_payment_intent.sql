-- billing.fail_payment_intent(intent_id, reason) -> (intent_id, status)
-- Marks an intent whose checkout could not be created (the provider refused or was unreachable) as
-- 'failed' with the reason. Only a 'created' intent changes; any other status is returned as it is
-- (a payment the provider reports later is still credited by billing.record_payment_event).
-- Locks: the intent's row.
-- Errors: BL009 invalid_argument, BL016 unknown_payment.
CREATE OR REPLACE FUNCTION billing.fail_payment_intent(
    p_intent_id uuid, p_reason text, OUT intent_id uuid, OUT status text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_intent billing.payment_intents;
BEGIN
    PERFORM billing._check_text(p_reason, 'reason', 1000, true, true);
    UPDATE billing.payment_intents i
       SET status = 'failed', failure = p_reason,
           updated_at = coalesce((SELECT c.clock_override FROM billing.config c), clock_timestamp())
     WHERE i.id = p_intent_id AND i.status = 'created'
    RETURNING i.* INTO v_intent;
    IF NOT FOUND THEN
        SELECT * INTO v_intent FROM billing.payment_intents i WHERE i.id = p_intent_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'Unknown payment: there is no payment intent %.', coalesce(p_intent_id::text, 'NULL')
                USING ERRCODE = 'BL016', DETAIL = jsonb_build_object('intent_id', p_intent_id)::text;
        END IF;
    END IF;
    intent_id := v_intent.id;
    status := v_intent.status;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.fail_payment_intent(uuid, text) TO tollgate_payments;
