-- depends: 0011_payment_fraud
-- Velocity flags and refund caps (issue 14, item 6; docs/abuse.md "Velocity flags and refund caps").
--  * cost_tracking.client_ip: the client address of each tracked call (billing.begin_request's p_client_ip,
--    from the gateway's api.abuse.clientip), so a fan-out over many addresses can be seen. NULL for calls
--    tracked before this migration and for callers that do not pass it.
--  * account_flags: one row per suspicion raised on an account by billing.detect_velocity (a spend spike, a
--    fan-out over API keys or client addresses), open until an operator clears or confirms it
--    (billing.decide_account_flag). At most one open flag per account and rule. `paused`: raising it
--    deactivated the account (velocity.pause = 1); clearing such a flag reactivates it.
--  * spend_buckets + velocity_state: the hourly spend of each account, rolled up by the detector from the
--    ledger (its trailing average is read from here, never by scanning days of ledger rows), and the
--    detector's own watermark. Both are the detector's scratch: dropping them loses only the baseline.
--  * indexes behind the detector's scans (recent charges, recent tracked calls of users) and the refund cap
--    (an account's recent refunds).
-- The functions whose signature changes (begin_request, start_request: p_client_ip; refund: p_actor) are
-- dropped here; db/functions re-creates them right after (as 0008 does).

ALTER TABLE billing.cost_tracking ADD COLUMN client_ip inet;

CREATE TABLE billing.account_flags (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES billing.users (id),
    -- velocity.spend_spike, velocity.fanout_api_keys, velocity.fanout_ips
    rule        text NOT NULL CONSTRAINT account_flags_rule_format CHECK (rule ~ '^[a-z][a-z0-9_.]{0,62}$'),
    status      text NOT NULL DEFAULT 'open' CONSTRAINT account_flags_status_known
                CHECK (status IN ('open', 'cleared', 'confirmed')),
    raised_at   timestamptz NOT NULL,
    -- The figures that raised it: the window, what was seen, the threshold.
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Raising it deactivated the account (or found it paused by another open flag): clearing reactivates.
    paused      boolean NOT NULL DEFAULT false,
    decided_at  timestamptz,
    decided_by  text CONSTRAINT account_flags_decided_by_length CHECK (length(decided_by) BETWEEN 1 AND 200),
    reason      text CONSTRAINT account_flags_reason_length CHECK (length(reason) BETWEEN 1 AND 1000),
    CONSTRAINT account_flags_decided_when_not_open
        CHECK ((status = 'open') = (decided_at IS NULL)
               AND (status = 'open') = (decided_by IS NULL)
               AND (status = 'open') = (reason IS NULL))
);
CREATE UNIQUE INDEX account_flags_one_open ON billing.account_flags (user_id, rule) WHERE status = 'open';
CREATE INDEX account_flags_user ON billing.account_flags (user_id, id);
CREATE INDEX account_flags_open ON billing.account_flags (id) WHERE status = 'open';
ALTER TABLE billing.account_flags OWNER TO tollgate_owner;

CREATE TABLE billing.spend_buckets (
    user_id      uuid NOT NULL REFERENCES billing.users (id),
    bucket_start timestamptz NOT NULL CONSTRAINT spend_buckets_hourly CHECK (bucket_start = date_trunc('hour', bucket_start)),
    spend_usd    numeric(20, 8) NOT NULL CHECK (spend_usd >= 0),
    PRIMARY KEY (user_id, bucket_start)
);
CREATE INDEX spend_buckets_start ON billing.spend_buckets (bucket_start);
ALTER TABLE billing.spend_buckets OWNER TO tollgate_owner;

CREATE TABLE billing.velocity_state (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- Charges stamped before this are in spend_buckets; the first run starts the roll-up.
    rolled_up_to   timestamptz,
    rollup_started timestamptz,
    -- The last completed run (real time): a run within half the interval makes another a no-op.
    last_run_at    timestamptz
);
INSERT INTO billing.velocity_state DEFAULT VALUES;
ALTER TABLE billing.velocity_state OWNER TO tollgate_owner;

-- The ledger is append-only and stamped in commit order within milliseconds, so its rows lie on disk in
-- created_at order: a BRIN index finds the recent ones at almost no cost to each insert (the newest block
-- range is unsummarised, always scanned, and never updated by an insert).
CREATE INDEX billing_transactions_created_brin ON billing.billing_transactions USING brin (created_at);
-- The refund cap: an account's refunds of the last N days (refunds are rare; the index is small).
CREATE INDEX billing_transactions_refunds_by_user ON billing.billing_transactions (user_id, created_at)
    WHERE type = 'refund';
-- Fan-out: the tracked calls of users in the last window (cost_tracking rows are updated on completion,
-- so they do not stay in created_at order on disk: a btree, not a BRIN).
CREATE INDEX cost_tracking_users_recent ON billing.cost_tracking (created_at) WHERE user_id IS NOT NULL;

DROP FUNCTION IF EXISTS billing.begin_request(text, text, uuid, text, numeric, interval, integer);
DROP FUNCTION IF EXISTS billing.start_request(text, text, uuid, text);
DROP FUNCTION IF EXISTS billing.refund(bigint, numeric, text, text);
