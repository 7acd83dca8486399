-- billing.list_account_flags(user_id, status, limit)
--     -> setof (id, user_id, external_id, rule, status, raised_at, detail, paused, decided_at, decided_by, reason,
--               account_active)
-- The suspicions raised on accounts (billing.detect_velocity), newest first, for an operator to review:
-- the figures that raised each one, whether it paused the account, the decision if any, and whether the
-- account is active now. Filters: one user (NULL: all), a status ('open' by default; 'cleared',
-- 'confirmed', or NULL for all); at most `limit` rows (1..1000, default 100).
-- Locks: none.  Errors: BL009 invalid_argument (status, limit).
CREATE OR REPLACE FUNCTION billing.list_account_flags(
    p_user_id uuid DEFAULT NULL, p_status text DEFAULT 'open', p_limit integer DEFAULT 100,
    OUT id bigint, OUT user_id uuid, OUT external_id text, OUT rule text, OUT status text,
    OUT raised_at timestamptz, OUT detail jsonb, OUT paused boolean, OUT decided_at timestamptz,
    OUT decided_by text, OUT reason text, OUT account_active boolean)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
BEGIN
    IF p_status IS NOT NULL AND p_status NOT IN ('open', 'cleared', 'confirmed') THEN
        RAISE EXCEPTION 'Invalid argument: status must be open, cleared or confirmed (or NULL for all), not %.', p_status
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'status', 'value', p_status)::text;
    END IF;
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 1000 THEN
        RAISE EXCEPTION 'Invalid argument: limit must be between 1 and 1000 (got %).', p_limit
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'limit', 'value', p_limit)::text;
    END IF;
    RETURN QUERY
        SELECT f.id, f.user_id, u.external_id, f.rule, f.status, f.raised_at, f.detail, f.paused, f.decided_at,
               f.decided_by, f.reason, b.is_active
          FROM billing.account_flags f
          JOIN billing.users u ON u.id = f.user_id
          JOIN billing.user_billing b ON b.user_id = f.user_id
         WHERE (p_user_id IS NULL OR f.user_id = p_user_id)
           AND (p_status IS NULL OR f.status = p_status)
         ORDER BY f.id DESC
         LIMIT p_limit;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.list_account_flags(uuid, text, integer) TO tollgate_operator;
