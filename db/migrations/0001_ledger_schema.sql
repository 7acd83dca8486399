-- The billing ledger: schema `billing`, its tables, constraints and the ledger's immutability trigger.
--
-- Tables are private: applications call the functions in db/functions, analysts read db/views.
-- Money: USD numeric(20,8) (currency of record), UAH numeric(20,2) derived at a recorded rate.

CREATE SCHEMA billing;
COMMENT ON SCHEMA billing IS 'Tollgate billing ledger. Tables are private; call the functions, read the views.';

-- One row: settings the functions read on every call (time zone of the day/month windows, hold TTL,
-- the UAH rate in force, kept here by billing.set_exchange_rate so a charge reads one row) and the
-- test-only clock. clock_override must stay NULL in production.
CREATE TABLE billing.config (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    time_zone      text NOT NULL DEFAULT 'UTC',
    hold_ttl       interval NOT NULL DEFAULT interval '15 minutes' CHECK (hold_ttl > interval '0'),
    uah_per_usd    numeric(20, 8) CHECK (uah_per_usd IS NULL OR uah_per_usd > 0),
    uah_rate_from  timestamptz,
    clock_override timestamptz
);
INSERT INTO billing.config DEFAULT VALUES;

CREATE TABLE billing.users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id text NOT NULL UNIQUE CHECK (length(external_id) BETWEEN 1 AND 255 AND btrim(external_id) <> ''),
    email       text CHECK (email IS NULL OR length(email) <= 320),
    name        text CHECK (name IS NULL OR length(name) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- UAH per USD, by the moment it takes effect. The newest row at or before a transaction's time is
-- the rate recorded on that transaction.
CREATE TABLE billing.exchange_rates (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    currency    text NOT NULL CHECK (currency = 'UAH'),
    per_usd     numeric(20, 8) NOT NULL CHECK (per_usd > 0 AND per_usd < 1000000),
    valid_from  timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (currency, valid_from)
);

CREATE TABLE billing.user_billing (
    user_id           uuid PRIMARY KEY REFERENCES billing.users (id),
    balance_usd       numeric(20, 8) NOT NULL DEFAULT 0,
    balance_uah       numeric(26, 2) NOT NULL DEFAULT 0,
    held_usd          numeric(20, 8) NOT NULL DEFAULT 0 CHECK (held_usd >= 0),
    -- No open hold expires before this (a lower bound, exact after every reap): while it is in the
    -- future no hold can need reaping, so the single-statement fast paths may skip the reap.
    holds_expire_at   timestamptz,
    daily_limit_usd   numeric(20, 8) NOT NULL DEFAULT 10 CHECK (daily_limit_usd >= 0),
    monthly_limit_usd numeric(20, 8) NOT NULL DEFAULT 100 CHECK (monthly_limit_usd >= 0),
    total_spent_usd   numeric(20, 8) NOT NULL DEFAULT 0 CHECK (total_spent_usd >= 0),
    total_spent_uah   numeric(26, 2) NOT NULL DEFAULT 0 CHECK (total_spent_uah >= 0),
    total_requests    bigint NOT NULL DEFAULT 0 CHECK (total_requests >= 0),
    day_spent_usd     numeric(20, 8) NOT NULL DEFAULT 0 CHECK (day_spent_usd >= 0),
    day_start         date,
    month_spent_usd   numeric(20, 8) NOT NULL DEFAULT 0 CHECK (month_spent_usd >= 0),
    month_start       date CHECK (month_start IS NULL OR extract(day FROM month_start) = 1),
    is_active         boolean NOT NULL DEFAULT true,
    billing_enabled   boolean NOT NULL DEFAULT true,
    limit_override    boolean NOT NULL DEFAULT false,
    version           bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    last_request_at   timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing.billing_transactions (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES billing.users (id),
    version            bigint NOT NULL CHECK (version > 0),
    type               text NOT NULL CHECK (type IN ('charge', 'refund', 'topup', 'adjustment')),
    currency           text NOT NULL DEFAULT 'USD' CHECK (currency IN ('USD', 'UAH')),
    amount_usd         numeric(20, 8) NOT NULL,
    amount_uah         numeric(26, 2),
    exchange_rate      numeric(20, 8),
    balance_before_usd numeric(20, 8) NOT NULL,
    balance_after_usd  numeric(20, 8) NOT NULL,
    request_id         text CHECK (request_id IS NULL OR length(request_id) BETWEEN 1 AND 200),
    payment_provider   text CHECK (payment_provider IS NULL OR length(payment_provider) BETWEEN 1 AND 50),
    payment_id         text CHECK (payment_id IS NULL OR length(payment_id) BETWEEN 1 AND 200),
    idempotency_key    text CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 200),
    refund_of          bigint REFERENCES billing.billing_transactions (id),
    actor              text,
    description        text CHECK (description IS NULL OR length(description) <= 1000),
    metadata           jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- amount_usd is the signed effect on the balance: charges take money out, top-ups and refunds put it in.
    CONSTRAINT amount_sign CHECK (
        (type = 'charge' AND amount_usd < 0)
        OR (type IN ('topup', 'refund') AND amount_usd > 0)
        OR (type = 'adjustment' AND amount_usd <> 0)),
    CONSTRAINT snapshot_arithmetic CHECK (balance_after_usd = balance_before_usd + amount_usd),
    CONSTRAINT uah_with_rate CHECK ((amount_uah IS NULL) = (exchange_rate IS NULL)),
    CONSTRAINT uah_payment_has_uah CHECK (currency <> 'UAH' OR amount_uah IS NOT NULL),
    CONSTRAINT charge_has_request CHECK (type <> 'charge' OR request_id IS NOT NULL),
    CONSTRAINT topup_has_payment CHECK (
        type <> 'topup' OR (payment_provider IS NOT NULL AND payment_id IS NOT NULL)),
    CONSTRAINT refund_has_origin CHECK ((type = 'refund') = (refund_of IS NOT NULL)),
    CONSTRAINT keyed_corrections CHECK (type NOT IN ('refund', 'adjustment') OR idempotency_key IS NOT NULL),
    CONSTRAINT adjustment_has_actor CHECK (type <> 'adjustment' OR actor IS NOT NULL),
    UNIQUE (user_id, version)
);
-- Invariant 3: one charge per request, one top-up per payment, one refund/adjustment per key.
CREATE UNIQUE INDEX billing_transactions_one_charge_per_request
    ON billing.billing_transactions (request_id) WHERE type = 'charge';
CREATE UNIQUE INDEX billing_transactions_one_topup_per_payment
    ON billing.billing_transactions (payment_provider, payment_id) WHERE type = 'topup';
CREATE UNIQUE INDEX billing_transactions_one_correction_per_key
    ON billing.billing_transactions (type, idempotency_key) WHERE type IN ('refund', 'adjustment');
CREATE INDEX billing_transactions_refunds ON billing.billing_transactions (refund_of) WHERE refund_of IS NOT NULL;
-- History pages (newest first, keyset on id) and per-user scans.
CREATE INDEX billing_transactions_user_id ON billing.billing_transactions (user_id, id);

-- The ledger is append-only: corrections are new rows.
CREATE FUNCTION billing._refuse_ledger_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'billing_transactions is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'BL090',
              HINT = 'Correct a ledger entry with billing.refund or billing.adjust, which add a new row.';
END;
$$;
CREATE TRIGGER billing_transactions_append_only
    BEFORE UPDATE OR DELETE ON billing.billing_transactions
    FOR EACH ROW EXECUTE FUNCTION billing._refuse_ledger_change();
CREATE TRIGGER billing_transactions_no_truncate
    BEFORE TRUNCATE ON billing.billing_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION billing._refuse_ledger_change();

CREATE TABLE billing.tool_pricing (
    tool_name        text PRIMARY KEY CHECK (length(tool_name) BETWEEN 1 AND 200),
    base_price_usd   numeric(20, 8) NOT NULL DEFAULT 0 CHECK (base_price_usd >= 0 AND base_price_usd < 1000000000000),
    markup_percent   numeric(10, 4) NOT NULL DEFAULT 0 CHECK (markup_percent >= 0 AND markup_percent <= 100000),
    estimate_usd     numeric(20, 8) CHECK (estimate_usd IS NULL OR (estimate_usd >= 0 AND estimate_usd < 1000000000000)),
    variable_cost    boolean NOT NULL DEFAULT false,
    description      text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing.reservations (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id     text NOT NULL UNIQUE CHECK (length(request_id) BETWEEN 1 AND 200),
    user_id        uuid NOT NULL REFERENCES billing.users (id),
    amount_usd     numeric(20, 8) NOT NULL CHECK (amount_usd > 0),
    status         text NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'settled', 'released', 'expired')),
    expires_at     timestamptz NOT NULL,
    -- The actual price settle was called with (charged, unless billing was disabled): replays compare it.
    settled_usd    numeric(20, 8) CHECK (settled_usd IS NULL OR settled_usd >= 0),
    transaction_id bigint REFERENCES billing.billing_transactions (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz,
    CONSTRAINT resolved_when_not_held CHECK ((status = 'held') = (resolved_at IS NULL)),
    CONSTRAINT settled_with_price CHECK ((status = 'settled') = (settled_usd IS NOT NULL))
);
CREATE INDEX reservations_open_by_user ON billing.reservations (user_id, expires_at) WHERE status = 'held';
CREATE INDEX reservations_open_by_expiry ON billing.reservations (expires_at) WHERE status = 'held';

CREATE TABLE billing.cost_tracking (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id        text NOT NULL UNIQUE CHECK (length(request_id) BETWEEN 1 AND 200),
    tool_name         text NOT NULL CHECK (length(tool_name) BETWEEN 1 AND 200),
    user_id           uuid REFERENCES billing.users (id),
    client_key        text CHECK (client_key IS NULL OR length(client_key) BETWEEN 1 AND 200),
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'completed', 'failed')),
    cost_breakdown    jsonb NOT NULL DEFAULT '[]'::jsonb,
    total_cost_usd    numeric(20, 8) CHECK (total_cost_usd IS NULL OR total_cost_usd >= 0),
    price_usd         numeric(20, 8) CHECK (price_usd IS NULL OR price_usd >= 0),
    transaction_id    bigint REFERENCES billing.billing_transactions (id),
    execution_time_ms integer CHECK (execution_time_ms IS NULL OR execution_time_ms >= 0),
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    CONSTRAINT completed_when_not_pending CHECK ((status = 'pending') = (completed_at IS NULL))
);
CREATE INDEX cost_tracking_user_created ON billing.cost_tracking (user_id, created_at) WHERE user_id IS NOT NULL;
CREATE INDEX cost_tracking_tool_created ON billing.cost_tracking (tool_name, created_at);
