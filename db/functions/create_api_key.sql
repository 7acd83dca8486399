-- billing.create_api_key(name, key_hash, key_prefix, user_id) -> (id, name, key_prefix, user_id, created_at)
-- Registers an API key by its SHA-256 digest (the key itself is never sent to the database; see
-- api/apikeys.py). `name` (1..100 letters, digits, '.', '_', '-') identifies the client: it is the
-- client_key recorded on the key's calls. With user_id, the key's calls bill that user; without, they
-- are tracked, not charged. `key_prefix` (at most 16 characters, optional) is shown in listings.
-- Not idempotent on purpose: a name or a digest is registered once, ever (revoked keys keep theirs).
-- Locks: none (the unique indexes on name and key_hash arbitrate concurrent creations).
-- Errors: BL009 invalid_argument (malformed name, hash or prefix; name taken; key already registered),
--         BL007 unknown_user.
CREATE OR REPLACE FUNCTION billing.create_api_key(
    p_name text, p_key_hash bytea, p_key_prefix text, p_user_id uuid DEFAULT NULL,
    OUT id bigint, OUT name text, OUT key_prefix text, OUT user_id uuid, OUT created_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
BEGIN
    PERFORM billing._check_text(p_name, 'name', 100);
    IF p_name !~ '^[A-Za-z0-9._-]+$' THEN
        RAISE EXCEPTION 'Invalid argument: name may only contain letters, digits, ".", "_" and "-" (got %).', quote_literal(p_name)
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'name', 'value', p_name)::text;
    END IF;
    IF p_key_hash IS NULL OR octet_length(p_key_hash) <> 32 THEN
        RAISE EXCEPTION 'Invalid argument: key_hash must be the 32-byte SHA-256 digest of the key (got % bytes).',
                coalesce(octet_length(p_key_hash), 0)
            USING ERRCODE = 'BL009',
                  DETAIL = jsonb_build_object('field', 'key_hash', 'length', octet_length(p_key_hash))::text,
                  HINT = 'Send sha256(key), not the key itself.';
    END IF;
    -- Optional: a blank prefix is no prefix (NULL), as for every optional identifier.
    p_key_prefix := billing._check_text(p_key_prefix, 'key_prefix', 16, false);
    IF p_user_id IS NOT NULL AND NOT EXISTS (SELECT FROM billing.users u WHERE u.id = p_user_id) THEN
        RAISE EXCEPTION 'Unknown user: no billing account for user id %.', p_user_id
            USING ERRCODE = 'BL007',
                  DETAIL = jsonb_build_object('user_id', p_user_id)::text,
                  HINT = 'Create the account first with billing.ensure_account(external_id).';
    END IF;

    INSERT INTO billing.api_keys AS k (name, key_hash, key_prefix, user_id)
    VALUES (p_name, p_key_hash, p_key_prefix, p_user_id)
    ON CONFLICT DO NOTHING
    RETURNING k.id, k.name, k.key_prefix, k.user_id, k.created_at
         INTO id, name, key_prefix, user_id, created_at;
    IF id IS NOT NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM billing.api_keys k WHERE k.name = p_name) THEN
        RAISE EXCEPTION 'Invalid argument: an API key named % already exists (names are never reused, even after revocation).',
                quote_literal(p_name)
            USING ERRCODE = 'BL009',
                  DETAIL = jsonb_build_object('field', 'name', 'value', p_name, 'taken', true)::text,
                  HINT = 'Choose another name.';
    END IF;
    -- The digest is taken: the same key was registered under another name. Which one is not said.
    RAISE EXCEPTION 'Invalid argument: this key is already registered under another name.'
        USING ERRCODE = 'BL009',
              DETAIL = jsonb_build_object('field', 'key_hash', 'taken', true)::text,
              HINT = 'Generate a new key.';
END;
$$;

GRANT EXECUTE ON FUNCTION billing.create_api_key(text, bytea, text, uuid) TO tollgate_operator;
