-- billing.reap_expired_holds(max_accounts) -> integer
-- Operator sweep: marks every hold past its expiry 'expired' and frees its amount, account by account
-- (each account locked in user-id order, as billing._load_account does on every call anyway). Returns
-- how many holds it reaped. Bounded to max_accounts accounts per call (default 1000) so one sweep never
-- holds many locks for long: call it again while it returns > 0.
-- Locks: the user_billing rows of accounts with expired holds, in user_id order.
-- Errors: BL009 invalid_argument (max_accounts not positive).
CREATE OR REPLACE FUNCTION billing.reap_expired_holds(p_max_accounts integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
SET jit = off  -- JIT compiles big plans for seconds (seen on Debian's PostgreSQL 15); never worth it here
AS $$
DECLARE
    v_now     timestamptz;
    v_tz      text;
    v_user_id uuid;
    v_before  integer;
    v_after   integer;
    v_reaped  integer := 0;
BEGIN
    IF p_max_accounts IS NULL OR p_max_accounts < 1 THEN
        RAISE EXCEPTION 'Invalid argument: max_accounts must be a positive number.'
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'max_accounts')::text;
    END IF;
    SELECT coalesce(c.clock_override, now()), c.time_zone INTO v_now, v_tz FROM billing.config c;
    FOR v_user_id IN
        SELECT DISTINCT r.user_id FROM billing.reservations r
         WHERE r.status = 'held' AND r.expires_at <= v_now
         ORDER BY r.user_id
         LIMIT p_max_accounts
    LOOP
        PERFORM 1 FROM billing.user_billing b WHERE b.user_id = v_user_id FOR UPDATE;
        SELECT count(*) INTO v_before FROM billing.reservations r
         WHERE r.user_id = v_user_id AND r.status = 'held' AND r.expires_at <= v_now;
        PERFORM billing._load_account(v_user_id, v_tz, v_now);  -- reaps under the lock just taken
        SELECT count(*) INTO v_after FROM billing.reservations r
         WHERE r.user_id = v_user_id AND r.status = 'held' AND r.expires_at <= v_now;
        v_reaped := v_reaped + v_before - v_after;
    END LOOP;
    RETURN v_reaped;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.reap_expired_holds(integer) TO tollgate_metering, tollgate_operator;
