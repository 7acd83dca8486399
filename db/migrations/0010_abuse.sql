-- depends: 0009_ledger_chain
-- Abuse controls (issue 14): the rules' figures and the audit trail of every rule that fires.
--  * abuse_policy: one row per named figure of a rule that the ledger enforces itself (payment fraud caps,
--    cooling-off, velocity thresholds, refund caps). The gateway writes the figures of its configuration
--    ([abuse] in tollgate.toml, TOLLGATE_ABUSE_*) at start-up through billing.set_abuse_policy; a program
--    in another language calling the same functions is held to the same figures. A missing row means the
--    rule's documented default (billing._policy).
--  * abuse_events: append-only; one row each time a rule refuses, limits, flags or pauses, and each time
--    an operator clears or confirms one. Users see the reason in the answer; operators list the rows
--    (billing.list_abuse_events, `tollgate abuse events`, GET /api/admin/abuse/events).

CREATE TABLE billing.abuse_policy (
    name        text PRIMARY KEY CONSTRAINT abuse_policy_name_format CHECK (name ~ '^[a-z][a-z0-9_.]{0,62}$'),
    value       numeric NOT NULL CONSTRAINT abuse_policy_value_range CHECK (value >= 0 AND value < 1000000000000),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL
);

ALTER TABLE billing.abuse_policy OWNER TO tollgate_owner;

CREATE TABLE billing.abuse_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The rule, dotted: payments.intents_per_hour, velocity.spend_spike, refunds.per_account_cap, ...
    rule        text NOT NULL CONSTRAINT abuse_events_rule_format CHECK (rule ~ '^[a-z][a-z0-9_.]{0,62}$'),
    -- What happened: refused (the request was not done), limited (done in part, e.g. credit cooling),
    -- flagged, paused (account deactivated), cleared / confirmed (an operator's decision on a flag).
    action      text NOT NULL CONSTRAINT abuse_events_action_known
                CHECK (action IN ('refused', 'limited', 'flagged', 'paused', 'cleared', 'confirmed')),
    user_id     uuid REFERENCES billing.users (id),
    client_ip   inet,
    -- The figures: the limit, the count or amount seen, the window, what the user was told.
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    actor       text NOT NULL DEFAULT 'system'
);
CREATE INDEX abuse_events_user ON billing.abuse_events (user_id, created_at) WHERE user_id IS NOT NULL;
CREATE INDEX abuse_events_ip ON billing.abuse_events (client_ip, created_at) WHERE client_ip IS NOT NULL;
CREATE INDEX abuse_events_rule ON billing.abuse_events (rule, created_at);
ALTER TABLE billing.abuse_events OWNER TO tollgate_owner;

-- The audit trail is append-only, like the ledger: a decision on a flag is a new row.
CREATE FUNCTION billing._refuse_audit_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'BL090', HINT = 'Record a decision as a new row.';
END;
$$;
CREATE TRIGGER abuse_events_append_only
    BEFORE UPDATE OR DELETE ON billing.abuse_events
    FOR EACH ROW EXECUTE FUNCTION billing._refuse_audit_change();
CREATE TRIGGER abuse_events_no_truncate
    BEFORE TRUNCATE ON billing.abuse_events
    FOR EACH STATEMENT EXECUTE FUNCTION billing._refuse_audit_change();
ALTER FUNCTION billing._refuse_audit_change() OWNER TO tollgate_owner;
