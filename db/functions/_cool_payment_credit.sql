-- billing._cool_payment_credit(intent)
-- The cooling-off of a new payer (docs/abuse.md, "Payment fraud rules"), applied when a provider payment is
-- credited (billing.record_payment_event, billing.credit_reviewed_payment; never an operator's top_up).
-- A *new payer* is an account whose first credited provider payment (user_billing.first_paid_at, set here
-- by the first one) is younger than payments.cooling_off_hours. Every provider payment credited while the
-- account is a new payer adds to its cooling credit, all of which cools until first_paid_at +
-- cooling_off_hours (cooling_until: a later payment never moves it); of that credit only
-- payments.cooling_off_spendable_usd may be spent before then: cooling_usd = greatest(cooling credit -
-- spendable, 0) is kept out of the available balance (billing._available_usd). cooling_off_hours = 0 turns
-- the rule off. When something is withheld, an abuse event 'payments.cooling_off' / 'limited' says how much
-- and until when.
-- The caller has credited the intent (intent.credited_usd) through billing.top_up in this transaction,
-- which locked the account and set its updated_at to the time the credit was written.
-- Locks: the user's user_billing row (already held).  Errors: none.
CREATE OR REPLACE FUNCTION billing._cool_payment_credit(p_intent billing.payment_intents)
RETURNS void
LANGUAGE plpgsql
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_account   billing.user_billing;
    v_hours     numeric := billing._policy('payments.cooling_off_hours', 24);
    v_spendable numeric := billing._policy('payments.cooling_off_spendable_usd', 5);
    v_now       timestamptz;
    v_until     timestamptz;
    v_message   text;
BEGIN
    SELECT * INTO v_account FROM billing.user_billing b WHERE b.user_id = p_intent.user_id FOR UPDATE;
    v_now := v_account.updated_at;
    v_account.first_paid_at := coalesce(v_account.first_paid_at, v_now);
    v_until := v_account.first_paid_at + make_interval(secs => v_hours * 3600);
    IF v_hours > 0 AND v_now < v_until THEN
        v_account.cooling_credit_usd := v_account.cooling_credit_usd + p_intent.credited_usd;
        v_account.cooling_usd := greatest(v_account.cooling_credit_usd - v_spendable, 0);
        v_account.cooling_until := v_until;
    END IF;
    UPDATE billing.user_billing b
       SET first_paid_at = v_account.first_paid_at, cooling_credit_usd = v_account.cooling_credit_usd,
           cooling_usd = v_account.cooling_usd, cooling_until = v_account.cooling_until
     WHERE b.user_id = p_intent.user_id;
    IF v_hours > 0 AND v_now < v_until AND v_account.cooling_usd > 0 THEN
        v_message := format('%s USD of your top-ups is cooling off until %s: a new payer''s card payments are spendable up to %s USD in their first %s hours.',
                            billing._fmt_usd(v_account.cooling_usd),
                            to_char(v_until AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'),
                            billing._fmt_usd(v_spendable), v_hours);
        PERFORM billing._record_abuse_event(
            'payments.cooling_off', 'limited', p_intent.user_id, p_intent.client_ip,
            jsonb_build_object('intent_id', p_intent.id, 'credited_usd', p_intent.credited_usd,
                               'cooling_credit_usd', v_account.cooling_credit_usd,
                               'cooling_usd', v_account.cooling_usd, 'limit_usd', v_spendable,
                               'window', format('%s hours', v_hours), 'resets_at', v_until,
                               'message', v_message));
    END IF;
END;
$$;
