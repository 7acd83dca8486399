-- Rolls back 0005: the payment tables and the functions that only work with them. Clawback rows
-- (adjustments referencing a top-up) must not exist, or restoring the old constraint fails: roll back
-- only a database that never reversed a payment.
DROP FUNCTION IF EXISTS billing.create_payment_intent(uuid, text, numeric, text, text, interval);
DROP FUNCTION IF EXISTS billing.attach_payment_checkout(uuid, text, text, timestamptz);
DROP FUNCTION IF EXISTS billing.fail_payment_intent(uuid, text);
DROP FUNCTION IF EXISTS billing.record_payment_event(text, text, text, text, uuid, text, text, text, numeric, text,
                                                    text, text, numeric, text, boolean);
DROP FUNCTION IF EXISTS billing.payment_intent(uuid, uuid);
DROP FUNCTION IF EXISTS billing.open_payment_intents(text, interval, interval, integer);
DROP FUNCTION IF EXISTS billing.expire_payment_intents(interval);
DROP FUNCTION IF EXISTS billing._apply_reversals(billing.payment_intents, text);
DROP VIEW IF EXISTS billing.payments_needing_review;
DROP VIEW IF EXISTS billing.payments;
ALTER TABLE billing.billing_transactions DROP CONSTRAINT refund_has_origin;
ALTER TABLE billing.billing_transactions ADD CONSTRAINT refund_has_origin CHECK ((type = 'refund') = (refund_of IS NOT NULL));
DROP TABLE billing.payment_reversals;
DROP TABLE billing.payment_events;
DROP TABLE billing.payment_intents;
