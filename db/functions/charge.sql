-- billing.charge(user_id, request_id, amount_usd, description, metadata) -> (transaction_id, request_id, status,
--     amount_usd, balance_before_usd, balance_after_usd, replayed)
-- Direct charge without a hold: checks the account is active, the available balance (balance - open
-- holds) covers the amount and the day/month limits allow it (unless overridden), then writes one
-- 'charge' ledger row (amount_usd stored negative) with its before/after snapshot and updates the
-- balance, totals, request count and day/month spend, all in the caller's transaction.
-- billing_enabled = false: nothing is charged; status 'not_billed', transaction_id NULL.
-- Idempotent on request_id: a replay with the same user and amount returns the original charge
-- (replayed = true) even if the balance has changed since; another user or amount is a conflict.
-- Fast path: one statement does the usual case (see the comment in the body); everything else takes
-- the exact path, which locks first and then decides.
-- Locks: the user's user_billing row.
-- Errors: BL006 invalid_amount, BL009 invalid_argument, BL007 unknown_user, BL004 account_inactive,
--         BL001 insufficient_funds, BL002 daily_limit_exceeded, BL003 monthly_limit_exceeded,
--         BL005 idempotency_conflict.
CREATE OR REPLACE FUNCTION billing.charge(
    p_user_id uuid, p_request_id text, p_amount_usd numeric,
    p_description text DEFAULT NULL, p_metadata jsonb DEFAULT NULL,
    OUT transaction_id bigint, OUT request_id text, OUT status text, OUT amount_usd numeric,
    OUT balance_before_usd numeric, OUT balance_after_usd numeric, OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now     timestamptz;
    v_clock     timestamptz;
    v_tz      text;
    v_account billing.user_billing;
    v_tx      billing.billing_transactions;
    v_version bigint;
    v_rate    numeric;
BEGIN
    -- Arguments: a cheap test first; the helpers raise the precise error.
    IF p_amount_usd IS NULL OR p_amount_usd = 'NaN' OR p_amount_usd <= 0 OR p_amount_usd >= 1e12
       OR p_amount_usd <> round(p_amount_usd, 8) THEN
        PERFORM billing._check_usd(p_amount_usd, 'amount_usd');
    END IF;
    IF p_request_id IS NULL OR length(p_request_id) > 200 OR btrim(p_request_id) = '' OR p_request_id ~ '[[:cntrl:]]' THEN
        PERFORM billing._check_text(p_request_id, 'request_id');
    END IF;
    IF length(p_description) > 1000 THEN
        PERFORM billing._check_text(p_description, 'description', 1000, false, true);
    END IF;
    IF p_metadata IS NOT NULL THEN
        p_metadata := billing._check_metadata(p_metadata);
    END IF;

    -- Fast path, one statement: the usual charge of an active, billed account that can afford it
    -- (open holds count against it) and whose request is new, when no open hold can have expired yet
    -- (holds_expire_at), so there is nothing to reap. It
    -- takes the account's row lock in the UPDATE; the counters roll over to the day of the effective
    -- time. Anything else falls through to the exact path below, which reaps expired holds, answers
    -- replays and raises the refusal with its figures.
    -- The request-id probe runs before the locking UPDATE, not inside it: inside, PostgreSQL would
    -- re-check it while holding a contended lock. A duplicate that commits in between is caught by
    -- ON CONFLICT and undone below.
    -- The test-only switch tollgate.force_exact_path = on skips it (db/README.md).
    IF current_setting('tollgate.force_exact_path', true) IS DISTINCT FROM 'on'
       AND NOT EXISTS (SELECT FROM billing.billing_transactions t WHERE t.request_id = p_request_id AND t.type = 'charge') THEN
        WITH cfg AS (
            SELECT c.time_zone, c.uah_per_usd, c.clock_override, coalesce(c.clock_override, clock_timestamp()) AS clock
              FROM billing.config c
        ), moved AS (
            UPDATE billing.user_billing b
               SET balance_usd     = b.balance_usd - p_amount_usd,
                   balance_uah     = b.balance_uah - coalesce(round(p_amount_usd * cfg.uah_per_usd, 2), 0),
                   total_spent_usd = b.total_spent_usd + p_amount_usd,
                   total_spent_uah = b.total_spent_uah + coalesce(round(p_amount_usd * cfg.uah_per_usd, 2), 0),
                   total_requests  = b.total_requests + 1,
                   -- The day and month windows roll over to those of the effective time.
                   day_spent_usd   = billing._window_spend(b.day_spent_usd, b.day_start, billing._local_day(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone)) + p_amount_usd,
                   day_start       = billing._local_day(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone),
                   month_spent_usd = billing._window_spend(b.month_spent_usd, b.month_start, billing._local_month(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone)) + p_amount_usd,
                   month_start     = billing._local_month(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone),
                   version         = b.version + 1,
                   last_request_at = billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at),
                   updated_at      = billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at),
                   -- The hash of the row `entry` writes, chained onto the head this lock protects.
                   ledger_head     = billing._entry_hash(
                       b.ledger_head, b.user_id, b.version + 1, 'charge', 'USD', -p_amount_usd,
                       -round(p_amount_usd * cfg.uah_per_usd, 2), cfg.uah_per_usd, b.balance_usd,
                       b.balance_usd - p_amount_usd, p_request_id, NULL, NULL, NULL, NULL, NULL, p_description,
                       coalesce(p_metadata, '{}'::jsonb), billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at))
              FROM cfg
             WHERE b.user_id = p_user_id AND b.is_active AND b.billing_enabled
               -- A test clock read before the lock and older than the account's last change: exact path.
               AND (cfg.clock_override IS NULL OR cfg.clock_override >= b.updated_at)
               AND (b.held_usd = 0 OR b.holds_expire_at > billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at))
               AND billing._available_usd(b.balance_usd, b.held_usd, b.cooling_usd) >= p_amount_usd
               AND abs(b.balance_usd - p_amount_usd) < 1e12
               AND billing._within_limits(
                       b.limit_override,
                       b.daily_limit_usd, billing._window_spend(b.day_spent_usd, b.day_start, billing._local_day(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone)),
                       b.monthly_limit_usd, billing._window_spend(b.month_spent_usd, b.month_start, billing._local_month(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone)),
                       b.held_usd, p_amount_usd)
            RETURNING b.version, b.balance_usd, b.updated_at, cfg.uah_per_usd, b.ledger_head
        ), entry AS (
            INSERT INTO billing.billing_transactions AS t (
                user_id, version, type, amount_usd, amount_uah, exchange_rate, balance_before_usd, balance_after_usd,
                request_id, description, metadata, created_at, entry_hash)
            SELECT p_user_id, m.version, 'charge', -p_amount_usd, -round(p_amount_usd * m.uah_per_usd, 2), m.uah_per_usd,
                   m.balance_usd + p_amount_usd, m.balance_usd, p_request_id, p_description,
                   coalesce(p_metadata, '{}'::jsonb), m.updated_at, m.ledger_head
              FROM moved m
            ON CONFLICT DO NOTHING
            RETURNING t.id, t.amount_usd, t.balance_before_usd, t.balance_after_usd
        )
        SELECT e.id, -e.amount_usd, e.balance_before_usd, e.balance_after_usd, m.version, m.uah_per_usd
          INTO transaction_id, amount_usd, balance_before_usd, balance_after_usd, v_version, v_rate
          FROM moved m LEFT JOIN entry e ON true;
        IF transaction_id IS NOT NULL THEN
            request_id := p_request_id;
            status := 'charged';
            replayed := false;
            RETURN;
        ELSIF v_version IS NOT NULL THEN
            -- The request was charged by a transaction that committed while this one waited for the lock
            -- (a racing replay, or a conflict): undo the counters, then answer exactly below.
            PERFORM billing._undo_fast_charge(p_user_id, p_amount_usd, v_rate);
        END IF;
    END IF;

    -- Exact path.
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;

    v_account := billing._load_account(p_user_id, v_tz, v_clock);
    v_now := v_account.updated_at;
    request_id := p_request_id;

    SELECT * INTO v_tx FROM billing.billing_transactions t
     WHERE t.request_id = p_request_id AND t.type = 'charge';
    IF FOUND THEN
        IF v_tx.user_id <> p_user_id OR v_tx.amount_usd <> -p_amount_usd THEN
            RAISE EXCEPTION 'Idempotency conflict: request % was already charged % USD%.',
                    p_request_id, billing._fmt_usd(-v_tx.amount_usd),
                    CASE WHEN v_tx.user_id <> p_user_id THEN ' to another user' ELSE '' END
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object(
                          'request_id', p_request_id, 'charged_usd', -v_tx.amount_usd,
                          'requested_usd', p_amount_usd, 'same_user', v_tx.user_id = p_user_id)::text,
                      HINT = 'Use a new request_id for a new call.';
        END IF;
        transaction_id := v_tx.id;
        status := 'charged';
        amount_usd := -v_tx.amount_usd;
        balance_before_usd := v_tx.balance_before_usd;
        balance_after_usd := v_tx.balance_after_usd;
        replayed := true;
        RETURN;
    END IF;

    replayed := false;
    IF NOT v_account.billing_enabled THEN
        status := 'not_billed';
        amount_usd := 0;
        balance_before_usd := v_account.balance_usd;
        balance_after_usd := v_account.balance_usd;
        RETURN;
    END IF;

    PERFORM billing._refuse_unaffordable(v_account, p_amount_usd, v_tz);
    v_tx := billing._record_charge(v_account, v_now, p_request_id, p_amount_usd, p_description, p_metadata);
    PERFORM billing._save_account(billing._account_after(v_account, v_tx));

    transaction_id := v_tx.id;
    status := 'charged';
    amount_usd := -v_tx.amount_usd;
    balance_before_usd := v_tx.balance_before_usd;
    balance_after_usd := v_tx.balance_after_usd;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.charge(uuid, text, numeric, text, jsonb) TO tollgate_metering;
