-- billing.ledger_heads() -> setof (user_id, version, ledger_head)
-- The head of every account's hash chain: the version and hash (hex) of its newest ledger row, from
-- user_billing alone (no ledger scan). `tollgate ledger anchor` prints these so an operator can keep
-- them somewhere the database's administrators cannot write (a printout, another system, a signed
-- commit); billing.verify_anchors later proves that no row up to an anchored head was rewritten.
-- Accounts without ledger rows have no head and are left out. Ordered by user id.
-- Locks: none (one snapshot).  Errors: none.
CREATE OR REPLACE FUNCTION billing.ledger_heads()
RETURNS TABLE (user_id uuid, version bigint, ledger_head text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
    SELECT b.user_id, b.version, encode(b.ledger_head, 'hex')
      FROM billing.user_billing b
     WHERE b.version > 0
     ORDER BY b.user_id
$$;

GRANT EXECUTE ON FUNCTION billing.ledger_heads() TO tollgate_operator;
