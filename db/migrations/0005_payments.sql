-- depends: 0004_gateway
-- Money in through payment providers (Stripe, Fondy, ...): the intents users start, every provider
-- event as received, and the refunds/chargebacks providers report. Balances move only through
-- billing.record_payment_event, which credits a paid intent once with billing.top_up semantics and
-- claws reversals back as ledger adjustments that reference the top-up.

-- One row per payment a user starts. Our id is the order reference the provider is given (Stripe
-- client_reference_id and metadata, Fondy order_id), so every event maps back to it. Status:
--   created    recorded, the provider's checkout not created yet (or its creation was cut off)
--   pending    the provider's checkout exists, the user may pay
--   succeeded  paid and credited (transaction_id) -- the only status with money in the ledger
--   review     the provider reports it paid, but it could not be credited automatically (paid in a
--              currency the ledger does not keep): an operator decides (payments_needing_review)
--   failed     the provider reported the payment failed, or its checkout could not be created
--   expired    the checkout lapsed unpaid
-- A payment reported later for a failed or expired intent is still credited (the money was taken).
CREATE TABLE billing.payment_intents (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES billing.users (id),
    provider        text NOT NULL CONSTRAINT payment_intents_provider_format CHECK (provider ~ '^[a-z][a-z0-9_]{0,49}$'),
    status          text NOT NULL DEFAULT 'created'
                    CHECK (status IN ('created', 'pending', 'succeeded', 'review', 'failed', 'expired')),
    -- What the user asked to pay, in minor units' precision (providers take cents / kopiykas).
    currency        text NOT NULL CHECK (currency IN ('USD', 'UAH')),
    amount          numeric(20, 2) NOT NULL CHECK (amount > 0),
    -- The caller's Idempotency-Key: a replay returns this intent instead of starting another payment.
    idempotency_key text CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 200),
    -- The provider's checkout id (Stripe cs_..., Fondy: our order id) and its payment id once paid
    -- (Stripe pi_..., Fondy payment_id); refunds and disputes name the payment.
    external_id     text CHECK (external_id IS NULL OR length(external_id) BETWEEN 1 AND 255),
    payment_ref     text CHECK (payment_ref IS NULL OR length(payment_ref) BETWEEN 1 AND 255),
    checkout_url    text CHECK (checkout_url IS NULL OR length(checkout_url) BETWEEN 1 AND 2048),
    expires_at      timestamptz NOT NULL,
    -- What the provider reports was actually paid (may differ: see mismatch).
    paid_amount     numeric(20, 2) CHECK (paid_amount IS NULL OR paid_amount > 0),
    paid_currency   text CHECK (paid_currency IS NULL OR paid_currency ~ '^[A-Z]{3}$'),
    transaction_id  bigint REFERENCES billing.billing_transactions (id),
    credited_usd    numeric(20, 8) CHECK (credited_usd IS NULL OR credited_usd > 0),
    exchange_rate   numeric(20, 8),
    -- Set when what was paid differs from what was asked (or could not be credited): for an operator.
    mismatch        text CHECK (mismatch IS NULL OR length(mismatch) <= 1000),
    failure         text CHECK (failure IS NULL OR length(failure) <= 1000),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_intents_credited CHECK ((status = 'succeeded') = (transaction_id IS NOT NULL)),
    CONSTRAINT payment_intents_credit_figures CHECK ((transaction_id IS NULL) = (credited_usd IS NULL)),
    CONSTRAINT payment_intents_paid_figures CHECK (
        status NOT IN ('succeeded', 'review') OR (paid_amount IS NOT NULL AND paid_currency IS NOT NULL))
);
CREATE UNIQUE INDEX payment_intents_idempotency ON billing.payment_intents (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX payment_intents_external ON billing.payment_intents (provider, external_id)
    WHERE external_id IS NOT NULL;
CREATE UNIQUE INDEX payment_intents_payment_ref ON billing.payment_intents (provider, payment_ref)
    WHERE payment_ref IS NOT NULL;
-- One credit per intent, also enforced by the ledger's (provider, payment_id) index.
CREATE UNIQUE INDEX payment_intents_transaction ON billing.payment_intents (transaction_id)
    WHERE transaction_id IS NOT NULL;
CREATE INDEX payment_intents_user ON billing.payment_intents (user_id, created_at);
-- Reconciliation and expiry look at the few open intents only.
CREATE INDEX payment_intents_open ON billing.payment_intents (expires_at) WHERE status IN ('created', 'pending');
ALTER TABLE billing.payment_intents OWNER TO tollgate_owner;

-- Every verified provider event, raw, for audit. Unique on the provider's event id: a replayed
-- delivery finds its row and changes nothing. Unverified deliveries are never stored.
CREATE TABLE billing.payment_events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider       text NOT NULL CHECK (provider ~ '^[a-z][a-z0-9_]{0,49}$'),
    event_id       text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),
    event_type     text NOT NULL CHECK (length(event_type) BETWEEN 1 AND 100),
    intent_id      uuid REFERENCES billing.payment_intents (id),
    payload        text NOT NULL CHECK (length(payload) <= 4194304),
    -- What applying it did: credited, already_credited, failed, expired, reversed, deferred,
    -- unknown_intent, ignored, flagged.
    outcome        text NOT NULL,
    detail         text,
    transaction_id bigint REFERENCES billing.billing_transactions (id),
    received_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_events_unique UNIQUE (provider, event_id)
);
CREATE INDEX payment_events_intent ON billing.payment_events (intent_id) WHERE intent_id IS NOT NULL;
ALTER TABLE billing.payment_events OWNER TO tollgate_owner;

-- Money a provider reports taken back from a payment, one row per reversal "bucket": 'refunds' (the
-- cumulative refunded amount of the payment) or 'dispute:<id>' (one chargeback). Keyed by the
-- provider's payment id, so a refund that arrives before the payment's success is kept and applied
-- when the payment is credited. clawed_usd is what the ledger has taken back for the bucket so far.
CREATE TABLE billing.payment_reversals (
    provider     text NOT NULL,
    payment_ref  text NOT NULL CHECK (length(payment_ref) BETWEEN 1 AND 255),
    reversal_key text NOT NULL CHECK (length(reversal_key) BETWEEN 1 AND 80),
    kind         text NOT NULL CHECK (kind IN ('refund', 'chargeback')),
    currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount       numeric(20, 2) NOT NULL CHECK (amount >= 0),
    -- A chargeback the merchant won: the money comes back, the bucket is closed.
    reinstated   boolean NOT NULL DEFAULT false,
    clawed_usd   numeric(20, 8) NOT NULL DEFAULT 0 CHECK (clawed_usd >= 0),
    revision     integer NOT NULL DEFAULT 0 CHECK (revision >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, payment_ref, reversal_key)
);
ALTER TABLE billing.payment_reversals OWNER TO tollgate_owner;

-- A clawback is an 'adjustment' (not spend) that references the top-up it reverses through refund_of
-- (the column names "the transaction this row reverses"): refunds still reference charges.
ALTER TABLE billing.billing_transactions DROP CONSTRAINT refund_has_origin;
ALTER TABLE billing.billing_transactions ADD CONSTRAINT refund_has_origin CHECK (
    (type <> 'refund' OR refund_of IS NOT NULL) AND (refund_of IS NULL OR type IN ('refund', 'adjustment')));
