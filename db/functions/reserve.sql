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
-- Fast path: one statement does the usual case; everything else takes the exact path, which locks
-- first and then decides.
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
    v_moved    boolean;
BEGIN
    -- Arguments: a cheap test first; the helpers raise the precise error.
    IF p_amount_usd IS NULL OR p_amount_usd = 'NaN' OR p_amount_usd <= 0 OR p_amount_usd >= 1e12
       OR p_amount_usd <> round(p_amount_usd, 8) THEN
        PERFORM billing._check_usd(p_amount_usd, 'amount_usd');
    END IF;
    IF p_request_id IS NULL OR length(p_request_id) > 200 OR btrim(p_request_id) = '' OR p_request_id ~ '[[:cntrl:]]' THEN
        PERFORM billing._check_text(p_request_id, 'request_id');
    END IF;
    IF p_ttl IS NOT NULL AND (p_ttl <= interval '0' OR p_ttl > interval '1 day') THEN
        RAISE EXCEPTION 'Invalid argument: ttl must be positive and at most 1 day, not %.', p_ttl
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'ttl', 'value', p_ttl::text)::text;
    END IF;

    -- Fast path, one statement: the usual hold on an active, billed account with room for it (open
    -- holds count) for a new request, when no open hold can have expired yet (holds_expire_at).
    -- Anything else falls through to the exact path below, which reaps expired holds, answers replays
    -- and raises refusals.
    -- The request-id probes run before the locking UPDATE, not inside it (there PostgreSQL would
    -- re-check them while holding a contended lock); a racing duplicate is caught by ON CONFLICT.
    -- The test-only switch tollgate.force_exact_path = on skips it (db/README.md).
    IF current_setting('tollgate.force_exact_path', true) IS DISTINCT FROM 'on'
       AND NOT EXISTS (SELECT FROM billing.reservations r WHERE r.request_id = p_request_id)
       AND NOT EXISTS (SELECT FROM billing.billing_transactions t WHERE t.request_id = p_request_id AND t.type = 'charge') THEN
        WITH cfg AS (
            SELECT c.time_zone, c.hold_ttl, c.clock_override, coalesce(c.clock_override, clock_timestamp()) AS clock
              FROM billing.config c
        ), moved AS (
            UPDATE billing.user_billing b
               SET held_usd        = b.held_usd + p_amount_usd,
                   holds_expire_at = CASE WHEN b.held_usd = 0 THEN billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at) + coalesce(p_ttl, cfg.hold_ttl)
                                          ELSE least(b.holds_expire_at, billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at) + coalesce(p_ttl, cfg.hold_ttl)) END,
                   -- The day and month windows roll over to those of the effective time.
                   day_spent_usd   = billing._window_spend(b.day_spent_usd, b.day_start, billing._local_day(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone)),
                   day_start       = billing._local_day(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone),
                   month_spent_usd = billing._window_spend(b.month_spent_usd, b.month_start, billing._local_month(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone)),
                   month_start     = billing._local_month(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone),
                   updated_at      = billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at)
              FROM cfg
             WHERE b.user_id = p_user_id AND b.is_active AND b.billing_enabled
               -- A test clock read before the lock and older than the account's last change: exact path.
               AND (cfg.clock_override IS NULL OR cfg.clock_override >= b.updated_at)
               AND (b.held_usd = 0 OR b.holds_expire_at > billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at))
               AND billing._available_usd(b.balance_usd, b.held_usd, b.cooling_usd) >= p_amount_usd
               AND billing._within_limits(
                       b.limit_override,
                       b.daily_limit_usd, billing._window_spend(b.day_spent_usd, b.day_start, billing._local_day(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone)),
                       b.monthly_limit_usd, billing._window_spend(b.month_spent_usd, b.month_start, billing._local_month(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone)),
                       b.held_usd, p_amount_usd)
            RETURNING billing._available_usd(b.balance_usd, b.held_usd, b.cooling_usd) AS available_usd, b.updated_at, coalesce(p_ttl, cfg.hold_ttl) AS ttl
        ), held AS (
            INSERT INTO billing.reservations AS r (request_id, user_id, amount_usd, expires_at, created_at)
            SELECT p_request_id, p_user_id, p_amount_usd, m.updated_at + m.ttl, m.updated_at
              FROM moved m
            ON CONFLICT DO NOTHING
            RETURNING r.id, r.amount_usd, r.expires_at
        )
        SELECT h.id, h.amount_usd, h.expires_at, m.available_usd, m.updated_at IS NOT NULL
          INTO reservation_id, amount_usd, expires_at, available_usd, v_moved
          FROM moved m LEFT JOIN held h ON true;
        IF reservation_id IS NOT NULL THEN
            request_id := p_request_id;
            status := 'held';
            replayed := false;
            RETURN;
        ELSIF v_moved THEN
            -- Another transaction took a hold for this request while this one waited for the lock:
            -- give the amount back, then answer exactly below.
            UPDATE billing.user_billing b SET held_usd = b.held_usd - p_amount_usd WHERE b.user_id = p_user_id;
        END IF;
    END IF;

    -- Exact path.
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
        available_usd := billing._available_usd(v_account.balance_usd, v_account.held_usd, v_account.cooling_usd);
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
        available_usd := billing._available_usd(v_account.balance_usd, v_account.held_usd, v_account.cooling_usd);
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
    v_account.holds_expire_at := CASE WHEN v_account.held_usd = 0 THEN v_now + v_ttl
                                      ELSE least(v_account.holds_expire_at, v_now + v_ttl) END;
    v_account.held_usd := v_account.held_usd + p_amount_usd;
    PERFORM billing._save_account(v_account);
    available_usd := billing._available_usd(v_account.balance_usd, v_account.held_usd, v_account.cooling_usd);
END;
$$;

GRANT EXECUTE ON FUNCTION billing.reserve(uuid, text, numeric, interval) TO tollgate_metering;
