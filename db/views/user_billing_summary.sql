-- billing.user_billing_summary: one row per user with the original system's summary figures.
-- Today's and this month's spend come from the per-account counters (0 once their window has passed
-- in the configured time zone), so a lookup for one user never scans the ledger.
CREATE OR REPLACE VIEW billing.user_billing_summary AS
SELECT u.id AS user_id,
       u.external_id,
       u.email,
       u.name,
       b.balance_usd,
       b.balance_uah,
       b.held_usd,
       b.balance_usd - b.held_usd AS available_usd,
       b.daily_limit_usd,
       b.monthly_limit_usd,
       CASE WHEN b.day_start = (coalesce(c.clock_override, now()) AT TIME ZONE c.time_zone)::date
            THEN b.day_spent_usd ELSE 0 END AS today_spent_usd,
       CASE WHEN b.month_start = date_trunc('month', coalesce(c.clock_override, now()) AT TIME ZONE c.time_zone)::date
            THEN b.month_spent_usd ELSE 0 END AS month_spent_usd,
       b.total_spent_usd,
       b.total_spent_uah,
       b.total_requests,
       b.is_active,
       b.billing_enabled,
       b.limit_override,
       b.last_request_at,
       u.created_at
  FROM billing.users u
  JOIN billing.user_billing b ON b.user_id = u.id
 CROSS JOIN billing.config c;

COMMENT ON VIEW billing.user_billing_summary IS
    'One row per user: balances, limits, spend today / this month (from counters, no ledger scan), totals.';
COMMENT ON COLUMN billing.user_billing_summary.user_id IS 'Tollgate user id (uuid).';
COMMENT ON COLUMN billing.user_billing_summary.external_id IS 'The identity provider''s subject (JWT sub).';
COMMENT ON COLUMN billing.user_billing_summary.email IS 'E-mail from the identity provider, if known.';
COMMENT ON COLUMN billing.user_billing_summary.name IS 'Display name from the identity provider, if known.';
COMMENT ON COLUMN billing.user_billing_summary.balance_usd IS 'Balance in USD, the currency of record (8 decimals; negative only after a clawback of a refunded or disputed payment, or an administrator''s debit: settlement never takes it below zero).';
COMMENT ON COLUMN billing.user_billing_summary.balance_uah IS 'Sum of the ledger''s UAH amounts, each at the rate recorded on its transaction (display only).';
COMMENT ON COLUMN billing.user_billing_summary.held_usd IS 'USD held by open reservations of calls in flight.';
COMMENT ON COLUMN billing.user_billing_summary.available_usd IS 'balance_usd - held_usd: what new calls may use.';
COMMENT ON COLUMN billing.user_billing_summary.daily_limit_usd IS 'Spend limit per day (configured time zone).';
COMMENT ON COLUMN billing.user_billing_summary.monthly_limit_usd IS 'Spend limit per calendar month (configured time zone).';
COMMENT ON COLUMN billing.user_billing_summary.today_spent_usd IS 'Charged today (gross of refunds), from the account counter.';
COMMENT ON COLUMN billing.user_billing_summary.month_spent_usd IS 'Charged this month (gross of refunds), from the account counter.';
COMMENT ON COLUMN billing.user_billing_summary.total_spent_usd IS 'All charges ever, USD (gross of refunds).';
COMMENT ON COLUMN billing.user_billing_summary.total_spent_uah IS 'All charges ever, UAH at each charge''s recorded rate.';
COMMENT ON COLUMN billing.user_billing_summary.total_requests IS 'Number of charged requests.';
COMMENT ON COLUMN billing.user_billing_summary.is_active IS 'False: no new charges or holds are accepted.';
COMMENT ON COLUMN billing.user_billing_summary.billing_enabled IS 'False: calls are tracked but not charged.';
COMMENT ON COLUMN billing.user_billing_summary.limit_override IS 'True: an administrator lets this user exceed the limits.';
COMMENT ON COLUMN billing.user_billing_summary.last_request_at IS 'Time of the newest charge.';
COMMENT ON COLUMN billing.user_billing_summary.created_at IS 'When the user was first seen.';

GRANT SELECT ON billing.user_billing_summary TO tollgate_analyst, tollgate_operator;
