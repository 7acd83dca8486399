-- Rolls back 0010: the abuse policy figures and the audit trail of abuse rules.
DROP FUNCTION IF EXISTS billing.list_abuse_events(uuid, text, timestamptz, integer);
DROP FUNCTION IF EXISTS billing.set_abuse_policy(text, numeric, text);
DROP FUNCTION IF EXISTS billing.list_abuse_policy();
DROP FUNCTION IF EXISTS billing._policy(text, numeric);
DROP FUNCTION IF EXISTS billing._record_abuse_event(text, text, uuid, inet, jsonb, text);
DROP TABLE billing.abuse_events;
DROP FUNCTION billing._refuse_audit_change();
DROP TABLE billing.abuse_policy;
