-- billing.payments: every payment intent with what was paid, credited and reversed since, for
-- analysts and operators (conversion rates, refund rates, revenue in by provider).
CREATE OR REPLACE VIEW billing.payments AS
SELECT i.id AS intent_id,
       i.user_id,
       i.provider,
       i.status,
       i.amount,
       i.currency,
       i.paid_amount,
       i.paid_currency,
       i.credited_usd,
       i.exchange_rate,
       coalesce(r.clawed_usd, 0) AS reversed_usd,
       i.credited_usd - coalesce(r.clawed_usd, 0) AS net_usd,
       i.transaction_id,
       i.external_id,
       i.payment_ref,
       i.mismatch,
       i.created_at,
       i.updated_at
  FROM billing.payment_intents i
  LEFT JOIN (SELECT pr.provider, pr.payment_ref, sum(pr.clawed_usd) AS clawed_usd
               FROM billing.payment_reversals pr GROUP BY pr.provider, pr.payment_ref) r
         ON r.provider = i.provider AND r.payment_ref = i.payment_ref;

COMMENT ON VIEW billing.payments IS 'Payment intents (top-ups users started) with what was paid, credited and reversed.';
COMMENT ON COLUMN billing.payments.intent_id IS 'Tollgate''s id of the payment: the order reference given to the provider.';
COMMENT ON COLUMN billing.payments.user_id IS 'User who pays.';
COMMENT ON COLUMN billing.payments.provider IS 'Payment provider (stripe, fondy, ...).';
COMMENT ON COLUMN billing.payments.status IS 'created, pending, succeeded (credited), review (paid, not credited: operator), failed or expired.';
COMMENT ON COLUMN billing.payments.amount IS 'Amount the user asked to pay, in currency.';
COMMENT ON COLUMN billing.payments.currency IS 'USD or UAH.';
COMMENT ON COLUMN billing.payments.paid_amount IS 'Amount the provider reports paid (may differ: see mismatch).';
COMMENT ON COLUMN billing.payments.paid_currency IS 'Currency the provider reports paid.';
COMMENT ON COLUMN billing.payments.credited_usd IS 'USD credited to the balance (UAH converted at exchange_rate).';
COMMENT ON COLUMN billing.payments.exchange_rate IS 'UAH per USD used for the credit; NULL for USD payments.';
COMMENT ON COLUMN billing.payments.reversed_usd IS 'USD taken back since for refunds and chargebacks (net of chargebacks won).';
COMMENT ON COLUMN billing.payments.net_usd IS 'credited_usd minus reversed_usd.';
COMMENT ON COLUMN billing.payments.transaction_id IS 'The top-up ledger transaction.';
COMMENT ON COLUMN billing.payments.external_id IS 'Provider''s checkout id (Stripe Checkout Session, Fondy order).';
COMMENT ON COLUMN billing.payments.payment_ref IS 'Provider''s payment id (Stripe PaymentIntent, Fondy payment_id).';
COMMENT ON COLUMN billing.payments.mismatch IS 'What differed from what was asked, for an operator; NULL when all matched.';
COMMENT ON COLUMN billing.payments.created_at IS 'When the user started the payment.';
COMMENT ON COLUMN billing.payments.updated_at IS 'Last change of status.';

GRANT SELECT ON billing.payments TO tollgate_analyst;
