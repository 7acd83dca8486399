-- billing._pause_for_disputes(intent, payment_ref, reversal_key, event_id) -> boolean
-- Repeated disputes deactivate the account pending review (docs/abuse.md, "Payment fraud rules"): called by
-- billing.record_payment_event when a provider reports a new chargeback (dispute) bucket on a payment of
-- `intent`. It counts the disputes ever recorded on the account's payments (won ones too: an operator
-- reviews the account, and reactivating it is their decision); once they reach
-- payments.disputes_to_deactivate (0: never) an active account is deactivated (is_active = false, as
-- billing.update_settings would: no new holds or charges, BL004; top-ups are still credited) and an abuse
-- event 'payments.disputes_to_deactivate' / 'paused' records it with the figures. Returns whether it
-- deactivated the account (an account already inactive is left as it is, and no event is written).
-- An operator reactivates it after review (PUT /api/admin/users/{id}/billing {"is_active": true}, or
-- billing.update_settings); a further dispute deactivates it again.
-- Locks: the user's user_billing row.  Errors: none.
CREATE OR REPLACE FUNCTION billing._pause_for_disputes(
    p_intent billing.payment_intents, p_payment_ref text, p_reversal_key text, p_event_id text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_limit    numeric := billing._policy('payments.disputes_to_deactivate', 2);
    v_count    bigint;
    v_disputes jsonb;
    v_message  text;
BEGIN
    IF v_limit <= 0 THEN
        RETURN false;
    END IF;
    -- The account's disputes: the chargeback buckets of its intents' payments, and this one (its intent may
    -- not have its payment recorded yet).
    SELECT count(*), coalesce(jsonb_agg(jsonb_build_object('payment_ref', d.payment_ref, 'dispute', d.reversal_key)
                                        ORDER BY d.created_at, d.reversal_key), '[]'::jsonb)
      INTO v_count, v_disputes
      FROM (SELECT r.payment_ref, r.reversal_key, r.created_at
              FROM billing.payment_intents i
              JOIN billing.payment_reversals r ON r.provider = i.provider AND r.payment_ref = i.payment_ref
             WHERE i.user_id = p_intent.user_id AND r.kind = 'chargeback'
            UNION
            SELECT r.payment_ref, r.reversal_key, r.created_at
              FROM billing.payment_reversals r
             WHERE r.provider = p_intent.provider AND r.payment_ref = p_payment_ref
               AND r.reversal_key = p_reversal_key) d;
    IF v_count < v_limit THEN
        RETURN false;
    END IF;
    UPDATE billing.user_billing b SET is_active = false WHERE b.user_id = p_intent.user_id AND b.is_active;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    v_message := format('Account deactivated pending review: %s disputes (chargebacks) were opened on its payments, and %s deactivate an account. An operator reviews it; until then it can make no paid calls (payments are still credited).',
                        v_count, v_limit);
    PERFORM billing._record_abuse_event(
        'payments.disputes_to_deactivate', 'paused', p_intent.user_id, p_intent.client_ip,
        jsonb_build_object('limit', v_limit, 'count', v_count, 'window', 'all time', 'disputes', v_disputes,
                           'intent_id', p_intent.id, 'event_id', p_event_id, 'message', v_message));
    RETURN true;
END;
$$;
