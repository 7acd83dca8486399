-- billing.list_api_keys() -> setof (id, name, key_prefix, user_id, created_at, revoked_at)
-- Every API key, revoked ones included, in creation order. Never the digests.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing.list_api_keys(
    OUT id bigint, OUT name text, OUT key_prefix text, OUT user_id uuid, OUT created_at timestamptz,
    OUT revoked_at timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
    SELECT k.id, k.name, k.key_prefix, k.user_id, k.created_at, k.revoked_at
      FROM billing.api_keys k
     ORDER BY k.id
$$;

GRANT EXECUTE ON FUNCTION billing.list_api_keys() TO tollgate_operator;
