-- Rolls back 0011: the payment fraud rules. The functions whose signature 0011 changed are dropped with the
-- helpers only they use; the next `tollgate migrate` of the earlier code re-creates them (and every other
-- function) from its db/functions.
DROP FUNCTION IF EXISTS billing.create_payment_intent(uuid, text, numeric, text, text, interval, inet);
DROP FUNCTION IF EXISTS billing._available_usd(numeric, numeric, numeric);
DROP FUNCTION IF EXISTS billing._payment_start_refusal(uuid, cidr, numeric, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS billing._cool_payment_credit(billing.payment_intents);
DROP FUNCTION IF EXISTS billing._uncool_clawback(uuid, numeric, timestamptz);
DROP FUNCTION IF EXISTS billing._pause_for_disputes(billing.payment_intents, text, text, text);
ALTER TABLE billing.user_billing
    DROP CONSTRAINT user_billing_cooling_has_end,
    DROP COLUMN cooling_until,
    DROP COLUMN cooling_usd,
    DROP COLUMN cooling_credit_usd,
    DROP COLUMN first_paid_at;
DROP INDEX billing.payment_intents_ip_failed;
DROP INDEX billing.payment_intents_user_failed;
DROP INDEX billing.payment_intents_ip;
ALTER TABLE billing.payment_intents
    DROP COLUMN failed_at,
    DROP COLUMN client_ip;
