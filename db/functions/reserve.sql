-- billing.reserve(user_id, request_id, amount_usd, ttl) -> (reservation_id, request_id, status, amount_usd,
--                                                        expires_at, available_usd, replayed)
-- Pre-flight hold: before a tool runs, holds `amount_usd` (the price estimate) against the user's
-- available balance (balance - open holds) and against today's and this month's limits
-- (spend + open holds + amount), atomically. The hold lapses at now + ttl (default: billing.config
-- hold_ttl, 15 minutes) unless settled or released first; the next call on the account reaps it.
-- billing_enabled = false: nothing is held; status 'not_billed' and reservation_id NULL.
-- Idempotent on request_id: a replay with the same user and amount returns the original reservation
-- (whatever its status now, replayed = true); a different user or amount is a conflict, and so is a
-- request that was already charged directly (billing.charge).
-- Locks: the user's user_billing row.
-- Errors: BL006 invalid_amount, BL009 invalid_argument (request_id, ttl), BL007 unknown_user,
--         BL004 account_inactive, BL001 insufficient_funds, BL002 daily_limit_exceeded,
--         BL003 monthly_limit_exceeded, BL005 idempotency_conflict.
CREATE OR REPLACE FUNCTION billing.reserve(
    p_user_id uuid, p_request_id text, p_amount_usd numeric, p_ttl interval DEFAULT NULL,
    OUT reservation_id bigint, OUT request_id text, OUT status text, OUT amount_usd numeric,
    OUT expires_at timestamptz, OUT available_usd numeric, OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now      timestamptz;
    v_clock    timestamptz;
    v_tz       text;
    v_ttl      interval;
    v_account  billing.user_billing;
    v_existing billing.reservations;
BEGIN
    PERFORM billing._check_usd(p_amount_usd, 'amount_usd');
    PERFORM billing._check_text(p_request_id, 'request_id');
    IF p_ttl IS NOT NULL AND (p_ttl <= interval '0' OR p_ttl > interval '1 day') THEN
        RAISE EXCEPTION 'Invalid argument: ttl must be positive and at most 1 day, not %.', p_ttl
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'ttl', 'value', p_ttl::text)::text;
    END IF;
    SELECT c.clock_override, c.time_zone, coalesce(p_ttl, c.hold_ttl)
      INTO v_clock, v_tz, v_ttl FROM billing.config c;

    v_account := billing._load_account(p_user_id, v_tz, v_clock);
    v_now := v_account.updated_at;
    request_id := p_request_id;

    SELECT * INTO v_existing FROM billing.reservations r WHERE r.request_id = p_request_id;
    IF FOUND THEN
        IF v_existing.user_id <> p_user_id OR v_existing.amount_usd <> p_amount_usd THEN
            RAISE EXCEPTION 'Idempotency conflict: request % already holds % USD for another user or amount.',
                    p_request_id, billing._fmt_usd(v_existing.amount_usd)
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object(
                          'request_id', p_request_id, 'held_usd', v_existing.amount_usd,
                          'requested_usd', p_amount_usd, 'same_user', v_existing.user_id = p_user_id)::text,
                      HINT = 'Use a new request_id for a new call.';
        END IF;
        reservation_id := v_existing.id;
        status := v_existing.status;
        amount_usd := v_existing.amount_usd;
        expires_at := v_existing.expires_at;
        available_usd := v_account.balance_usd - v_account.held_usd;
        replayed := true;
        RETURN;
    END IF;

    replayed := false;
    IF EXISTS (SELECT FROM billing.billing_transactions t WHERE t.request_id = p_request_id AND t.type = 'charge') THEN
        RAISE EXCEPTION 'Idempotency conflict: request % was already charged, so a hold for it could never be settled.',
                p_request_id
            USING ERRCODE = 'BL005',
                  DETAIL = jsonb_build_object('request_id', p_request_id, 'already_charged', true)::text,
                  HINT = 'Use a new request_id for a new call.';
    END IF;
    IF NOT v_account.billing_enabled THEN
        status := 'not_billed';
        amount_usd := 0;
        available_usd := v_account.balance_usd - v_account.held_usd;
        RETURN;
    END IF;

    PERFORM billing._refuse_unaffordable(v_account, p_amount_usd, v_tz);

    INSERT INTO billing.reservations AS r (request_id, user_id, amount_usd, expires_at, created_at)
    VALUES (p_request_id, p_user_id, p_amount_usd, v_now + v_ttl, v_now)
    ON CONFLICT DO NOTHING
    RETURNING r.id, r.status, r.amount_usd, r.expires_at INTO reservation_id, status, amount_usd, expires_at;
    IF reservation_id IS NULL THEN
        RAISE EXCEPTION 'Idempotency conflict: request % is already reserved for another user.', p_request_id
            USING ERRCODE = 'BL005',
                  DETAIL = jsonb_build_object('request_id', p_request_id, 'same_user', false)::text,
                  HINT = 'Use a new request_id for a new call.';
    END IF;
    v_account.held_usd := v_account.held_usd + p_amount_usd;
    PERFORM billing._save_account(v_account);
    available_usd := v_account.balance_usd - v_account.held_usd;
END;
$$;
