-- billing.payments_needing_review: what an operator must look at: payments credited with a different
-- amount or currency than asked (or not creditable), and verified provider events that matched no
-- intent (a payment for an order Tollgate does not know, or a refund of one).
CREATE OR REPLACE VIEW billing.payments_needing_review AS
SELECT 'mismatch'::text AS reason,
       i.provider,
       i.id AS intent_id,
       i.user_id,
       i.status,
       NULL::text AS event_id,
       i.mismatch AS detail,
       i.updated_at AS at
  FROM billing.payment_intents i
 WHERE i.mismatch IS NOT NULL OR i.status = 'review'
UNION ALL
SELECT 'unknown_intent', e.provider, NULL, NULL, NULL, e.event_id, e.event_type || ': ' || coalesce(e.detail, ''),
       e.received_at
  FROM billing.payment_events e
 WHERE e.outcome LIKE '%unknown_intent%';

COMMENT ON VIEW billing.payments_needing_review IS 'Payments an operator must review: amount/currency mismatches, uncreditable payments, events for unknown intents.';
COMMENT ON COLUMN billing.payments_needing_review.reason IS 'mismatch (an intent flagged) or unknown_intent (an event that matched no intent).';
COMMENT ON COLUMN billing.payments_needing_review.provider IS 'Payment provider.';
COMMENT ON COLUMN billing.payments_needing_review.intent_id IS 'The flagged intent; NULL for unknown_intent.';
COMMENT ON COLUMN billing.payments_needing_review.user_id IS 'User of the flagged intent; NULL for unknown_intent.';
COMMENT ON COLUMN billing.payments_needing_review.status IS 'Status of the flagged intent (succeeded: credited as paid; review: not credited).';
COMMENT ON COLUMN billing.payments_needing_review.event_id IS 'Provider''s event id of an unknown_intent event.';
COMMENT ON COLUMN billing.payments_needing_review.detail IS 'What differed, or the event type and why it matched nothing.';
COMMENT ON COLUMN billing.payments_needing_review.at IS 'When it was flagged or received.';

GRANT SELECT ON billing.payments_needing_review TO tollgate_analyst, tollgate_operator;
