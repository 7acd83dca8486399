-- Rolls back 0007: the review audit columns, the payload cap and the functions that only work with
-- them. Payments credited by an operator stay credited (their ledger rows are immutable). The review
-- view reads the columns, so it goes too; `tollgate migrate` re-creates it and the functions.
DROP FUNCTION IF EXISTS billing.credit_reviewed_payment(uuid, text, text, numeric, text);
DROP FUNCTION IF EXISTS billing.record_payment_event(text, text, text, text, uuid, text, text, text, numeric, text,
                                                    text, text, numeric, text, boolean, text);
DROP VIEW IF EXISTS billing.payments_needing_review;
ALTER TABLE billing.payment_events DROP CONSTRAINT payment_events_payload_size;
ALTER TABLE billing.payment_intents DROP CONSTRAINT payment_intents_review_audit;
ALTER TABLE billing.payment_intents DROP COLUMN reviewed_at, DROP COLUMN review_reason, DROP COLUMN reviewed_by;
