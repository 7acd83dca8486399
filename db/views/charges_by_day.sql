-- billing.charges_by_day: per day (configured time zone) and transaction type, money moved.
CREATE OR REPLACE VIEW billing.charges_by_day AS
SELECT (t.created_at AT TIME ZONE c.time_zone)::date AS day,
       t.type,
       count(*) AS transactions,
       count(DISTINCT t.user_id) AS users,
       sum(abs(t.amount_usd)) AS amount_usd,
       sum(abs(t.amount_uah)) AS amount_uah
  FROM billing.billing_transactions t
 CROSS JOIN billing.config c
 GROUP BY 1, 2;

COMMENT ON VIEW billing.charges_by_day IS 'Per day (in billing.config time zone) and type: transactions, users and amounts. Filter on day for a range.';
COMMENT ON COLUMN billing.charges_by_day.day IS 'Calendar day in the configured time zone.';
COMMENT ON COLUMN billing.charges_by_day.type IS 'charge, refund, topup or adjustment.';
COMMENT ON COLUMN billing.charges_by_day.transactions IS 'Number of ledger rows.';
COMMENT ON COLUMN billing.charges_by_day.users IS 'Distinct users with such rows that day.';
COMMENT ON COLUMN billing.charges_by_day.amount_usd IS 'Sum of absolute USD amounts (charges and debits counted positive).';
COMMENT ON COLUMN billing.charges_by_day.amount_uah IS 'Sum of absolute UAH amounts at each row''s recorded rate (NULL where no rate was set).';

GRANT SELECT ON billing.charges_by_day TO tollgate_analyst;
