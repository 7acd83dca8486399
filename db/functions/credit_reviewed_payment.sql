-- billing.credit_reviewed_payment(intent_id, actor, reason, amount, currency) -> (intent_id, status, user_id,
--     transaction_id, amount, currency, credited_usd, exchange_rate, reversed_usd, replayed)
-- An operator credits a payment that went to review (status 'review': the provider reported it paid,
-- but not exactly as the intent asked -- another amount, currency, checkout or merchant -- so nothing
-- was credited), after looking at it. The credit goes through billing.top_up with (provider,
-- payment_id = the intent id), the same key as an automatic credit, so a payment is credited once
-- whichever path gets there. `amount` defaults to what the provider reported paid, `currency` to the
-- paid currency; a payment in a currency the ledger does not keep is credited in USD or UAH with both
-- given (the operator converts). Actor and reason are recorded on the intent (reviewed_by,
-- review_reason, reviewed_at) and in the ledger row's metadata (reviewed_by, review_reason, and the
-- mismatch that sent it to review, which is then cleared from the intent: looked at). Refunds and
-- chargebacks the provider reported while the payment was in review (kept, not applied: nothing had
-- been credited) are applied at once (billing._apply_reversals). The credit of a new payer cools off
-- like an automatic one (billing._cool_payment_credit).
-- Idempotent on the intent: a replay on a payment this function credited, with the same amount and
-- currency, returns the original credit (replayed = true, actor and reason as first recorded);
-- another amount or currency is BL005.
-- Locks: the payment's advisory lock (provider, payment_ref), the intent's row, the user's user_billing row
-- (the order billing.record_payment_event takes them in).
-- Errors: BL005 idempotency_conflict, BL006 invalid_amount, BL009 invalid_argument, BL012 invalid_state
--         (not in review), BL013 no_exchange_rate, BL014 unsupported_currency, BL016 unknown_payment.
CREATE OR REPLACE FUNCTION billing.credit_reviewed_payment(
    p_intent_id uuid, p_actor text, p_reason text, p_amount numeric DEFAULT NULL, p_currency text DEFAULT NULL,
    OUT intent_id uuid, OUT status text, OUT user_id uuid, OUT transaction_id bigint, OUT amount numeric,
    OUT currency text, OUT credited_usd numeric, OUT exchange_rate numeric, OUT reversed_usd numeric,
    OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now      timestamptz := coalesce((SELECT c.clock_override FROM billing.config c), clock_timestamp());
    v_ref      text;
    v_intent   billing.payment_intents;
    v_currency text;
    v_amount   numeric;
    v_tx       billing.billing_transactions;
    v_credited numeric;
    v_topup    record;
    v_applied  record;
BEGIN
    PERFORM billing._check_text(p_actor, 'actor');
    PERFORM billing._check_text(p_reason, 'reason', 1000, true, true);
    IF p_currency IS NOT NULL AND upper(btrim(p_currency)) !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION 'Invalid argument: currency % is not a three-letter code.', p_currency
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'currency')::text;
    END IF;

    -- The payment's lock before the intent's, as billing.record_payment_event takes them.
    SELECT * INTO v_intent FROM billing.payment_intents i WHERE i.id = p_intent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown payment: there is no payment intent %.', coalesce(p_intent_id::text, 'NULL')
            USING ERRCODE = 'BL016', DETAIL = jsonb_build_object('intent_id', p_intent_id)::text;
    END IF;
    v_ref := v_intent.payment_ref;
    IF v_ref IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('tollgate.payment:' || v_intent.provider || ':' || v_ref, 0));
    END IF;
    SELECT * INTO v_intent FROM billing.payment_intents i WHERE i.id = p_intent_id FOR UPDATE;
    IF v_intent.payment_ref IS DISTINCT FROM v_ref THEN
        RAISE EXCEPTION 'Invalid state: payment % changed while it was being credited (now %): look at it again.',
                p_intent_id, v_intent.status
            USING ERRCODE = 'BL012', DETAIL = jsonb_build_object('intent_id', p_intent_id, 'status', v_intent.status)::text;
    END IF;

    IF v_intent.status <> 'review' AND NOT (v_intent.status = 'succeeded' AND v_intent.reviewed_by IS NOT NULL) THEN
        RAISE EXCEPTION 'Invalid state: payment % is %, not in review: only a payment in review is credited by hand.',
                p_intent_id, v_intent.status
            USING ERRCODE = 'BL012', DETAIL = jsonb_build_object('intent_id', p_intent_id, 'status', v_intent.status)::text,
                  HINT = 'billing.payments_needing_review lists the payments in review.';
    END IF;

    v_currency := coalesce(upper(btrim(p_currency)), v_intent.paid_currency);
    v_amount := coalesce(p_amount, CASE WHEN v_currency = v_intent.paid_currency THEN v_intent.paid_amount END);
    IF v_amount IS NULL THEN
        RAISE EXCEPTION 'Invalid argument: % was paid in %, so give the amount to credit in %.',
                p_intent_id, coalesce(v_intent.paid_currency, 'nothing yet'), v_currency
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'amount')::text;
    END IF;
    PERFORM billing._check_usd(v_amount, 'amount');
    IF v_currency NOT IN ('USD', 'UAH') THEN
        RAISE EXCEPTION 'Unsupported currency %: credit this payment in USD or UAH (give amount and currency).',
                v_currency
            USING ERRCODE = 'BL014',
                  DETAIL = jsonb_build_object('currency', v_currency, 'paid_amount', v_intent.paid_amount,
                                              'paid_currency', v_intent.paid_currency)::text;
    END IF;

    IF v_intent.status = 'succeeded' AND v_intent.reviewed_by IS NOT NULL THEN
        SELECT * INTO v_tx FROM billing.billing_transactions t WHERE t.id = v_intent.transaction_id;
        v_credited := CASE v_tx.currency WHEN 'UAH' THEN v_tx.amount_uah ELSE v_tx.amount_usd END;
        IF v_tx.currency <> v_currency OR v_credited <> v_amount THEN
            RAISE EXCEPTION 'Idempotency conflict: payment % was already credited after review with other figures.',
                    p_intent_id
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object(
                          'intent_id', p_intent_id, 'credited_currency', v_tx.currency,
                          'credited_amount', v_credited,
                          'requested_amount', v_amount, 'requested_currency', v_currency,
                          'reviewed_by', v_intent.reviewed_by)::text;
        END IF;
        amount := v_amount;
        transaction_id := v_tx.id;
        replayed := true;
    ELSE
        SELECT * INTO v_topup FROM billing.top_up(
            v_intent.user_id, v_amount, v_intent.provider, v_intent.id::text, v_currency,
            format('Top-up via %s, credited after review by %s', initcap(v_intent.provider), p_actor),
            jsonb_strip_nulls(jsonb_build_object(
                'intent_id', v_intent.id, 'external_id', v_intent.external_id, 'payment_ref', v_intent.payment_ref,
                'paid_amount', v_intent.paid_amount, 'paid_currency', v_intent.paid_currency,
                'mismatch', v_intent.mismatch, 'reviewed_by', p_actor, 'review_reason', p_reason)));
        UPDATE billing.payment_intents i
           SET status = 'succeeded', transaction_id = v_topup.transaction_id, credited_usd = v_topup.amount_usd,
               exchange_rate = v_topup.exchange_rate, mismatch = NULL,
               reviewed_by = p_actor, review_reason = p_reason, reviewed_at = v_now, updated_at = v_now
         WHERE i.id = v_intent.id
        RETURNING i.* INTO v_intent;
        IF NOT v_topup.replayed THEN
            -- A new payer's card credit cools off, whoever credits it.
            PERFORM billing._cool_payment_credit(v_intent);
        END IF;
        -- Refunds or chargebacks reported while the payment was in review apply to the credit now.
        SELECT * INTO v_applied FROM billing._apply_reversals(v_intent, 'review:' || v_intent.id);
        amount := v_amount;
        transaction_id := v_topup.transaction_id;
        replayed := false;
    END IF;

    intent_id := v_intent.id;
    status := v_intent.status;
    user_id := v_intent.user_id;
    currency := v_currency;
    credited_usd := v_intent.credited_usd;
    exchange_rate := v_intent.exchange_rate;
    reversed_usd := coalesce((SELECT sum(r.clawed_usd) FROM billing.payment_reversals r
                               WHERE r.provider = v_intent.provider AND r.payment_ref = v_intent.payment_ref), 0);
END;
$$;

GRANT EXECUTE ON FUNCTION billing.credit_reviewed_payment(uuid, text, text, numeric, text) TO tollgate_operator;
