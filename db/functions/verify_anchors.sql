-- billing.verify_anchors(user_ids, versions, hashes) -> setof (user_id, version, problem)
-- Checks heads anchored earlier (billing.ledger_heads, `tollgate ledger anchor`) against the ledger:
-- the row of each anchored (user, version) must still carry the anchored hash. Its hash covers the
-- row and, through the chain, every earlier row of the account, so together with an empty
-- billing.verify_ledger (which recomputes the chain from there to the account's head) this proves that
-- nothing up to the anchor was changed, removed or re-ordered, even by someone who recomputed the
-- hashes. Rows appended after the anchor are not covered by it: anchor regularly.
-- One row per anchor that does not hold: problem 'missing' (no such row: the history was cut) or
-- 'rewritten' (the row's hash differs). Empty when every anchor holds.
-- The arrays are parallel (the n-th user, version and 32-byte hash form one anchor).
-- Locks: none.  Errors: BL009 invalid_argument (arrays of different lengths, a hash not 32 bytes).
CREATE OR REPLACE FUNCTION billing.verify_anchors(p_user_ids uuid[], p_versions bigint[], p_hashes bytea[])
RETURNS TABLE (user_id uuid, version bigint, problem text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
BEGIN
    IF p_user_ids IS NULL OR p_versions IS NULL OR p_hashes IS NULL
       OR cardinality(p_user_ids) <> cardinality(p_versions) OR cardinality(p_user_ids) <> cardinality(p_hashes) THEN
        RAISE EXCEPTION 'Invalid argument: user_ids, versions and hashes must be arrays of the same length.'
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'user_ids')::text;
    END IF;
    IF EXISTS (SELECT FROM unnest(p_hashes) h WHERE h IS NULL OR octet_length(h) <> 32) THEN
        RAISE EXCEPTION 'Invalid argument: every anchored hash is 32 bytes (SHA-256).'
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'hashes')::text;
    END IF;
    RETURN QUERY
        SELECT a.user_id, a.version, CASE WHEN t.id IS NULL THEN 'missing' ELSE 'rewritten' END
          FROM unnest(p_user_ids, p_versions, p_hashes) AS a(user_id, version, hash)
          LEFT JOIN billing.billing_transactions t ON t.user_id = a.user_id AND t.version = a.version
         WHERE t.entry_hash IS DISTINCT FROM a.hash
         ORDER BY a.user_id, a.version;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.verify_anchors(uuid[], bigint[], bytea[]) TO tollgate_operator;
