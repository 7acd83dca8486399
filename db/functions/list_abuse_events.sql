-- billing.list_abuse_events(user_id, rule, since, limit)
--     -> setof (id, created_at, rule, action, user_id, client_ip, detail, actor)
-- The audit trail of abuse rules, newest first: every refusal, limit, flag and pause a rule caused, and
-- every operator decision. Each filter is optional (NULL: all); `rule` matches a rule or a dotted prefix
-- ('payments' lists payments.*). At most `limit` rows (1..1000, default 100).
-- Locks: none.  Errors: BL009 invalid_argument (limit).
CREATE OR REPLACE FUNCTION billing.list_abuse_events(
    p_user_id uuid DEFAULT NULL, p_rule text DEFAULT NULL, p_since timestamptz DEFAULT NULL,
    p_limit integer DEFAULT 100,
    OUT id bigint, OUT created_at timestamptz, OUT rule text, OUT action text, OUT user_id uuid,
    OUT client_ip inet, OUT detail jsonb, OUT actor text)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 1000 THEN
        RAISE EXCEPTION 'Invalid argument: limit must be between 1 and 1000 (got %).', p_limit
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'limit', 'value', p_limit)::text;
    END IF;
    RETURN QUERY
        SELECT e.id, e.created_at, e.rule, e.action, e.user_id, e.client_ip, e.detail, e.actor
          FROM billing.abuse_events e
         WHERE (p_user_id IS NULL OR e.user_id = p_user_id)
           AND (p_rule IS NULL OR e.rule = p_rule OR e.rule LIKE p_rule || '.%')
           AND (p_since IS NULL OR e.created_at >= p_since)
         ORDER BY e.id DESC
         LIMIT p_limit;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.list_abuse_events(uuid, text, timestamptz, integer) TO tollgate_operator;
