-- depends: 0006_role_split
-- Payments are credited only for exactly what their intent asked (amount, currency, the checkout
-- recorded on the intent); anything else goes to review uncredited, and an operator may credit it
-- after looking (billing.credit_reviewed_payment), audited on the intent and on the ledger row.
-- Provider payloads are stored once per payment state, at most 64 KiB each.

-- Who credited a reviewed payment, why and when. Set only by billing.credit_reviewed_payment, on the
-- intent it moves from 'review' to 'succeeded'; NULL for payments credited automatically.
ALTER TABLE billing.payment_intents
    ADD COLUMN reviewed_by   text CONSTRAINT payment_intents_reviewed_by_length
                                  CHECK (reviewed_by IS NULL OR length(reviewed_by) BETWEEN 1 AND 255),
    ADD COLUMN review_reason text CONSTRAINT payment_intents_review_reason_length
                                  CHECK (review_reason IS NULL OR length(review_reason) BETWEEN 1 AND 1000),
    ADD COLUMN reviewed_at   timestamptz;

-- Before this migration a payment of another amount or currency than asked was credited as paid (and
-- flagged). Those credits stand; they are labelled as such, so that billing.verify_ledger's new rule
-- ("credited without review = exactly what was asked") holds for them too.
UPDATE billing.payment_intents i
   SET reviewed_by = 'migration:0007',
       review_reason = left('credited as paid before payments went to review: '
                            || coalesce(i.mismatch, format('asked %s %s, paid %s %s', i.amount, i.currency,
                                                           i.paid_amount, i.paid_currency)), 1000),
       reviewed_at = i.updated_at
 WHERE i.status = 'succeeded' AND (i.paid_amount <> i.amount OR i.paid_currency <> i.currency);

ALTER TABLE billing.payment_intents
    ADD CONSTRAINT payment_intents_review_audit CHECK (
        (reviewed_by IS NULL) = (review_reason IS NULL) AND (reviewed_by IS NULL) = (reviewed_at IS NULL)
        AND (reviewed_by IS NULL OR status = 'succeeded'));

-- A provider never sends more than 64 KiB for one event; billing.record_payment_event refuses more.
-- NOT VALID: rows stored before keep their payload (at most 4 MiB then); new rows are checked.
ALTER TABLE billing.payment_events
    ADD CONSTRAINT payment_events_payload_size CHECK (octet_length(payload) <= 65536) NOT VALID;

-- record_payment_event gains p_review_reason (facts only the caller can check, e.g. the merchant): the
-- old signature goes, or calls with its 15 arguments would be ambiguous between the two.
DROP FUNCTION IF EXISTS billing.record_payment_event(text, text, text, text, uuid, text, text, text, numeric, text,
                                                    text, text, numeric, text, boolean);
