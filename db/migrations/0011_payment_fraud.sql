-- depends: 0010_abuse
-- Payment fraud rules (issue 14, item 5; docs/abuse.md "Payment fraud rules"), enforced by the ledger with
-- the figures of billing.abuse_policy ('payments.*'):
--  * caps on the payment intents started per hour and on the payments failed per day, per user and per
--    client address: an intent records the address it was started from (client_ip) and, when a provider
--    reports its payment failed (a declined card), when that happened (failed_at);
--  * the first top-ups of a new account: a count and a USD total (from the intents themselves);
--  * cooling-off: fresh card credit of a new payer is spendable only up to a figure until the cooling-off
--    ends. The account carries what the hot path needs, so the available balance stays O(1):
--      first_paid_at       when a provider payment was first credited to the account ("new payer" until
--                          first_paid_at + payments.cooling_off_hours)
--      cooling_credit_usd  the card credit received while the account is a new payer (clawbacks lower it)
--      cooling_usd         the part of it not spendable yet: greatest(cooling_credit_usd - spendable, 0)
--      cooling_until       when it becomes spendable (= first_paid_at + cooling_off_hours)
--    billing._available_usd(balance, holds, cooling) = balance - holds - cooling; billing._load_account
--    stops counting it once cooling_until has passed (and writes it down under the lock).
--  * repeated disputes deactivate the account pending review (billing.record_payment_event).
-- create_payment_intent gains p_client_ip and answers a refusal as a result row (its audit row commits),
-- and _available_usd gains the cooling argument: the old signatures are dropped here, db/functions
-- re-creates them right after (see 0008).

ALTER TABLE billing.payment_intents
    -- The client address the top-up was started from (api.abuse.clientip); NULL for a caller that gave none.
    ADD COLUMN client_ip inet,
    -- When the provider reported the payment failed (billing.record_payment_event, action 'failed'): the
    -- declined cards the card-testing caps count. A checkout that could not be created is not one.
    ADD COLUMN failed_at timestamptz;
CREATE INDEX payment_intents_ip ON billing.payment_intents (client_ip, created_at) WHERE client_ip IS NOT NULL;
CREATE INDEX payment_intents_user_failed ON billing.payment_intents (user_id, failed_at) WHERE failed_at IS NOT NULL;
CREATE INDEX payment_intents_ip_failed ON billing.payment_intents (client_ip, failed_at)
    WHERE failed_at IS NOT NULL AND client_ip IS NOT NULL;

ALTER TABLE billing.user_billing
    ADD COLUMN first_paid_at      timestamptz,
    ADD COLUMN cooling_credit_usd numeric(20, 8) NOT NULL DEFAULT 0
        CONSTRAINT user_billing_cooling_credit_range CHECK (cooling_credit_usd >= 0),
    ADD COLUMN cooling_usd        numeric(20, 8) NOT NULL DEFAULT 0
        CONSTRAINT user_billing_cooling_range CHECK (cooling_usd >= 0 AND cooling_usd <= cooling_credit_usd),
    ADD COLUMN cooling_until      timestamptz,
    ADD CONSTRAINT user_billing_cooling_has_end CHECK (cooling_usd = 0 OR cooling_until IS NOT NULL);

-- Accounts credited by a provider before this migration are established payers: their first credit is
-- recorded, nothing of theirs cools.
UPDATE billing.user_billing b
   SET first_paid_at = p.first_paid_at
  FROM (SELECT i.user_id, min(t.created_at) AS first_paid_at
          FROM billing.payment_intents i
          JOIN billing.billing_transactions t ON t.id = i.transaction_id
         GROUP BY i.user_id) p
 WHERE b.user_id = p.user_id;

DROP FUNCTION IF EXISTS billing.create_payment_intent(uuid, text, numeric, text, text, interval);
DROP FUNCTION IF EXISTS billing._available_usd(numeric, numeric);
