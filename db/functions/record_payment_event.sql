-- billing.record_payment_event(provider, event_id, event_type, payload, intent_id, external_id, payment_ref,
--     action, amount, currency, reversal_key, reversal_kind, reversed_amount, reversal_currency, reinstated,
--     review_reason)
--     -> (event_row_id, outcome, detail, intent_id, intent_status, user_id, transaction_id, credited_usd,
--         reversed_usd, duplicate)
-- Stores one verified provider event (the raw payload, for audit) and applies it, in one transaction:
-- the only way money enters the ledger from a payment provider. The caller (the gateway's webhook
-- route, or `tollgate payments reconcile`) has verified the event (and, where the provider offers it,
-- confirmed it server to server) and reduced it to facts:
--   action 'paid'     the provider reports a payment naming the intent: `amount` `currency` paid through
--                     checkout `external_id` (payment_ref = the provider's payment id). It is credited
--                     only when it is exactly what the intent asked: the same amount and currency, paid
--                     through the checkout recorded on the intent (attach_payment_checkout), and the
--                     caller found nothing wrong (`review_reason` NULL: e.g. another merchant). Then the
--                     intent moves to 'succeeded' by a conditional update and billing.top_up credits the
--                     intent's amount with (provider, payment_id = the intent id), so a duplicate
--                     delivery, a webhook racing reconciliation or two workers can never credit twice.
--                     Anything else credits nothing: an open, failed or expired intent goes to 'review'
--                     with what was paid and why (mismatch), for an operator (billing.credit_reviewed_payment).
--                     An intent in review is still credited by a later payment that is exactly what it
--                     asked (its own checkout paid after another product's payment named it). A payment
--                     other than the one already on a succeeded or reviewed intent is 'unmatched':
--                     stored, listed for review, nothing credited. A success reported after the intent
--                     failed or expired is still credited (or reviewed) by the same rules.
--   action 'failed' / 'expired'   an open (created/pending) intent becomes failed/expired.
--   action 'reversal' (or any action with reversal_key) the provider reports `reversed_amount`
--                     (cumulative for the bucket, in `reversal_currency`) taken back from the payment:
--                     bucket 'refunds' (grows only) or 'dispute:<id>' (a chargeback; reinstated = the
--                     merchant won it). Applied to a credited intent's payment at once
--                     (billing._apply_reversals: a clawback adjustment referencing the top-up; the balance
--                     may go negative); kept and applied when the payment is credited otherwise (outcome
--                     'deferred'): a payment in review, uncredited, has nothing clawed back.
--                     A new dispute bucket counts towards payments.disputes_to_deactivate: repeated
--                     disputes deactivate the account pending review (billing._pause_for_disputes; an abuse
--                     event 'paused' records it and `detail` says so).
--   action 'ignore'   stored only (event types Tollgate does not act on).
-- A payment credited while the account is a new payer cools off (billing._cool_payment_credit); a
-- failure reported for an open intent records failed_at, which the card-testing caps of
-- billing.create_payment_intent count.
-- The intent is found by intent_id, else (provider, external_id), else (provider, payment_ref); none:
-- outcome 'unknown_intent', stored, nothing credited.
-- The payload is at most 64 KiB (a provider never sends more for one event).
-- Idempotent on (provider, event_id): a replayed event is not applied again, nor stored again; the
-- stored outcome is returned with duplicate = true. Concurrent deliveries of one event wait for the
-- first to commit. Providers' event ids name the payment state, so one state is one row.
-- Outcomes: credited, review, already_in_review, already_credited, unmatched, failed, expired, reversed,
--   reinstated, already_reversed, deferred, unknown_intent, ignored (comma-separated when several apply).
-- Locks: an advisory lock per (provider, payment_ref), then the intent's row, then the user's user_billing row.
-- Errors: BL006 invalid_amount, BL009 invalid_argument (and billing.top_up's BL005 if the payment was
--         credited by hand under the same payment id with other figures).
CREATE OR REPLACE FUNCTION billing.record_payment_event(
    p_provider text, p_event_id text, p_event_type text, p_payload text,
    p_intent_id uuid DEFAULT NULL, p_external_id text DEFAULT NULL, p_payment_ref text DEFAULT NULL,
    p_action text DEFAULT 'ignore', p_amount numeric DEFAULT NULL, p_currency text DEFAULT NULL,
    p_reversal_key text DEFAULT NULL, p_reversal_kind text DEFAULT NULL, p_reversed_amount numeric DEFAULT NULL,
    p_reversal_currency text DEFAULT NULL, p_reinstated boolean DEFAULT false, p_review_reason text DEFAULT NULL,
    OUT event_row_id bigint, OUT outcome text, OUT detail text, OUT intent_id uuid, OUT intent_status text,
    OUT user_id uuid, OUT transaction_id bigint, OUT credited_usd numeric, OUT reversed_usd numeric,
    OUT duplicate boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now       timestamptz := coalesce((SELECT c.clock_override FROM billing.config c), clock_timestamp());
    v_currency  text := upper(btrim(p_currency));
    v_rcurrency text := upper(btrim(coalesce(p_reversal_currency, p_currency)));
    v_intent    billing.payment_intents;
    v_event     billing.payment_events;
    v_outcomes  text[] := '{}';
    v_details   text[] := '{}';
    v_reasons   text[] := '{}';
    v_other     boolean;
    v_holder    uuid;
    v_note      text;
    v_ref       text;
    v_topup     record;
    v_applied   record;
    v_new_bucket boolean;
BEGIN
    IF p_provider IS NULL OR p_provider !~ '^[a-z][a-z0-9_]{0,49}$' THEN
        RAISE EXCEPTION 'Invalid argument: provider % is not a provider name (lowercase letters, digits, _).',
                coalesce(p_provider, 'NULL')
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'provider')::text;
    END IF;
    PERFORM billing._check_text(p_event_id, 'event_id', 255);
    PERFORM billing._check_text(p_event_type, 'event_type', 100);
    PERFORM billing._check_text(p_external_id, 'external_id', 255, false);
    PERFORM billing._check_text(p_payment_ref, 'payment_ref', 255, false);
    PERFORM billing._check_text(p_review_reason, 'review_reason', 500, false, true);
    IF p_payload IS NULL OR octet_length(p_payload) > 65536 THEN
        RAISE EXCEPTION 'Invalid argument: payload is required and at most 64 KiB.'
            USING ERRCODE = 'BL009',
                  DETAIL = jsonb_build_object('field', 'payload', 'bytes', octet_length(p_payload), 'max_bytes', 65536)::text;
    END IF;
    IF p_action IS NULL OR p_action NOT IN ('paid', 'failed', 'expired', 'reversal', 'ignore') THEN
        RAISE EXCEPTION 'Invalid argument: action % is not one of paid, failed, expired, reversal, ignore.',
                coalesce(p_action, 'NULL')
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'action')::text;
    END IF;
    IF p_action = 'paid' THEN
        PERFORM billing._check_usd(p_amount, 'amount');
        IF p_amount <> round(p_amount, 2) THEN
            RAISE EXCEPTION 'Invalid amount: a paid amount has at most 2 decimal places, not %.', p_amount
                USING ERRCODE = 'BL006', DETAIL = jsonb_build_object('field', 'amount', 'value', p_amount)::text;
        END IF;
        IF v_currency IS NULL OR v_currency !~ '^[A-Z]{3}$' THEN
            RAISE EXCEPTION 'Invalid argument: currency % is not a three-letter code.', coalesce(p_currency, 'NULL')
                USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'currency')::text;
        END IF;
    END IF;
    IF p_action = 'reversal' AND p_reversal_key IS NULL THEN
        RAISE EXCEPTION 'Invalid argument: a reversal needs its reversal_key.'
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'reversal_key')::text;
    END IF;
    IF p_reversal_key IS NOT NULL THEN
        PERFORM billing._check_text(p_reversal_key, 'reversal_key', 80);
        PERFORM billing._check_usd(p_reversed_amount, 'reversed_amount', 'non_negative');
        IF p_reversed_amount <> round(p_reversed_amount, 2) THEN
            RAISE EXCEPTION 'Invalid amount: a reversed amount has at most 2 decimal places, not %.', p_reversed_amount
                USING ERRCODE = 'BL006', DETAIL = jsonb_build_object('field', 'reversed_amount')::text;
        END IF;
        IF p_reversal_kind IS NULL OR p_reversal_kind NOT IN ('refund', 'chargeback') THEN
            RAISE EXCEPTION 'Invalid argument: reversal_kind % is not refund or chargeback.', coalesce(p_reversal_kind, 'NULL')
                USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'reversal_kind')::text;
        END IF;
        IF v_rcurrency IS NULL OR v_rcurrency !~ '^[A-Z]{3}$' THEN
            RAISE EXCEPTION 'Invalid argument: reversal currency % is not a three-letter code.',
                    coalesce(p_reversal_currency, 'NULL')
                USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'reversal_currency')::text;
        END IF;
    END IF;

    -- One row per provider event: a replay (or a concurrent duplicate, once the first commits) stops here.
    INSERT INTO billing.payment_events AS e (provider, event_id, event_type, payload, outcome, received_at)
    VALUES (p_provider, p_event_id, p_event_type, p_payload, 'processing', v_now)
    ON CONFLICT (provider, event_id) DO NOTHING
    RETURNING e.* INTO v_event;
    IF v_event.id IS NULL THEN
        SELECT * INTO v_event FROM billing.payment_events e WHERE e.provider = p_provider AND e.event_id = p_event_id;
        SELECT * INTO v_intent FROM billing.payment_intents i WHERE i.id = v_event.intent_id;
        event_row_id := v_event.id;
        outcome := v_event.outcome;
        detail := v_event.detail;
        intent_id := v_event.intent_id;
        intent_status := v_intent.status;
        user_id := v_intent.user_id;
        transaction_id := v_event.transaction_id;
        reversed_usd := 0;
        duplicate := true;
        RETURN;
    END IF;
    duplicate := false;
    reversed_usd := 0;

    -- Serialises a payment's success with its reversals, also while the intent is not yet known by
    -- its payment_ref: whichever commits second sees the other's work. Taken before the intent's row
    -- lock, always in that order (advisory, then intent, then account), so events of one payment
    -- cannot deadlock each other.
    IF p_payment_ref IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('tollgate.payment:' || p_provider || ':' || p_payment_ref, 0));
    END IF;
    IF p_intent_id IS NOT NULL THEN
        SELECT * INTO v_intent FROM billing.payment_intents i
         WHERE i.id = p_intent_id AND i.provider = p_provider FOR UPDATE;
    END IF;
    IF v_intent.id IS NULL AND p_external_id IS NOT NULL THEN
        SELECT * INTO v_intent FROM billing.payment_intents i
         WHERE i.provider = p_provider AND i.external_id = p_external_id FOR UPDATE;
    END IF;
    IF v_intent.id IS NULL AND p_payment_ref IS NOT NULL THEN
        SELECT * INTO v_intent FROM billing.payment_intents i
         WHERE i.provider = p_provider AND i.payment_ref = p_payment_ref FOR UPDATE;
    END IF;
    IF p_reversal_key IS NOT NULL AND p_payment_ref IS NULL AND v_intent.payment_ref IS NOT NULL THEN
        -- A reversal that names only our intent (no provider payment id): the payment's lock now.
        PERFORM pg_advisory_xact_lock(
            hashtextextended('tollgate.payment:' || p_provider || ':' || v_intent.payment_ref, 0));
    END IF;

    IF p_action = 'paid' THEN
        IF v_intent.id IS NULL THEN
            v_outcomes := v_outcomes || 'unknown_intent'::text;
            v_details := v_details || format('no payment intent of %s matches this payment (intent %s, checkout %s, payment %s): nothing credited',
                                             p_provider, coalesce(p_intent_id::text, '-'), coalesce(p_external_id, '-'),
                                             coalesce(p_payment_ref, '-'));
        ELSE
            -- Why this payment cannot be credited automatically; none: it is exactly what the intent asked.
            IF p_review_reason IS NOT NULL THEN
                v_reasons := v_reasons || p_review_reason;
            END IF;
            IF v_intent.external_id IS NULL THEN
                v_reasons := v_reasons || format('paid through checkout %s, but the intent has no checkout recorded',
                                                 coalesce(p_external_id, '(none named)'));
            ELSIF p_external_id IS DISTINCT FROM v_intent.external_id THEN
                v_reasons := v_reasons || format('paid through checkout %s, not the intent''s checkout %s',
                                                 coalesce(p_external_id, '(none named)'), v_intent.external_id);
            END IF;
            IF p_amount <> v_intent.amount OR v_currency <> v_intent.currency THEN
                v_reasons := v_reasons || format('asked %s %s, paid %s %s', v_intent.amount, v_intent.currency,
                                                 p_amount, v_currency);
            ELSIF v_currency = 'UAH' AND (SELECT c.uah_per_usd FROM billing.config c) IS NULL THEN
                v_reasons := v_reasons || 'UAH cannot be credited: no exchange rate set'::text;
            END IF;
            IF p_payment_ref IS NOT NULL THEN
                SELECT o.id INTO v_holder FROM billing.payment_intents o
                 WHERE o.provider = p_provider AND o.payment_ref = p_payment_ref AND o.id <> v_intent.id;
                IF v_holder IS NOT NULL THEN
                    v_reasons := v_reasons || format('payment %s is already recorded on intent %s', p_payment_ref, v_holder);
                END IF;
            END IF;
            -- Another payment than the one already recorded on the intent (credited or in review).
            v_other := p_payment_ref IS NOT NULL AND v_intent.payment_ref IS NOT NULL
                       AND p_payment_ref <> v_intent.payment_ref;
            v_note := array_to_string(v_reasons, '; ');

            IF v_intent.status = 'succeeded' OR (v_intent.status = 'review' AND v_note <> '') THEN
                IF v_other THEN
                    v_outcomes := v_outcomes || 'unmatched'::text;
                    v_details := v_details || format('payment %s of %s %s names payment intent %s, which is already %s with payment %s: stored for review, nothing credited',
                                                     p_payment_ref, p_amount, v_currency, v_intent.id, v_intent.status,
                                                     v_intent.payment_ref);
                ELSIF v_intent.status = 'succeeded' THEN
                    v_outcomes := v_outcomes || 'already_credited'::text;
                    v_details := v_details || format('payment %s is already succeeded', v_intent.id);
                ELSE
                    v_outcomes := v_outcomes || 'already_in_review'::text;
                    v_details := v_details || format('payment %s is already in review: %s', v_intent.id, v_intent.mismatch);
                END IF;
            ELSIF v_note <> '' THEN
                UPDATE billing.payment_intents i
                   SET status = 'review', paid_amount = p_amount, paid_currency = v_currency,
                       payment_ref = CASE WHEN v_holder IS NULL THEN coalesce(p_payment_ref, i.payment_ref)
                                          ELSE i.payment_ref END,
                       mismatch = left(v_note, 1000), updated_at = v_now
                 WHERE i.id = v_intent.id
                RETURNING i.* INTO v_intent;
                v_outcomes := v_outcomes || 'review'::text;
                v_details := v_details || format('not credited, for an operator to review: %s', v_note);
            ELSE
                -- Exactly what was asked: the intent's own amount and currency are credited.
                SELECT * INTO v_topup FROM billing.top_up(
                    v_intent.user_id, v_intent.amount, p_provider, v_intent.id::text, v_intent.currency,
                    format('Top-up via %s', initcap(p_provider)),
                    jsonb_strip_nulls(jsonb_build_object(
                        'intent_id', v_intent.id, 'external_id', v_intent.external_id,
                        'payment_ref', p_payment_ref, 'event_id', p_event_id)));
                UPDATE billing.payment_intents i
                   SET status = 'succeeded', paid_amount = p_amount, paid_currency = v_currency,
                       payment_ref = coalesce(p_payment_ref, i.payment_ref),
                       transaction_id = v_topup.transaction_id, credited_usd = v_topup.amount_usd,
                       exchange_rate = v_topup.exchange_rate, updated_at = v_now
                 WHERE i.id = v_intent.id AND i.status <> 'succeeded'
                RETURNING i.* INTO v_intent;
                credited_usd := v_topup.amount_usd;
                transaction_id := v_topup.transaction_id;
                IF NOT v_topup.replayed THEN
                    -- A new payer's card credit cools off (spendable only up to a figure for a while).
                    PERFORM billing._cool_payment_credit(v_intent);
                END IF;
                v_outcomes := v_outcomes || 'credited'::text;
                v_details := v_details || format('credited %s USD to %s', v_topup.amount_usd, v_intent.user_id);
                -- Refunds or chargebacks that arrived before the success are applied now.
                SELECT * INTO v_applied FROM billing._apply_reversals(v_intent, p_event_id);
                IF v_applied.reversed_usd <> 0 THEN
                    v_outcomes := v_outcomes || 'reversed'::text;
                    v_details := v_details || format('applied earlier reversals: %s USD taken back', v_applied.reversed_usd);
                    reversed_usd := v_applied.reversed_usd;
                END IF;
            END IF;
        END IF;
    ELSIF p_action IN ('failed', 'expired') THEN
        IF v_intent.id IS NULL THEN
            v_outcomes := v_outcomes || 'unknown_intent'::text;
            v_details := v_details || format('no payment intent of %s matches this event', p_provider);
        ELSIF v_intent.status IN ('created', 'pending') THEN
            UPDATE billing.payment_intents i
               SET status = p_action, failure = CASE WHEN p_action = 'failed' THEN left(p_event_type, 1000) END,
                   failed_at = CASE WHEN p_action = 'failed' THEN v_now END,
                   payment_ref = coalesce(i.payment_ref, p_payment_ref), updated_at = v_now
             WHERE i.id = v_intent.id
            RETURNING i.* INTO v_intent;
            v_outcomes := v_outcomes || p_action;
        ELSE
            v_outcomes := v_outcomes || 'ignored'::text;
            v_details := v_details || format('payment %s is already %s', v_intent.id, v_intent.status);
        END IF;
    ELSIF p_action = 'ignore' AND p_reversal_key IS NULL THEN
        v_outcomes := v_outcomes || 'ignored'::text;
        v_details := v_details || format('%s events are not acted on', p_event_type);
    END IF;

    IF p_reversal_key IS NOT NULL THEN
        -- The payment the event names; only the intent's recorded payment is clawed back from.
        v_ref := coalesce(p_payment_ref, v_intent.payment_ref);
        IF v_ref IS NULL THEN
            v_outcomes := v_outcomes || 'unknown_intent'::text;
            v_details := v_details || 'the reversal names no payment: nothing taken back'::text;
        ELSE
            INSERT INTO billing.payment_reversals AS r (provider, payment_ref, reversal_key, kind, currency, amount,
                                                        reinstated, created_at, updated_at)
            VALUES (p_provider, v_ref, p_reversal_key, p_reversal_kind, v_rcurrency, p_reversed_amount,
                    coalesce(p_reinstated, false), v_now, v_now)
            ON CONFLICT (provider, payment_ref, reversal_key) DO UPDATE
               SET amount = CASE WHEN r.kind = 'refund' THEN greatest(r.amount, excluded.amount)
                                 WHEN r.reinstated THEN r.amount ELSE excluded.amount END,
                   reinstated = r.reinstated OR excluded.reinstated,
                   updated_at = excluded.updated_at
            RETURNING r.xmax = 0 INTO v_new_bucket;
            IF v_intent.id IS NOT NULL AND v_intent.status = 'succeeded' AND v_intent.payment_ref = v_ref THEN
                SELECT * INTO v_applied FROM billing._apply_reversals(v_intent, p_event_id);
                reversed_usd := reversed_usd + v_applied.reversed_usd;
                transaction_id := coalesce(v_applied.transaction_id, transaction_id);
                v_outcomes := v_outcomes || CASE WHEN v_applied.reversed_usd > 0 THEN 'reversed'
                                                 WHEN v_applied.reversed_usd < 0 THEN 'reinstated'
                                                 ELSE 'already_reversed' END;
                v_details := v_details || format('%s %s reported as %s %s: %s USD %s', p_reversal_kind, p_reversal_key,
                                                 p_reversed_amount, v_rcurrency, abs(v_applied.reversed_usd),
                                                 CASE WHEN v_applied.reversed_usd < 0 THEN 'given back' ELSE 'taken back' END);
            ELSE
                v_outcomes := v_outcomes || 'deferred'::text;
                v_details := v_details || format('%s %s of payment %s kept: applied once the payment is credited',
                                                 p_reversal_kind, p_reversal_key, v_ref);
            END IF;
            -- Repeated disputes deactivate the account pending review (payments.disputes_to_deactivate).
            IF v_new_bucket AND p_reversal_kind = 'chargeback' AND v_intent.id IS NOT NULL
               AND billing._pause_for_disputes(v_intent, v_ref, p_reversal_key, p_event_id) THEN
                v_details := v_details || format('account %s deactivated pending review: repeated disputes',
                                                 v_intent.user_id);
            END IF;
        END IF;
    END IF;

    outcome := coalesce(nullif(array_to_string(v_outcomes, ','), ''), 'ignored');
    detail := nullif(array_to_string(v_details, '; '), '');
    UPDATE billing.payment_events e
       SET outcome = record_payment_event.outcome, detail = record_payment_event.detail,
           intent_id = v_intent.id, transaction_id = record_payment_event.transaction_id
     WHERE e.id = v_event.id;
    event_row_id := v_event.id;
    intent_id := v_intent.id;
    intent_status := v_intent.status;
    user_id := v_intent.user_id;
    transaction_id := coalesce(transaction_id, CASE WHEN p_action = 'paid' THEN v_intent.transaction_id END);
END;
$$;

GRANT EXECUTE ON FUNCTION billing.record_payment_event(text, text, text, text, uuid, text, text, text, numeric, text, text, text, numeric, text, boolean, text) TO tollgate_payments;
