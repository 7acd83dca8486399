-- billing.authenticate_api_key(key_hash) -> setof (name, user_id, revoked, key_hash)
-- The key whose SHA-256 digest is `key_hash`: its name (the client key of its calls), the user it
-- bills (NULL: tracked, not charged), whether it was revoked, and the stored digest (the caller
-- compares it with hmac.compare_digest). No row when the digest is unknown. A revoked key is still
-- returned, so the gateway can say "revoked" rather than "unknown".
-- On every authenticated request's path: one unique-index lookup, no write, no lock.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing.authenticate_api_key(
    p_key_hash bytea, OUT name text, OUT user_id uuid, OUT revoked boolean, OUT key_hash bytea)
RETURNS SETOF record
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
    SELECT k.name, k.user_id, k.revoked_at IS NOT NULL, k.key_hash
      FROM billing.api_keys k
     WHERE k.key_hash = p_key_hash
$$;

GRANT EXECUTE ON FUNCTION billing.authenticate_api_key(bytea) TO tollgate_metering;
