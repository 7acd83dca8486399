-- billing.expire_payment_intents(grace) -> integer
-- Marks open intents (created or pending) whose expiry passed more than `grace` ago as 'expired' and
-- returns how many. `tollgate payments reconcile` asks the provider about each open intent first and
-- calls this for the rest; a payment the provider reports later is still credited.
-- Locks: the rows it expires (skipping rows another transaction holds: they are busy being paid).
-- Errors: BL009 invalid_argument (grace negative or over a year).
CREATE OR REPLACE FUNCTION billing.expire_payment_intents(p_grace interval DEFAULT interval '0')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now   timestamptz := coalesce((SELECT c.clock_override FROM billing.config c), clock_timestamp());
    v_count integer;
BEGIN
    IF p_grace IS NULL OR p_grace < interval '0' OR p_grace > interval '366 days' THEN
        RAISE EXCEPTION 'Invalid argument: grace must be from zero to a year, not %.', coalesce(p_grace::text, 'NULL')
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'grace')::text;
    END IF;
    WITH due AS (
        SELECT i.id FROM billing.payment_intents i
         WHERE i.status IN ('created', 'pending') AND i.expires_at + p_grace < v_now
           FOR UPDATE SKIP LOCKED
    )
    UPDATE billing.payment_intents i SET status = 'expired', updated_at = v_now
      FROM due WHERE i.id = due.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.expire_payment_intents(interval) TO tollgate_payments;
