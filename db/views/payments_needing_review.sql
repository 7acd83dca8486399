-- billing.payments_needing_review: what an operator must look at: payments the provider reported paid
-- but that were not credited because they were not exactly what the intent asked (status 'review':
-- billing.credit_reviewed_payment credits one after looking), credited payments with a note nobody has
-- looked at (credited as paid before payments went to review, a reversal in another currency, another
-- product's payment that named the intent before its own was paid), payments naming an intent that
-- already had its payment, and verified provider events that matched no intent.
CREATE OR REPLACE VIEW billing.payments_needing_review AS
SELECT CASE WHEN i.status = 'review' THEN 'review' ELSE 'mismatch' END AS reason,
       i.provider,
       i.id AS intent_id,
       i.user_id,
       i.status,
       NULL::text AS event_id,
       i.mismatch AS detail,
       i.updated_at AS at,
       i.amount,
       i.currency,
       i.paid_amount,
       i.paid_currency,
       i.payment_ref
  FROM billing.payment_intents i
 WHERE i.status = 'review' OR i.mismatch IS NOT NULL
UNION ALL
SELECT CASE WHEN e.outcome LIKE '%unmatched%' THEN 'unmatched' ELSE 'unknown_intent' END,
       e.provider, e.intent_id, i.user_id, i.status, e.event_id, e.event_type || ': ' || coalesce(e.detail, ''),
       e.received_at, i.amount, i.currency, NULL, NULL, NULL
  FROM billing.payment_events e
  LEFT JOIN billing.payment_intents i ON i.id = e.intent_id
 WHERE e.outcome LIKE '%unknown_intent%' OR e.outcome LIKE '%unmatched%';

COMMENT ON VIEW billing.payments_needing_review IS 'Payments an operator must review: paid but not credited (review), credited with a note (mismatch), payments naming an intent that already had its payment (unmatched), events for unknown intents.';
COMMENT ON COLUMN billing.payments_needing_review.reason IS 'review (paid, not credited: billing.credit_reviewed_payment), mismatch (credited, with a note), unmatched (another payment named an intent that already had one) or unknown_intent (an event that matched no intent).';
COMMENT ON COLUMN billing.payments_needing_review.provider IS 'Payment provider.';
COMMENT ON COLUMN billing.payments_needing_review.intent_id IS 'The intent; NULL for unknown_intent.';
COMMENT ON COLUMN billing.payments_needing_review.user_id IS 'User of the intent; NULL for unknown_intent.';
COMMENT ON COLUMN billing.payments_needing_review.status IS 'Status of the intent (review: not credited; succeeded: credited).';
COMMENT ON COLUMN billing.payments_needing_review.event_id IS 'Provider''s event id of an unmatched or unknown_intent event.';
COMMENT ON COLUMN billing.payments_needing_review.detail IS 'Why it was not credited (or what the note says), or the event type and what it reported.';
COMMENT ON COLUMN billing.payments_needing_review.at IS 'When the intent last changed, or the event was received.';
COMMENT ON COLUMN billing.payments_needing_review.amount IS 'What the intent asked.';
COMMENT ON COLUMN billing.payments_needing_review.currency IS 'Currency the intent asked in.';
COMMENT ON COLUMN billing.payments_needing_review.paid_amount IS 'What the provider reported paid (review and mismatch rows).';
COMMENT ON COLUMN billing.payments_needing_review.paid_currency IS 'Currency the provider reported paid.';
COMMENT ON COLUMN billing.payments_needing_review.payment_ref IS 'Provider''s payment id recorded on the intent.';

GRANT SELECT ON billing.payments_needing_review TO tollgate_analyst, tollgate_operator;
