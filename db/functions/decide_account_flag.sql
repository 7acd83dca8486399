-- billing.decide_account_flag(flag_id, decision, actor, reason)
--     -> (id, user_id, rule, status, decided_at, decided_by, reason, account_active, replayed)
-- An operator's decision on an open flag (billing.list_account_flags), audited: the actor and a reason are
-- required, recorded on the flag and in a 'cleared' / 'confirmed' abuse event.
--   * 'clear': a false alarm. When the flag paused the account, the account is reactivated, unless another
--     open flag still holds it paused or a flag of the account was confirmed since this one was raised.
--     The same rule is not raised again for the activity already seen (billing._raise_account_flag).
--   * 'confirm': the suspicion holds. The account stays (or is now) deactivated; reactivating it later is
--     an explicit operator act (billing.update_settings, is_active).
-- Idempotent: the same decision on a flag already so decided returns it as it was decided (replayed =
-- true, nothing written, whatever actor and reason are given); the other decision is refused (BL012).
-- Locks: the flag row, then the account's user_billing row (the order billing._raise_account_flag takes).
-- Errors: BL009 invalid_argument (decision, actor, reason), BL031 unknown_flag, BL012 invalid_state.
CREATE OR REPLACE FUNCTION billing.decide_account_flag(
    p_flag_id bigint, p_decision text, p_actor text, p_reason text,
    OUT id bigint, OUT user_id uuid, OUT rule text, OUT status text, OUT decided_at timestamptz,
    OUT decided_by text, OUT reason text, OUT account_active boolean, OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_flag    billing.account_flags;
    v_status  text;
    v_now     timestamptz;
    v_active  boolean;
    v_changed boolean := false;
BEGIN
    IF p_decision IS NULL OR p_decision NOT IN ('clear', 'confirm') THEN
        RAISE EXCEPTION 'Invalid argument: decision must be clear or confirm, not %.', coalesce(p_decision, 'NULL')
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'decision', 'value', p_decision)::text;
    END IF;
    PERFORM billing._check_text(p_actor, 'actor', 200);
    PERFORM billing._check_text(p_reason, 'reason', 1000, true, true);
    v_status := CASE p_decision WHEN 'clear' THEN 'cleared' ELSE 'confirmed' END;

    SELECT * INTO v_flag FROM billing.account_flags f WHERE f.id = p_flag_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown flag: there is no account flag %.', coalesce(p_flag_id::text, 'NULL')
            USING ERRCODE = 'BL031', DETAIL = jsonb_build_object('flag_id', p_flag_id)::text,
                  HINT = 'List the flags with billing.list_account_flags (tollgate abuse flags list).';
    END IF;
    IF v_flag.status <> 'open' THEN
        IF v_flag.status <> v_status THEN
            RAISE EXCEPTION 'Invalid state: flag % was already % by % at %.',
                    p_flag_id, v_flag.status, v_flag.decided_by, v_flag.decided_at
                USING ERRCODE = 'BL012',
                      DETAIL = jsonb_build_object('flag_id', p_flag_id, 'status', v_flag.status,
                                                  'decided_by', v_flag.decided_by,
                                                  'decided_at', v_flag.decided_at)::text;
        END IF;
        SELECT b.is_active INTO v_active FROM billing.user_billing b WHERE b.user_id = v_flag.user_id;
        replayed := true;
    ELSE
        SELECT coalesce(c.clock_override, now()) INTO v_now FROM billing.config c;
        SELECT b.is_active INTO v_active FROM billing.user_billing b WHERE b.user_id = v_flag.user_id FOR UPDATE;
        UPDATE billing.account_flags f
           SET status = v_status, decided_at = v_now, decided_by = p_actor, reason = p_reason
         WHERE f.id = p_flag_id
        RETURNING * INTO v_flag;
        IF v_status = 'cleared' THEN
            IF v_flag.paused AND NOT v_active
               AND NOT EXISTS (SELECT FROM billing.account_flags o
                                WHERE o.user_id = v_flag.user_id AND o.id <> v_flag.id
                                  AND ((o.status = 'open' AND o.paused)
                                       OR (o.status = 'confirmed' AND o.decided_at >= v_flag.raised_at))) THEN
                v_active := true;
                v_changed := true;
            END IF;
        ELSIF v_active THEN
            v_active := false;
            v_changed := true;
        END IF;
        IF v_changed THEN
            UPDATE billing.user_billing b SET is_active = v_active, updated_at = greatest(b.updated_at, now())
             WHERE b.user_id = v_flag.user_id;
        END IF;
        PERFORM billing._record_abuse_event(
            v_flag.rule, v_status, v_flag.user_id, NULL,
            jsonb_build_object('flag_id', v_flag.id, 'reason', p_reason, 'account_active', v_active,
                               'account_changed', v_changed),
            p_actor);
        replayed := false;
    END IF;
    id := v_flag.id;
    user_id := v_flag.user_id;
    rule := v_flag.rule;
    status := v_flag.status;
    decided_at := v_flag.decided_at;
    decided_by := v_flag.decided_by;
    reason := v_flag.reason;
    account_active := v_active;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.decide_account_flag(bigint, text, text, text) TO tollgate_operator;
