-- billing.verify_ledger() -> setof (invariant, user_id, transaction_id, detail)
-- Every row that breaks an invariant of docs/design.md §4; empty when all is well:
--  balance           balance_usd / balance_uah equal the signed sum of the user's ledger rows
--  chain             each row's balance_before_usd equals the previous row's balance_after_usd (the
--                    first row starts from 0) and versions run 1, 2, 3, ... without gaps
--  version           user_billing.version equals the newest ledger version
--  hash_chain        each row's entry_hash is SHA-256 over the previous row's hash and its own content
--                    (billing._entry_hash, migration 0009), and user_billing.ledger_head is the newest
--                    row's hash: a row changed, removed, re-ordered or appended by hand without the
--                    chain breaks it (one appended with a correctly recomputed chain does not: compare
--                    the heads with anchors kept elsewhere, billing.verify_anchors)
--  totals            total_spent_usd/_uah and total_requests equal what the charges add up to
--  day_window        day_spent_usd equals the charges in the day window it belongs to (configured
--                    time zone); month_window likewise for month_spent_usd
--  holds             held_usd equals the sum of the user's open ('held') reservations, and no open
--                    hold expires before the account's holds_expire_at bound
--  refunds           refunds of a charge add up to no more than the charge
--  settlement        a settled reservation's transaction is the charge of the same request and user
--  tracking          a billed tool call's transaction is the charge of the same request and user
--  payments          a succeeded payment intent's transaction is the top-up of the same user, provider,
--                    payment id (the intent id) and credited amount, and a top-up of an intent is that
--                    intent's only credit; a payment credited without an operator's review
--                    (reviewed_by NULL) was credited exactly the amount and currency its intent asked
--  clawbacks         an adjustment that reverses (refund_of) a transaction reverses a top-up of the same
--                    user, and the clawbacks of one top-up add up to between minus the top-up and zero
--  reversals         what billing.payment_reversals says was clawed back from a payment equals the
--                    clawback rows of its top-up, and nothing is clawed back from the payment of an
--                    intent that is not credited (in review, failed, ...)
--  write_offs        a write-off's charged_usd is its ledger charge (same request and user; none when 0)
--                    and it belongs to a settled hold or a completed tool call of that user and charge
--                    (priced at the write-off's price); and a settled hold or a billed call charged less
--                    than its price has a write-off saying why (the settlement policy never charges less
--                    silently)
-- It reads the whole ledger: run it from operations or tests, not on the request path.
-- Locks: none (reads one snapshot).  Errors: none.
CREATE OR REPLACE FUNCTION billing.verify_ledger()
RETURNS TABLE (invariant text, user_id uuid, transaction_id bigint, detail text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
SET jit = off  -- JIT compiles big plans for seconds (seen on Debian's PostgreSQL 15); never worth it here
AS $$
    WITH cfg AS (
        SELECT time_zone FROM billing.config
    ), sums AS (
        SELECT t.user_id,
               sum(t.amount_usd) AS usd,
               sum(coalesce(t.amount_uah, 0)) AS uah,
               max(t.version) AS version,
               coalesce(sum(-t.amount_usd) FILTER (WHERE t.type = 'charge'), 0) AS spent_usd,
               coalesce(sum(-coalesce(t.amount_uah, 0)) FILTER (WHERE t.type = 'charge'), 0) AS spent_uah,
               count(*) FILTER (WHERE t.type = 'charge') AS charges,
               (array_agg(t.entry_hash ORDER BY t.version DESC))[1] AS head
          FROM billing.billing_transactions t
         GROUP BY t.user_id
    ), accounts AS (
        SELECT b.*, coalesce(s.usd, 0) AS l_usd, coalesce(s.uah, 0) AS l_uah, coalesce(s.version, 0) AS l_version,
               coalesce(s.spent_usd, 0) AS l_spent_usd, coalesce(s.spent_uah, 0) AS l_spent_uah,
               coalesce(s.charges, 0) AS l_charges, s.head AS l_head
          FROM billing.user_billing b LEFT JOIN sums s ON s.user_id = b.user_id
    ), chained AS (
        SELECT t.id, t.user_id, t.version, t.balance_before_usd,
               coalesce(lag(t.balance_after_usd) OVER w, 0) AS previous_after,
               row_number() OVER w AS expected_version,
               t.entry_hash, billing._row_hash(lag(t.entry_hash) OVER w, t) AS expected_hash
          FROM billing.billing_transactions t
        WINDOW w AS (PARTITION BY t.user_id ORDER BY t.version)
    )
    SELECT 'balance', a.user_id, NULL::bigint,
           format('balance_usd is %s but the ledger sums to %s', a.balance_usd, a.l_usd)
      FROM accounts a WHERE a.balance_usd <> a.l_usd
    UNION ALL
    SELECT 'balance', a.user_id, NULL,
           format('balance_uah is %s but the ledger sums to %s', a.balance_uah, a.l_uah)
      FROM accounts a WHERE a.balance_uah <> a.l_uah
    UNION ALL
    SELECT 'chain', c.user_id, c.id,
           format('balance_before_usd %s does not follow the previous balance_after_usd %s',
                  c.balance_before_usd, c.previous_after)
      FROM chained c WHERE c.balance_before_usd <> c.previous_after
    UNION ALL
    SELECT 'chain', c.user_id, c.id, format('version %s where %s was expected', c.version, c.expected_version)
      FROM chained c WHERE c.version <> c.expected_version
    UNION ALL
    SELECT 'hash_chain', c.user_id, c.id,
           format('entry_hash %s is not the hash of the row chained onto the previous one (%s)',
                  encode(c.entry_hash, 'hex'), encode(c.expected_hash, 'hex'))
      FROM chained c WHERE c.entry_hash IS DISTINCT FROM c.expected_hash
    UNION ALL
    SELECT 'hash_chain', a.user_id, NULL,
           format('ledger_head %s is not the newest row''s hash %s',
                  coalesce(encode(a.ledger_head, 'hex'), 'NULL'), coalesce(encode(a.l_head, 'hex'), 'NULL'))
      FROM accounts a WHERE a.ledger_head IS DISTINCT FROM a.l_head
    UNION ALL
    SELECT 'version', a.user_id, NULL,
           format('account version %s but the newest ledger version is %s', a.version, a.l_version)
      FROM accounts a WHERE a.version <> a.l_version
    UNION ALL
    SELECT 'totals', a.user_id, NULL,
           format('total_spent_usd %s / total_spent_uah %s / total_requests %s but the charges add up to %s / %s / %s',
                  a.total_spent_usd, a.total_spent_uah, a.total_requests, a.l_spent_usd, a.l_spent_uah, a.l_charges)
      FROM accounts a
     WHERE a.total_spent_usd <> a.l_spent_usd OR a.total_spent_uah <> a.l_spent_uah
        OR a.total_requests <> a.l_charges
    UNION ALL
    SELECT 'day_window', a.user_id, NULL,
           format('day_spent_usd %s for %s but that day''s charges add up to %s', a.day_spent_usd, a.day_start, w.spent)
      FROM accounts a, cfg
     CROSS JOIN LATERAL (
        SELECT coalesce(sum(-t.amount_usd), 0) AS spent
          FROM billing.billing_transactions t
         WHERE t.user_id = a.user_id AND t.type = 'charge'
           AND t.created_at >= a.day_start::timestamp AT TIME ZONE cfg.time_zone
           AND t.created_at < (a.day_start + 1)::timestamp AT TIME ZONE cfg.time_zone) w
     WHERE a.day_start IS NOT NULL AND a.day_spent_usd <> w.spent
    UNION ALL
    SELECT 'month_window', a.user_id, NULL,
           format('month_spent_usd %s for %s but that month''s charges add up to %s',
                  a.month_spent_usd, a.month_start, w.spent)
      FROM accounts a, cfg
     CROSS JOIN LATERAL (
        SELECT coalesce(sum(-t.amount_usd), 0) AS spent
          FROM billing.billing_transactions t
         WHERE t.user_id = a.user_id AND t.type = 'charge'
           AND t.created_at >= a.month_start::timestamp AT TIME ZONE cfg.time_zone
           AND t.created_at < (a.month_start + interval '1 month')::timestamp AT TIME ZONE cfg.time_zone) w
     WHERE a.month_start IS NOT NULL AND a.month_spent_usd <> w.spent
    UNION ALL
    SELECT 'holds', a.user_id, NULL,
           format('held_usd %s but open holds add up to %s', a.held_usd, coalesce(h.held, 0))
      FROM accounts a
      LEFT JOIN (SELECT r.user_id, sum(r.amount_usd) AS held FROM billing.reservations r
                  WHERE r.status = 'held' GROUP BY r.user_id) h ON h.user_id = a.user_id
     WHERE a.held_usd <> coalesce(h.held, 0)
    UNION ALL
    SELECT 'holds', a.user_id, NULL,
           format('holds_expire_at %s is later than the earliest open hold''s expiry %s',
                  a.holds_expire_at, h.first_expiry)
      FROM accounts a
      JOIN (SELECT r.user_id, min(r.expires_at) AS first_expiry FROM billing.reservations r
             WHERE r.status = 'held' GROUP BY r.user_id) h ON h.user_id = a.user_id
     WHERE a.holds_expire_at IS NULL OR a.holds_expire_at > h.first_expiry
    UNION ALL
    SELECT 'refunds', c.user_id, c.id,
           format('charge of %s refunded %s in total', -c.amount_usd, r.refunded)
      FROM billing.billing_transactions c
      JOIN (SELECT t.refund_of, sum(t.amount_usd) AS refunded FROM billing.billing_transactions t
             WHERE t.type = 'refund' GROUP BY t.refund_of) r ON r.refund_of = c.id
     WHERE c.type <> 'charge' OR r.refunded > -c.amount_usd
    UNION ALL
    SELECT 'settlement', r.user_id, r.transaction_id,
           format('reservation %s (%s) points at a transaction that is not its charge', r.request_id, r.status)
      FROM billing.reservations r
      LEFT JOIN billing.billing_transactions t ON t.id = r.transaction_id
     WHERE r.transaction_id IS NOT NULL
       AND (r.status <> 'settled' OR t.type <> 'charge' OR t.request_id <> r.request_id OR t.user_id <> r.user_id)
    UNION ALL
    SELECT 'tracking', ct.user_id, ct.transaction_id,
           format('tool call %s points at a transaction that is not its charge', ct.request_id)
      FROM billing.cost_tracking ct
      LEFT JOIN billing.billing_transactions t ON t.id = ct.transaction_id
     WHERE ct.transaction_id IS NOT NULL
       AND (t.type <> 'charge' OR t.request_id <> ct.request_id OR t.user_id IS DISTINCT FROM ct.user_id)
    UNION ALL
    SELECT 'payments', i.user_id, i.transaction_id,
           format('payment intent %s (%s) is credited by a transaction that is not its top-up of %s USD',
                  i.id, i.status, i.credited_usd)
      FROM billing.payment_intents i
      LEFT JOIN billing.billing_transactions t ON t.id = i.transaction_id
     WHERE i.transaction_id IS NOT NULL
       AND (t.type <> 'topup' OR t.user_id <> i.user_id OR t.payment_provider <> i.provider
            OR t.payment_id <> i.id::text OR t.amount_usd <> i.credited_usd)
    UNION ALL
    SELECT 'payments', t.user_id, t.id,
           format('top-up of payment intent %s is not recorded on the intent (status %s)', i.id, i.status)
      FROM billing.payment_intents i
      JOIN billing.billing_transactions t
        ON t.type = 'topup' AND t.payment_provider = i.provider AND t.payment_id = i.id::text
     WHERE i.transaction_id IS DISTINCT FROM t.id
    UNION ALL
    SELECT 'clawbacks', a.user_id, a.id,
           format('adjustment reverses transaction %s, which is not a top-up of the same user', a.refund_of)
      FROM billing.billing_transactions a
      JOIN billing.billing_transactions o ON o.id = a.refund_of
     WHERE a.type = 'adjustment' AND (o.type <> 'topup' OR o.user_id <> a.user_id)
    UNION ALL
    SELECT 'clawbacks', o.user_id, o.id,
           format('top-up of %s USD has clawbacks adding up to %s', o.amount_usd, c.net)
      FROM billing.billing_transactions o
      JOIN (SELECT t.refund_of, sum(t.amount_usd) AS net FROM billing.billing_transactions t
             WHERE t.type = 'adjustment' AND t.refund_of IS NOT NULL GROUP BY t.refund_of) c ON c.refund_of = o.id
     WHERE o.type = 'topup' AND (c.net > 0 OR c.net < -o.amount_usd)
    UNION ALL
    SELECT 'reversals', i.user_id, i.transaction_id,
           format('payment %s: reversals record %s USD clawed back, the ledger %s', i.id, r.clawed, coalesce(-c.net, 0))
      FROM billing.payment_intents i
      JOIN (SELECT pr.provider, pr.payment_ref, sum(pr.clawed_usd) AS clawed FROM billing.payment_reversals pr
             GROUP BY pr.provider, pr.payment_ref) r ON r.provider = i.provider AND r.payment_ref = i.payment_ref
      LEFT JOIN (SELECT t.refund_of, sum(t.amount_usd) AS net FROM billing.billing_transactions t
                  WHERE t.type = 'adjustment' AND t.refund_of IS NOT NULL GROUP BY t.refund_of) c
             ON c.refund_of = i.transaction_id
     WHERE i.transaction_id IS NOT NULL AND r.clawed <> coalesce(-c.net, 0)
    UNION ALL
    SELECT 'payments', i.user_id, i.transaction_id,
           format('payment intent %s asked %s %s but was credited %s %s without an operator''s review',
                  i.id, i.amount, i.currency, CASE t.currency WHEN 'UAH' THEN t.amount_uah ELSE t.amount_usd END,
                  t.currency)
      FROM billing.payment_intents i
      JOIN billing.billing_transactions t ON t.id = i.transaction_id
     WHERE i.reviewed_by IS NULL
       AND (t.currency <> i.currency OR CASE t.currency WHEN 'UAH' THEN t.amount_uah ELSE t.amount_usd END <> i.amount)
    UNION ALL
    SELECT 'reversals', i.user_id, NULL,
           format('payment %s is %s (not credited) but reversals record %s USD clawed back', i.id, i.status, r.clawed_usd)
      FROM billing.payment_intents i
      JOIN billing.payment_reversals r ON r.provider = i.provider AND r.payment_ref = i.payment_ref
     WHERE i.transaction_id IS NULL AND r.clawed_usd <> 0
    UNION ALL
    SELECT 'write_offs', w.user_id, w.transaction_id,
           format('write-off of %s: charged_usd %s but its ledger charge is %s', w.request_id, w.charged_usd,
                  coalesce((-t.amount_usd)::text, 'none'))
      FROM billing.write_offs w
      LEFT JOIN billing.billing_transactions t ON t.type = 'charge' AND t.request_id = w.request_id
     WHERE t.id IS DISTINCT FROM w.transaction_id OR t.user_id <> w.user_id
        OR coalesce(-t.amount_usd, 0) <> w.charged_usd
    UNION ALL
    SELECT 'write_offs', w.user_id, w.transaction_id,
           format('write-off of %s belongs to no settled hold or completed call of that user and charge', w.request_id)
      FROM billing.write_offs w
     WHERE NOT EXISTS (SELECT FROM billing.reservations r
                        WHERE r.request_id = w.request_id AND r.user_id = w.user_id AND r.status = 'settled'
                          AND r.transaction_id IS NOT DISTINCT FROM w.transaction_id)
       AND NOT EXISTS (SELECT FROM billing.cost_tracking ct
                        WHERE ct.request_id = w.request_id AND ct.user_id = w.user_id AND ct.status = 'completed'
                          AND ct.transaction_id IS NOT DISTINCT FROM w.transaction_id AND ct.price_usd = w.price_usd)
    UNION ALL
    SELECT 'write_offs', r.user_id, r.transaction_id,
           format('hold %s settled at %s but charged %s, with no write-off', r.request_id, r.settled_usd, -t.amount_usd)
      FROM billing.reservations r
      JOIN billing.billing_transactions t ON t.id = r.transaction_id
     WHERE r.status = 'settled' AND -t.amount_usd < r.settled_usd
       AND NOT EXISTS (SELECT FROM billing.write_offs w WHERE w.request_id = r.request_id)
    UNION ALL
    SELECT 'write_offs', ct.user_id, ct.transaction_id,
           format('tool call %s priced %s but charged %s, with no write-off', ct.request_id, ct.price_usd, -t.amount_usd)
      FROM billing.cost_tracking ct
      JOIN billing.billing_transactions t ON t.id = ct.transaction_id
     WHERE -t.amount_usd < ct.price_usd
       AND NOT EXISTS (SELECT FROM billing.write_offs w WHERE w.request_id = ct.request_id)
$$;

GRANT EXECUTE ON FUNCTION billing.verify_ledger() TO tollgate_operator;
