-- Rolls back 0009: the ledger's hash chain. The rows keep everything else; the functions that write and
-- check the chain (db/functions) fail until the next `tollgate migrate` of a checkout without it.
DROP FUNCTION IF EXISTS billing.ledger_heads();
DROP FUNCTION IF EXISTS billing.verify_anchors(uuid[], bigint[], bytea[]);
ALTER TABLE billing.user_billing DROP COLUMN ledger_head;
ALTER TABLE billing.billing_transactions DROP COLUMN entry_hash;
DROP FUNCTION billing._row_hash(bytea, billing.billing_transactions);
DROP FUNCTION billing._entry_hash(bytea, uuid, bigint, text, text, numeric, numeric, numeric, numeric, numeric, text,
                                  text, text, text, bigint, text, text, jsonb, timestamptz);
