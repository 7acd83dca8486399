-- billing.settle(request_id, actual_usd, description, metadata) -> (transaction_id, request_id, status,
--     charged_usd, written_off_usd, released_usd, balance_after_usd, replayed)
-- Converts a hold taken by billing.reserve into a charge of the actual price and frees the hold: one
-- 'charge' ledger row (none when nothing is charged or billing is disabled for the user), balance,
-- totals and day/month spend updated, the reservation marked 'settled' — one transaction.
-- Settlement policy (db/README.md, "Overrun"): the price is charged up to the call's hold, and above the
-- hold only as far as the available balance (balance - all open holds) and the day/month limit room
-- (limit - spend - open holds; not with limit_override) cover the excess at this moment, and never into a
-- negative balance (billing._settlement_cover). A hold that expired before settling no longer counts: only
-- what is free now is charged. What cannot be charged is written off (billing.write_offs, shown by
-- billing.written_off_calls): written_off_usd = actual_usd - charged_usd, never charged to the user.
-- With billing disabled nothing is charged and nothing is written off.
-- Idempotent on request_id: a replay with the same actual price returns the original result, charged and
-- written-off figures included (replayed = true; also when billing was disabled and nothing was charged);
-- a different price is a conflict. Settling a released hold is refused, and so is settling a request that
-- was already charged directly with billing.charge (a conflict: one charge per request).
-- Fast path: one statement does the usual case (a price within a hold the balance still covers);
-- everything else takes the exact path.
-- Locks: the user's user_billing row (the reservation is only changed under it).
-- Errors: BL006 invalid_amount, BL009 invalid_argument, BL008 unknown_request, BL005 idempotency_conflict,
--         BL012 invalid_state.
CREATE OR REPLACE FUNCTION billing.settle(
    p_request_id text, p_actual_usd numeric, p_description text DEFAULT NULL, p_metadata jsonb DEFAULT NULL,
    OUT transaction_id bigint, OUT request_id text, OUT status text, OUT charged_usd numeric,
    OUT written_off_usd numeric, OUT released_usd numeric, OUT balance_after_usd numeric, OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now         timestamptz;
    v_clock         timestamptz;
    v_tz          text;
    v_user_id     uuid;
    v_account     billing.user_billing;
    v_reservation billing.reservations;
    v_tx          billing.billing_transactions;
    v_hold        numeric;
    v_rate        numeric;
    v_done        boolean;
    v_cover       record;
BEGIN
    -- Arguments: a cheap test first; the helpers raise the precise error.
    IF p_actual_usd IS NULL OR p_actual_usd = 'NaN' OR p_actual_usd < 0 OR p_actual_usd >= 1e12
       OR p_actual_usd <> round(p_actual_usd, 8) THEN
        PERFORM billing._check_usd(p_actual_usd, 'actual_usd', 'non_negative');
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

    -- The request-id probe runs before the locking UPDATE, not inside it (there PostgreSQL would
    -- re-check it while holding a contended lock); a racing charge is caught by ON CONFLICT.
    -- The test-only switch tollgate.force_exact_path = on skips the fast path (db/README.md).
    IF p_actual_usd > 0 AND current_setting('tollgate.force_exact_path', true) IS DISTINCT FROM 'on'
       AND NOT EXISTS (SELECT FROM billing.billing_transactions t WHERE t.request_id = p_request_id AND t.type = 'charge') THEN
        -- Fast path, one statement: a held hold of a billed account, settled at a price > 0, for a
        -- request without a charge, when no open hold of the account can have expired yet
        -- (holds_expire_at). The account UPDATE takes the lock first, as everywhere; the hold is then
        -- re-checked on its own row ('held' or not, once the lock was granted) before the ledger row
        -- is written. Anything else falls through to the exact path below.
        WITH cfg AS (
            SELECT c.time_zone, c.uah_per_usd, c.clock_override, coalesce(c.clock_override, clock_timestamp()) AS clock
              FROM billing.config c
        ), hold AS (
            -- `(status = 'held') IS TRUE`, not `status = 'held'`, here and in `done`: the plain
            -- predicate matches the partial index reservations_open_by_expiry, which the planner
            -- picks once ANALYZE has seen few open holds, and then scans every entry of it (open
            -- holds and the dead entries of settled ones) for one request id: 0.01 ms became 1.6 ms
            -- under load. This form cannot use that index, so the unique request_id index serves.
            SELECT r.user_id, r.amount_usd FROM billing.reservations r
             WHERE r.request_id = p_request_id AND (r.status = 'held') IS TRUE
        ), moved AS (
            UPDATE billing.user_billing b
               SET balance_usd     = b.balance_usd - p_actual_usd,
                   balance_uah     = b.balance_uah - coalesce(round(p_actual_usd * cfg.uah_per_usd, 2), 0),
                   held_usd        = b.held_usd - hold.amount_usd,
                   total_spent_usd = b.total_spent_usd + p_actual_usd,
                   total_spent_uah = b.total_spent_uah + coalesce(round(p_actual_usd * cfg.uah_per_usd, 2), 0),
                   total_requests  = b.total_requests + 1,
                   -- The day and month windows roll over to those of the effective time.
                   day_spent_usd   = billing._window_spend(b.day_spent_usd, b.day_start, billing._local_day(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone)) + p_actual_usd,
                   day_start       = billing._local_day(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone),
                   month_spent_usd = billing._window_spend(b.month_spent_usd, b.month_start, billing._local_month(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone)) + p_actual_usd,
                   month_start     = billing._local_month(billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at), cfg.time_zone),
                   version         = b.version + 1,
                   last_request_at = billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at),
                   updated_at      = billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at),
                   -- The hash of the row `entry` writes, chained onto the head this lock protects.
                   ledger_head     = billing._entry_hash(
                       b.ledger_head, b.user_id, b.version + 1, 'charge', 'USD', -p_actual_usd,
                       -round(p_actual_usd * cfg.uah_per_usd, 2), cfg.uah_per_usd, b.balance_usd,
                       b.balance_usd - p_actual_usd, p_request_id, NULL, NULL, NULL, NULL, NULL, p_description,
                       coalesce(p_metadata, '{}'::jsonb), billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at))
              FROM cfg, hold
             WHERE b.user_id = hold.user_id AND b.billing_enabled
               -- A test clock read before the lock and older than the account's last change: exact path.
               AND (cfg.clock_override IS NULL OR cfg.clock_override >= b.updated_at)
               -- `hold` was read before the lock: if a racing call settled or released it meanwhile,
               -- `done` below finds it no longer held and this update is undone; this keeps held_usd
               -- from going negative on the way.
               AND b.held_usd >= hold.amount_usd
               -- Settlement policy: a price within the hold, and a hold the balance still covers (a debit
               -- or a clawback since may have taken it); anything else is bounded on the exact path.
               AND p_actual_usd <= hold.amount_usd
               AND billing._available_usd(b.balance_usd, b.held_usd - hold.amount_usd, b.cooling_usd) >= p_actual_usd
               AND b.holds_expire_at > billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at)
               AND abs(b.balance_usd - p_actual_usd) < 1e12
               AND b.total_spent_usd + p_actual_usd < 1e12
            RETURNING b.user_id, b.version, b.balance_usd, b.updated_at, cfg.uah_per_usd, hold.amount_usd AS hold_usd,
                      b.ledger_head, nextval('billing.billing_transactions_id_seq'::regclass) AS transaction_id
        ), done AS (
            UPDATE billing.reservations r
               SET status = 'settled', resolved_at = m.updated_at, settled_usd = p_actual_usd,
                   transaction_id = m.transaction_id
              FROM moved m
             WHERE r.request_id = p_request_id AND (r.status = 'held') IS TRUE
            RETURNING r.id
        ), entry AS (
            INSERT INTO billing.billing_transactions AS t (
                id, user_id, version, type, amount_usd, amount_uah, exchange_rate, balance_before_usd,
                balance_after_usd, request_id, description, metadata, created_at, entry_hash)
            OVERRIDING SYSTEM VALUE
            SELECT m.transaction_id, m.user_id, m.version, 'charge', -p_actual_usd,
                   -round(p_actual_usd * m.uah_per_usd, 2), m.uah_per_usd, m.balance_usd + p_actual_usd,
                   m.balance_usd, p_request_id, p_description, coalesce(p_metadata, '{}'::jsonb), m.updated_at,
                   m.ledger_head
              FROM moved m, done d
            ON CONFLICT DO NOTHING
            RETURNING t.id, t.balance_after_usd
        )
        SELECT e.id, e.balance_after_usd, m.user_id, m.hold_usd, m.uah_per_usd, d.id IS NOT NULL
          INTO transaction_id, balance_after_usd, v_user_id, v_hold, v_rate, v_done
          FROM moved m LEFT JOIN done d ON true LEFT JOIN entry e ON true;
        IF transaction_id IS NOT NULL THEN
            request_id := p_request_id;
            status := 'settled';
            charged_usd := p_actual_usd;
            written_off_usd := 0;
            released_usd := greatest(v_hold - p_actual_usd, 0);
            replayed := false;
            RETURN;
        ELSIF v_done THEN
            -- Only an uncommitted charge of another user for this request id can get here (the
            -- NOT EXISTS above saw every committed one): refuse, and the whole call rolls back.
            RAISE EXCEPTION 'Idempotency conflict: request % is being charged to another user.', p_request_id
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object('request_id', p_request_id, 'same_user', false)::text,
                      HINT = 'Use a new request_id for a new call.';
        ELSIF v_user_id IS NOT NULL THEN
            -- The hold changed while this call waited for the account's lock: undo, answer exactly.
            PERFORM billing._undo_fast_charge(v_user_id, p_actual_usd, v_rate, v_hold);
        END IF;
    END IF;

    SELECT r.user_id INTO v_user_id FROM billing.reservations r WHERE r.request_id = p_request_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown request: no hold was taken for request %.', p_request_id
            USING ERRCODE = 'BL008', DETAIL = jsonb_build_object('request_id', p_request_id)::text,
                  HINT = 'Call billing.reserve before settling, or billing.charge to charge without a hold.';
    END IF;

    -- Exact path.
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;
    v_account := billing._load_account(v_user_id, v_tz, v_clock);
    v_now := v_account.updated_at;
    SELECT * INTO v_reservation FROM billing.reservations r WHERE r.request_id = p_request_id;
    request_id := p_request_id;

    IF v_reservation.status = 'settled' THEN
        SELECT * INTO v_tx FROM billing.billing_transactions t WHERE t.id = v_reservation.transaction_id;
        charged_usd := coalesce(-v_tx.amount_usd, 0);
        IF v_reservation.settled_usd <> p_actual_usd THEN
            RAISE EXCEPTION 'Idempotency conflict: request % was already settled at % USD, not % USD.',
                    p_request_id, billing._fmt_usd(v_reservation.settled_usd), billing._fmt_usd(p_actual_usd)
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object('request_id', p_request_id, 'settled_usd', v_reservation.settled_usd,
                                                  'charged_usd', charged_usd, 'requested_usd', p_actual_usd)::text;
        END IF;
        transaction_id := v_tx.id;
        status := 'settled';
        -- Written off: what this settlement could not charge (billing.complete_request may have widened
        -- the row to the tool's full price; the part above the price settled here is not settle's).
        written_off_usd := CASE WHEN EXISTS (SELECT FROM billing.write_offs w WHERE w.request_id = p_request_id)
                                THEN v_reservation.settled_usd - charged_usd ELSE 0 END;
        released_usd := greatest(v_reservation.amount_usd - charged_usd, 0);
        balance_after_usd := coalesce(v_tx.balance_after_usd, v_account.balance_usd);
        replayed := true;
        RETURN;
    ELSIF v_reservation.status = 'released' THEN
        RAISE EXCEPTION 'Invalid state: the hold for request % was released (the call failed), so it cannot be settled.',
                p_request_id
            USING ERRCODE = 'BL012',
                  DETAIL = jsonb_build_object('request_id', p_request_id, 'status', 'released')::text,
                  HINT = 'To charge for it anyway, use billing.charge with a new request_id.';
    END IF;

    -- 'held', or 'expired' (the tool outlived its hold: the hold no longer counts, so only what is free
    -- now can be charged). The call's own hold comes out of held_usd first: what remains are the others.
    v_hold := 0;
    IF v_reservation.status = 'held' THEN
        v_hold := v_reservation.amount_usd;
        v_account.held_usd := v_account.held_usd - v_hold;
    END IF;
    written_off_usd := 0;
    IF p_actual_usd > 0 AND v_account.billing_enabled THEN
        v_cover := billing._settlement_cover(v_account, v_hold, p_actual_usd);
        IF v_cover.charge_usd > 0 THEN
            v_tx := billing._record_charge(v_account, v_now, p_request_id, v_cover.charge_usd, p_description,
                                           p_metadata);
            v_account := billing._account_after(v_account, v_tx);
        END IF;
        written_off_usd := p_actual_usd - v_cover.charge_usd;
        IF written_off_usd > 0 THEN
            PERFORM billing._record_write_off(
                p_request_id, v_user_id,
                (SELECT ct.tool_name FROM billing.cost_tracking ct WHERE ct.request_id = p_request_id),
                p_actual_usd, NULL, v_cover.charge_usd, v_cover.reason, v_tx.id, v_now);
        END IF;
    END IF;
    UPDATE billing.reservations r
       SET status = 'settled', resolved_at = v_now, settled_usd = p_actual_usd, transaction_id = v_tx.id
     WHERE r.id = v_reservation.id;
    PERFORM billing._save_account(v_account);

    transaction_id := v_tx.id;
    status := 'settled';
    charged_usd := coalesce(-v_tx.amount_usd, 0);
    released_usd := greatest(v_reservation.amount_usd - charged_usd, 0);
    balance_after_usd := v_account.balance_usd;
    replayed := false;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.settle(text, numeric, text, jsonb) TO tollgate_metering;
