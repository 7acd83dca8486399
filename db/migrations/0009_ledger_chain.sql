-- depends: 0008_price_bounds
-- Tamper evidence (docs/design.md §2): ledger rows are hash-chained per account. Each billing_transactions row
-- carries entry_hash = SHA-256(the previous row's hash || the row's content), computed in the same
-- transaction that writes the row; user_billing.ledger_head is the hash of the account's newest row,
-- the head every writer chains onto (read under the account's row lock). billing.verify_ledger
-- recomputes the chain; `tollgate ledger anchor` prints the heads so an operator can keep them elsewhere
-- and later prove that no row up to them was rewritten (`tollgate ledger verify --anchors FILE`).
--
-- The hash functions live here, not in db/functions: they define a stored data format ("v1"), which
-- the rows written before this migration are chained with right below (before db/functions is
-- re-applied). A different format would be a new migration that re-chains, never an edit of these.

-- billing._entry_hash(previous, user_id, version, type, currency, amount_usd, amount_uah, exchange_rate,
--     balance_before_usd, balance_after_usd, request_id, payment_provider, payment_id, idempotency_key,
--     refund_of, actor, description, metadata, created_at) -> bytea
-- The hash of one ledger row in its account's chain (tamper evidence, docs/design.md §2):
--     SHA-256( previous || UTF-8 of the text of ROW('tollgate-ledger-v1', the row's fields) )
-- `previous` is the hash of the account's previous row (32 zero bytes for its first row), so changing,
-- removing or re-ordering any row changes the hash of every later row of that account, and the newest
-- hash (user_billing.ledger_head) stands for the account's whole history. The fields are written in one
-- canonical text form whatever the caller passed: a record's text form (record_out quotes a value
-- holding a comma, quote, parenthesis or space, writes "" for an empty string and nothing for NULL, so
-- no description can shift a boundary), amounts cast to the column types (0.02 and 0.02000000 hash
-- alike), created_at as epoch seconds (independent of the session's TimeZone and DateStyle; no field
-- is of a type whose text form depends on a setting). One row expression, not a function per field:
-- the fast paths build it on every execution, so its size is what it costs. The id is not hashed: the
-- fast paths write the hash before the row's id exists; (user_id, version) fixes the row's place instead.
-- Every writer of a ledger row computes it: billing._append_ledger and the single-statement fast paths
-- of billing.charge and billing.settle (from the account row they lock, so a writer that waited for
-- the lock chains onto the row written by the one it waited for). billing.verify_ledger recomputes it
-- for every row; `tollgate ledger anchor` prints the heads to keep elsewhere.
-- SQL and STABLE (convert_to and the record's text form are), so it is inlined into the statements that call it.
-- Locks: none.  Errors: none.
CREATE FUNCTION billing._entry_hash(
    p_previous bytea, p_user_id uuid, p_version bigint, p_type text, p_currency text, p_amount_usd numeric,
    p_amount_uah numeric, p_exchange_rate numeric, p_balance_before_usd numeric, p_balance_after_usd numeric,
    p_request_id text, p_payment_provider text, p_payment_id text, p_idempotency_key text, p_refund_of bigint,
    p_actor text, p_description text, p_metadata jsonb, p_created_at timestamptz)
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT sha256(
        coalesce(p_previous, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
        || convert_to(ROW('tollgate-ledger-v1', p_user_id, p_version, p_type, p_currency,
                          p_amount_usd::numeric(20, 8), p_amount_uah::numeric(26, 2), p_exchange_rate::numeric(20, 8),
                          p_balance_before_usd::numeric(20, 8), p_balance_after_usd::numeric(20, 8), p_request_id,
                          p_payment_provider, p_payment_id, p_idempotency_key, p_refund_of, p_actor, p_description,
                          p_metadata, extract(epoch FROM p_created_at))::text, 'UTF8'))
$$;

-- billing._row_hash(previous, row) -> bytea
-- billing._entry_hash of a stored ledger row (billing.verify_ledger, the migration that chained the
-- rows written before the chain existed).
-- Locks: none.  Errors: none.
CREATE FUNCTION billing._row_hash(p_previous bytea, p_row billing.billing_transactions)
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT billing._entry_hash(
        p_previous, p_row.user_id, p_row.version, p_row.type, p_row.currency, p_row.amount_usd, p_row.amount_uah,
        p_row.exchange_rate, p_row.balance_before_usd, p_row.balance_after_usd, p_row.request_id,
        p_row.payment_provider, p_row.payment_id, p_row.idempotency_key, p_row.refund_of, p_row.actor,
        p_row.description, p_row.metadata, p_row.created_at)
$$;

ALTER TABLE billing.billing_transactions ADD COLUMN entry_hash bytea;
ALTER TABLE billing.user_billing ADD COLUMN ledger_head bytea;
ALTER FUNCTION billing._entry_hash(bytea, uuid, bigint, text, text, numeric, numeric, numeric, numeric, numeric, text,
                                   text, text, text, bigint, text, text, jsonb, timestamptz) OWNER TO tollgate_owner;
ALTER FUNCTION billing._row_hash(bytea, billing.billing_transactions) OWNER TO tollgate_owner;

-- Chain the rows written so far, account by account in version order. The ledger refuses UPDATE (a
-- trigger); this one-time backfill is the only write it is ever allowed, inside this migration's
-- transaction.
ALTER TABLE billing.billing_transactions DISABLE TRIGGER billing_transactions_append_only;
DO $$
DECLARE
    v_row  billing.billing_transactions;
    v_user uuid;
    v_head bytea;
BEGIN
    FOR v_row IN SELECT * FROM billing.billing_transactions t ORDER BY t.user_id, t.version LOOP
        IF v_user IS DISTINCT FROM v_row.user_id THEN
            IF v_user IS NOT NULL THEN
                UPDATE billing.user_billing SET ledger_head = v_head WHERE user_id = v_user;
            END IF;
            v_user := v_row.user_id;
            v_head := NULL;
        END IF;
        v_head := billing._row_hash(v_head, v_row);
        UPDATE billing.billing_transactions SET entry_hash = v_head WHERE id = v_row.id;
    END LOOP;
    IF v_user IS NOT NULL THEN
        UPDATE billing.user_billing SET ledger_head = v_head WHERE user_id = v_user;
    END IF;
END
$$;
ALTER TABLE billing.billing_transactions ENABLE TRIGGER billing_transactions_append_only;

-- No CHECK on the hashes' length: billing.verify_ledger recomputes every hash, which a value of another
-- length fails anyway, and each CHECK is re-read and prepared by every statement that writes the row
-- (measured: a tenth of what the chain cost billing.charge).
ALTER TABLE billing.billing_transactions ALTER COLUMN entry_hash SET NOT NULL;
