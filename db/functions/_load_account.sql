-- billing._load_account(user_id, time_zone, clock, for_update) -> billing.user_billing
-- Returns the user's user_billing row brought up to date in memory: the day and month counters roll
-- over lazily when the current time (in the configured time zone) is past the window they belong to,
-- and holds that have expired stop counting.
-- "The current time" is read AFTER the row lock is granted (clock_timestamp(), or the test clock,
-- billing.config.clock_override, re-read under the lock when `clock` is not NULL) and never before the
-- account's last change (billing._effective_now), so successive holders of one account's lock see non-decreasing times and
-- a transaction that waited across midnight cannot roll the windows back. It is returned in the row's updated_at field: callers use that value as "now" for everything
-- they write (ledger created_at, hold expiry), which keeps the counters and the ledger in step.
-- With for_update (every money-moving function), the row is locked (SELECT ... FOR UPDATE) for the
-- rest of the transaction, so all work on one account is serialised, and expired holds are reaped:
-- their reservations marked 'expired', held_usd written down and holds_expire_at recomputed at once
-- (so the fast paths, which only run while no hold can have expired, run again). The caller changes the
-- returned row and writes it back with billing._save_account.
-- A new payer's cooling credit (cooling_usd) whose cooling_until has passed stops counting the same way
-- (written down with for_update).
-- Without for_update (read-only answers), nothing is locked or written.
-- Locks: user_billing row of the user and the reservations it reaps (for_update only).
-- Errors: BL007 unknown_user.
CREATE OR REPLACE FUNCTION billing._load_account(
    p_user_id uuid, p_time_zone text, p_clock timestamptz DEFAULT NULL, p_for_update boolean DEFAULT true)
RETURNS billing.user_billing
LANGUAGE plpgsql
AS $$
DECLARE
    v_account billing.user_billing;
    v_now     timestamptz;
    v_expired numeric;
BEGIN
    IF p_for_update THEN
        SELECT * INTO v_account FROM billing.user_billing WHERE user_id = p_user_id FOR UPDATE;
    ELSE
        SELECT * INTO v_account FROM billing.user_billing WHERE user_id = p_user_id;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown user: no billing account for user id %.', coalesce(p_user_id::text, 'NULL')
            USING ERRCODE = 'BL007',
                  DETAIL = jsonb_build_object('user_id', p_user_id)::text,
                  HINT = 'Create the account first with billing.ensure_account(external_id).';
    END IF;
    -- The test clock too is read once the lock is held: `p_clock` was read before the lock, and a test
    -- that moved the clock meanwhile (a call that waited across midnight) must not act at the old time
    -- after an account already acted at the new one.
    IF p_for_update AND p_clock IS NOT NULL THEN
        SELECT coalesce(c.clock_override, p_clock) INTO p_clock FROM billing.config c;
    END IF;
    v_now := billing._effective_now(p_clock, clock_timestamp(), v_account.updated_at);
    v_account.updated_at := v_now;
    -- The windows roll over by the rule the fast paths inline (billing._window_spend).
    v_account.day_spent_usd := billing._window_spend(
        v_account.day_spent_usd, v_account.day_start, billing._local_day(v_now, p_time_zone));
    v_account.day_start := billing._local_day(v_now, p_time_zone);
    v_account.month_spent_usd := billing._window_spend(
        v_account.month_spent_usd, v_account.month_start, billing._local_month(v_now, p_time_zone));
    v_account.month_start := billing._local_month(v_now, p_time_zone);
    -- A new payer's cooling credit (docs/abuse.md, cooling-off) is spendable once cooling_until has passed:
    -- it stops counting, and (locked) is written down, so the fast paths, which count the stored figure,
    -- run again.
    IF v_account.cooling_usd > 0 AND v_account.cooling_until <= v_now THEN
        v_account.cooling_usd := 0;
        v_account.cooling_credit_usd := 0;
        IF p_for_update THEN
            UPDATE billing.user_billing SET cooling_usd = 0, cooling_credit_usd = 0 WHERE user_id = p_user_id;
        END IF;
    END IF;
    -- Holds can only have expired once the account's bound (holds_expire_at) has passed.
    IF v_account.held_usd > 0 AND (v_account.holds_expire_at IS NULL OR v_account.holds_expire_at <= v_now) THEN
        IF p_for_update THEN
            WITH expired AS (
                UPDATE billing.reservations
                   SET status = 'expired', resolved_at = v_now
                 WHERE user_id = p_user_id AND status = 'held' AND expires_at <= v_now
                RETURNING amount_usd
            )
            SELECT coalesce(sum(amount_usd), 0) INTO v_expired FROM expired;
            -- The bound becomes exact again: the earliest expiry of the holds still open.
            SELECT min(r.expires_at) INTO v_account.holds_expire_at
              FROM billing.reservations r WHERE r.user_id = p_user_id AND r.status = 'held';
            UPDATE billing.user_billing
               SET held_usd = held_usd - v_expired, holds_expire_at = v_account.holds_expire_at
             WHERE user_id = p_user_id;
        ELSE
            SELECT coalesce(sum(amount_usd), 0) INTO v_expired
              FROM billing.reservations
             WHERE user_id = p_user_id AND status = 'held' AND expires_at <= v_now;
        END IF;
        v_account.held_usd := v_account.held_usd - v_expired;
    END IF;
    RETURN v_account;
END;
$$;
