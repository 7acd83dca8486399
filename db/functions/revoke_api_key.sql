-- billing.revoke_api_key(name) -> (name, revoked_at, replayed)
-- Revokes an API key: from then on billing.authenticate_api_key answers revoked = true for it and the
-- gateway refuses it. The row stays (its name is never reused). Idempotent: revoking a revoked key
-- returns the first revoked_at with replayed = true.
-- Locks: the api_keys row.  Errors: BL009 invalid_argument, BL015 unknown_api_key.
CREATE OR REPLACE FUNCTION billing.revoke_api_key(
    p_name text, OUT name text, OUT revoked_at timestamptz, OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
BEGIN
    PERFORM billing._check_text(p_name, 'name', 100);
    name := p_name;
    UPDATE billing.api_keys k SET revoked_at = greatest(now(), k.created_at)
     WHERE k.name = p_name AND k.revoked_at IS NULL
    RETURNING k.revoked_at INTO revoked_at;
    IF FOUND THEN
        replayed := false;
        RETURN;
    END IF;
    SELECT k.revoked_at INTO revoked_at FROM billing.api_keys k WHERE k.name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown API key: no API key named %.', quote_literal(p_name)
            USING ERRCODE = 'BL015',
                  DETAIL = jsonb_build_object('name', p_name)::text,
                  HINT = 'List the keys with billing.list_api_keys() (`tollgate apikey list`).';
    END IF;
    replayed := true;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.revoke_api_key(text) TO tollgate_operator;
