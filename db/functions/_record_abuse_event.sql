-- billing._record_abuse_event(rule, action, user_id, client_ip, detail, actor) -> bigint
-- Appends one row to the audit trail of abuse rules (billing.abuse_events) and returns its id.
-- A rule that refuses must record the event in a transaction that commits: a function that refuses by
-- raising rolls back its own insert, so such functions answer a refusal as a result row instead.
-- Locks: none.  Errors: none (the table's checks reject an unknown action or a malformed rule name).
CREATE OR REPLACE FUNCTION billing._record_abuse_event(
    p_rule text, p_action text, p_user_id uuid, p_client_ip inet, p_detail jsonb DEFAULT '{}'::jsonb,
    p_actor text DEFAULT 'system')
RETURNS bigint
LANGUAGE sql
SET search_path = billing, pg_temp
AS $$
    INSERT INTO billing.abuse_events (rule, action, user_id, client_ip, detail, actor)
    VALUES (p_rule, p_action, p_user_id, p_client_ip, coalesce(p_detail, '{}'::jsonb), coalesce(p_actor, 'system'))
    RETURNING id
$$;
