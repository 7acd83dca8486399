-- billing._raise_account_flag(user_id, rule, detail, pause, now, quiet) -> (flag_id, paused)
-- Raises a suspicion on an account (billing.account_flags), at most one open per account and rule: when
-- one is open already, or one of this rule was cleared less than `quiet` ago (an operator looked at the
-- same activity: the next window decides again), nothing is written and flag_id is NULL.
-- A raised flag writes a 'flagged' abuse event (rule, the figures of `detail`, the flag's id). With
-- `pause`, it also deactivates the account (is_active = false) and writes a 'paused' event; an account
-- already paused by another open flag stays paused and this flag is marked paused too, so that clearing
-- one of them does not reactivate it while the other is open. An account an operator deactivated is left
-- alone (not marked paused: clearing the flag will not reactivate it).
-- Locks: the new flag (its unique index), then the user_billing row when pausing. billing.decide_account_flag
-- takes the same order (flag, then account), and no money function locks a flag.
-- Errors: none of its own.
CREATE OR REPLACE FUNCTION billing._raise_account_flag(
    p_user_id uuid, p_rule text, p_detail jsonb, p_pause boolean, p_now timestamptz, p_quiet interval,
    OUT flag_id bigint, OUT paused boolean)
LANGUAGE plpgsql
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_active boolean;
BEGIN
    paused := false;
    IF EXISTS (SELECT FROM billing.account_flags f
                WHERE f.user_id = p_user_id AND f.rule = p_rule
                  AND (f.status = 'open' OR (f.status = 'cleared' AND f.decided_at > p_now - p_quiet))) THEN
        RETURN;
    END IF;
    INSERT INTO billing.account_flags AS f (user_id, rule, raised_at, detail)
    VALUES (p_user_id, p_rule, p_now, p_detail)
    ON CONFLICT (user_id, rule) WHERE status = 'open' DO NOTHING
    RETURNING f.id INTO flag_id;
    IF flag_id IS NULL THEN
        RETURN;
    END IF;
    PERFORM billing._record_abuse_event(p_rule, 'flagged', p_user_id, NULL,
                                        p_detail || jsonb_build_object('flag_id', flag_id, 'pause', p_pause));
    IF NOT p_pause THEN
        RETURN;
    END IF;
    SELECT b.is_active INTO v_active FROM billing.user_billing b WHERE b.user_id = p_user_id FOR UPDATE;
    IF v_active THEN
        UPDATE billing.user_billing b SET is_active = false, updated_at = greatest(b.updated_at, now())
         WHERE b.user_id = p_user_id;
        paused := true;
        PERFORM billing._record_abuse_event(p_rule, 'paused', p_user_id, NULL,
                                            jsonb_build_object('flag_id', flag_id));
    ELSIF EXISTS (SELECT FROM billing.account_flags f
                   WHERE f.user_id = p_user_id AND f.status = 'open' AND f.paused AND f.id <> flag_id) THEN
        paused := true;
    END IF;
    IF paused THEN
        UPDATE billing.account_flags f SET paused = true WHERE f.id = flag_id;
    END IF;
END;
$$;
