-- billing.prune_anonymous_usage(before) -> bigint
-- Retention of the anonymous aggregate: deletes the billing.anonymous_usage rows of days before `before`
-- and answers how many. The table is bounded by days x tools x client networks; pruning bounds the days
-- (`tollgate ledger prune-anonymous --keep-days N`, e.g. from a daily timer). Today's and later rows are
-- never deleted (they hold the running quotas): `before` is capped at today in the configured time zone.
-- Locks: the deleted rows.  Errors: BL009 invalid_argument (before missing).
CREATE OR REPLACE FUNCTION billing.prune_anonymous_usage(p_before date)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_today   date;
    v_deleted bigint;
BEGIN
    IF p_before IS NULL OR NOT isfinite(p_before) THEN
        RAISE EXCEPTION 'Invalid argument: before must be a date (rows of earlier days are deleted), not %.',
                coalesce(p_before::text, 'NULL')
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'before')::text;
    END IF;
    SELECT billing._local_day(coalesce(c.clock_override, now()), c.time_zone) INTO v_today FROM billing.config c;
    DELETE FROM billing.anonymous_usage u WHERE u.day < least(p_before, v_today);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.prune_anonymous_usage(date) TO tollgate_operator;
