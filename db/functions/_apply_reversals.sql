-- billing._apply_reversals(intent, event_id) -> (reversed_usd, transaction_id)
-- Brings the ledger in line with what the provider reports taken back from a credited intent's payment:
-- for each reversal bucket of (provider, payment_ref) (billing.payment_reversals), the USD to claw back
-- is the reported amount converted at the rate recorded on the top-up (a whole-payment reversal takes
-- back exactly what was credited), 0 once a chargeback is reinstated, and never more in total than
-- the top-up credited. When an operator credited another amount or currency than was paid
-- (billing.credit_reviewed_payment), a partial reversal takes back its share of the credit:
-- credited_usd * reported / paid. The difference from what was already clawed is written as one 'adjustment'
-- ledger row referencing the top-up (refund_of): negative to claw back, positive to give back. The
-- balance may go below zero: calls are then refused (insufficient funds) until it is topped up.
-- Credit clawed back while the account cools off leaves its cooling credit (billing._uncool_clawback).
-- A bucket in another currency than the payment is left alone and the intent is flagged for review.
-- The caller holds the intent's row lock and the (provider, payment_ref) advisory lock.
-- Returns the net USD taken back by this call (negative when given back) and the last ledger row.
-- Locks: the user's user_billing row, the reversal rows.
-- Errors: none of its own (billing._append_ledger's BL006 on an out-of-range balance).
CREATE OR REPLACE FUNCTION billing._apply_reversals(
    p_intent billing.payment_intents, p_event_id text,
    OUT reversed_usd numeric, OUT transaction_id bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    v_reversal billing.payment_reversals;
    v_clock    timestamptz;
    v_tz       text;
    v_account  billing.user_billing;
    v_tx       billing.billing_transactions;
    v_target   numeric;
    v_others   numeric;
    v_delta    numeric;
    v_credit   text;     -- the currency the top-up was credited in (the clawback rows use it)
    v_as_paid  boolean;  -- the top-up credited what was paid (always, unless an operator chose otherwise)
BEGIN
    reversed_usd := 0;
    IF p_intent.status <> 'succeeded' OR p_intent.payment_ref IS NULL THEN
        RETURN;
    END IF;
    SELECT t.currency,
           t.currency = p_intent.paid_currency
           AND CASE t.currency WHEN 'UAH' THEN t.amount_uah ELSE t.amount_usd END = p_intent.paid_amount
      INTO v_credit, v_as_paid
      FROM billing.billing_transactions t WHERE t.id = p_intent.transaction_id;
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;
    FOR v_reversal IN
        SELECT * FROM billing.payment_reversals r
         WHERE r.provider = p_intent.provider AND r.payment_ref = p_intent.payment_ref
         ORDER BY r.reversal_key
           FOR UPDATE
    LOOP
        IF v_reversal.currency <> p_intent.paid_currency THEN
            UPDATE billing.payment_intents i
               SET mismatch = left(concat_ws('; ', i.mismatch, format('%s %s reported in %s, the payment was in %s: not clawed back',
                                                                      v_reversal.kind, v_reversal.reversal_key,
                                                                      v_reversal.currency, p_intent.paid_currency)), 1000)
             WHERE i.id = p_intent.id;
            CONTINUE;
        END IF;
        v_target := CASE
            WHEN v_reversal.reinstated THEN 0
            WHEN v_reversal.amount >= p_intent.paid_amount THEN p_intent.credited_usd
            WHEN NOT v_as_paid THEN round(p_intent.credited_usd * v_reversal.amount / p_intent.paid_amount, 8)
            WHEN p_intent.paid_currency = 'UAH' THEN round(v_reversal.amount / p_intent.exchange_rate, 8)
            ELSE v_reversal.amount
        END;
        SELECT coalesce(sum(r.clawed_usd), 0) INTO v_others
          FROM billing.payment_reversals r
         WHERE r.provider = p_intent.provider AND r.payment_ref = p_intent.payment_ref
           AND r.reversal_key <> v_reversal.reversal_key;
        v_target := greatest(least(v_target, p_intent.credited_usd - v_others), 0);
        v_delta := v_target - v_reversal.clawed_usd;
        CONTINUE WHEN v_delta = 0;

        v_account := billing._load_account(p_intent.user_id, v_tz, v_clock);
        v_tx := billing._append_ledger(
            v_account, v_account.updated_at, 'adjustment', -v_delta, NULL,
            format('%s of %s payment %s%s',
                   CASE WHEN v_delta < 0 THEN 'Chargeback reversed' WHEN v_reversal.kind = 'refund' THEN 'Refund'
                        ELSE 'Chargeback' END,
                   initcap(p_intent.provider), p_intent.payment_ref,
                   CASE WHEN v_delta > 0 THEN ': the top-up is taken back' ELSE ': the top-up is given back' END),
            jsonb_build_object('intent_id', p_intent.id, 'payment_ref', p_intent.payment_ref,
                               'reversal', v_reversal.reversal_key, 'kind', v_reversal.kind,
                               'reported_amount', v_reversal.amount, 'currency', v_reversal.currency,
                               'reinstated', v_reversal.reinstated, 'event_id', p_event_id),
            v_credit,
            CASE WHEN v_credit = 'UAH' THEN round(-v_delta * p_intent.exchange_rate, 2) END,
            CASE WHEN v_credit = 'UAH' THEN p_intent.exchange_rate END,
            p_intent.provider, p_intent.id::text,
            p_key => format('payment:%s:%s:%s:%s', p_intent.provider, p_intent.id, v_reversal.reversal_key,
                            v_reversal.revision + 1),
            p_refund_of => p_intent.transaction_id,
            p_actor => 'payment:' || p_intent.provider);
        IF v_tx.id IS NULL THEN
            RAISE EXCEPTION 'Idempotency conflict: reversal % of payment % was already applied.',
                    v_reversal.reversal_key, p_intent.id
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object('intent_id', p_intent.id, 'reversal', v_reversal.reversal_key)::text;
        END IF;
        PERFORM billing._save_account(billing._account_after(v_account, v_tx));
        -- Card credit taken back during a cooling-off no longer cools (it is gone).
        PERFORM billing._uncool_clawback(p_intent.user_id, v_delta, v_account.updated_at);
        UPDATE billing.payment_reversals r
           SET clawed_usd = v_target, revision = r.revision + 1, updated_at = v_tx.created_at
         WHERE r.provider = v_reversal.provider AND r.payment_ref = v_reversal.payment_ref
           AND r.reversal_key = v_reversal.reversal_key;
        reversed_usd := reversed_usd + v_delta;
        transaction_id := v_tx.id;
    END LOOP;
END;
$$;
