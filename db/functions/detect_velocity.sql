-- billing.detect_velocity(force) -> (status, flags_raised, accounts_paused, spike_candidates, fanout_candidates,
--     buckets_rolled_up)
-- The velocity detector (docs/abuse.md, "Velocity flags and refund caps"), run periodically by every
-- gateway (velocity.check_interval_seconds) and by `tollgate abuse detect`; never on the call path.
-- Its figures are billing.abuse_policy's velocity.* (billing._policy, defaults as api.abuse.config's
-- VelocityRules); 0 turns a rule off. "Now" is the test clock when set (billing.config.clock_override).
--   * Spend spike (rule velocity.spend_spike): an account whose charges in the last window_minutes add
--     up to more than spike_factor x its baseline, the baseline being the larger of its own average spend
--     per window over the trailing_days before the window, and min_spend_usd. An account with no history
--     (new, or the detector newly deployed) thus has the floor for a baseline: with the defaults, more than
--     10 USD within 10 minutes. The average runs over the part of the trailing period the account (and the
--     roll-up) existed, so a young account is not compared with days it did not exist.
--   * Fan-out (rules velocity.fanout_api_keys, velocity.fanout_ips): an account whose tracked calls in the
--     window came through more than fanout_api_keys distinct API keys, or from more than fanout_ips
--     distinct client addresses (cost_tracking.client_ip).
-- Each finding raises a flag through billing._raise_account_flag: one open flag per account and rule
-- (a repeat finding writes nothing), 'flagged' (and with velocity.pause = 1, 'paused') abuse events; a
-- flag cleared less than a window ago is not raised again for the same activity.
-- The trailing averages come from spend_buckets (hourly spend per account), which each run extends with
-- the charges stamped since the previous run, up to a minute ago (a charge is stamped and committed
-- within milliseconds; one committed later than that is left out of the baseline, never out of the
-- window's spend, which is read from the ledger itself). The first run rolls up the whole trailing period.
-- Several gateways: one run at a time (pg_try_advisory_xact_lock; the others answer status 'busy'), and
-- a run within half the check interval of the previous one answers 'recent' unless `force`. 'ran'
-- otherwise. The scans use indexes on recent rows only (billing_transactions by created_at, BRIN;
-- cost_tracking of users by created_at), so a run costs what the last window holds, not the ledger's size.
-- Locks: a transaction-scoped advisory lock, velocity_state, new flags, and the user_billing row of each
-- account it pauses.
-- Errors: BL009 invalid_argument (force NULL).
CREATE OR REPLACE FUNCTION billing.detect_velocity(
    p_force boolean DEFAULT false,
    OUT status text, OUT flags_raised integer, OUT accounts_paused integer, OUT spike_candidates integer,
    OUT fanout_candidates integer, OUT buckets_rolled_up integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    -- The origin of the hourly buckets: independent of the session's time zone.
    c_origin     CONSTANT timestamptz := timestamptz '2000-01-01 00:00:00+00';
    v_window_min numeric := billing._policy('velocity.window_minutes', 10);
    v_factor     numeric := billing._policy('velocity.spike_factor', 10);
    v_days       numeric := billing._policy('velocity.trailing_days', 7);
    v_min_spend  numeric := billing._policy('velocity.min_spend_usd', 1);
    v_max_keys   numeric := billing._policy('velocity.fanout_api_keys', 10);
    v_max_ips    numeric := billing._policy('velocity.fanout_ips', 20);
    v_pause      boolean := billing._policy('velocity.pause', 0) > 0;
    v_interval   numeric := billing._policy('velocity.check_interval_seconds', 60);
    v_now        timestamptz;
    v_window     interval;
    v_state      billing.velocity_state;
    v_upto       timestamptz;
    v_row        record;
    v_windows    numeric;
    v_average    numeric;
    v_threshold  numeric;
    v_raised     record;
BEGIN
    flags_raised := 0;
    accounts_paused := 0;
    spike_candidates := 0;
    fanout_candidates := 0;
    buckets_rolled_up := 0;
    IF p_force IS NULL THEN
        RAISE EXCEPTION 'Invalid argument: force must be true or false, not NULL.'
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'force')::text;
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtext('tollgate:billing.detect_velocity')) THEN
        status := 'busy';
        RETURN;
    END IF;
    SELECT * INTO v_state FROM billing.velocity_state FOR UPDATE;
    IF NOT p_force AND v_state.last_run_at IS NOT NULL AND v_interval > 0
       AND v_state.last_run_at > clock_timestamp() - v_interval / 2 * interval '1 second' THEN
        status := 'recent';
        RETURN;
    END IF;
    status := 'ran';
    SELECT coalesce(c.clock_override, now()) INTO v_now FROM billing.config c;
    v_window := v_window_min * interval '1 minute';

    -- 1. The roll-up: charges stamped since the last run (up to a minute ago) into hourly buckets.
    v_upto := v_now - interval '1 minute';
    IF v_state.rolled_up_to IS NULL THEN
        v_state.rolled_up_to := v_now - v_days * interval '1 day';
        v_state.rollup_started := v_state.rolled_up_to;
    END IF;
    IF v_upto > v_state.rolled_up_to THEN
        INSERT INTO billing.spend_buckets AS b (user_id, bucket_start, spend_usd)
        SELECT t.user_id, date_bin('1 hour', t.created_at, c_origin), -sum(t.amount_usd)
          FROM billing.billing_transactions t
         WHERE t.type = 'charge' AND t.created_at >= v_state.rolled_up_to AND t.created_at < v_upto
         GROUP BY 1, 2
        ON CONFLICT (user_id, bucket_start) DO UPDATE SET spend_usd = b.spend_usd + excluded.spend_usd;
        GET DIAGNOSTICS buckets_rolled_up = ROW_COUNT;
        v_state.rolled_up_to := v_upto;
    END IF;
    DELETE FROM billing.spend_buckets b WHERE b.bucket_start < v_now - (v_days + 1) * interval '1 day';
    UPDATE billing.velocity_state s
       SET rolled_up_to = v_state.rolled_up_to, rollup_started = v_state.rollup_started,
           last_run_at = clock_timestamp();

    IF v_window_min <= 0 THEN
        RETURN;
    END IF;

    -- 2. Spend spikes: the window's spend per account from the ledger, the baseline from the buckets that
    --    end before the window starts.
    IF v_factor > 0 THEN
        FOR v_row IN
            WITH recent AS (
                SELECT t.user_id, -sum(t.amount_usd) AS spent_usd, count(*) AS charges
                  FROM billing.billing_transactions t
                 WHERE t.type = 'charge' AND t.created_at > v_now - v_window AND t.created_at <= v_now
                 GROUP BY t.user_id
                HAVING -sum(t.amount_usd) >= v_min_spend AND -sum(t.amount_usd) > v_factor * v_min_spend
            ), spans AS (
                SELECT r.*,
                       date_bin('1 hour', greatest(v_now - v_days * interval '1 day', v_state.rollup_started,
                                                   u.created_at), c_origin) AS since,
                       date_bin('1 hour', v_now - v_window, c_origin) AS until
                  FROM recent r JOIN billing.users u ON u.id = r.user_id
            )
            SELECT s.*,
                   coalesce((SELECT sum(b.spend_usd) FROM billing.spend_buckets b
                              WHERE b.user_id = s.user_id AND b.bucket_start >= s.since
                                AND b.bucket_start < s.until), 0) AS trailing_usd
              FROM spans s
             ORDER BY s.user_id
        LOOP
            spike_candidates := spike_candidates + 1;
            v_windows := greatest(extract(epoch FROM v_row.until - v_row.since), 0) / extract(epoch FROM v_window);
            v_average := CASE WHEN v_windows >= 1 THEN round(v_row.trailing_usd / v_windows, 8) ELSE 0 END;
            v_threshold := v_factor * greatest(v_average, v_min_spend);
            CONTINUE WHEN v_row.spent_usd <= v_threshold;
            v_raised := billing._raise_account_flag(
                v_row.user_id, 'velocity.spend_spike',
                jsonb_build_object(
                    'window_minutes', v_window_min, 'spent_usd', v_row.spent_usd, 'charges', v_row.charges,
                    'trailing_days', v_days, 'trailing_average_usd', v_average, 'min_spend_usd', v_min_spend,
                    'spike_factor', v_factor, 'threshold_usd', v_threshold),
                v_pause, v_now, v_window);
            IF v_raised.flag_id IS NOT NULL THEN
                flags_raised := flags_raised + 1;
                accounts_paused := accounts_paused + v_raised.paused::integer;
            END IF;
        END LOOP;
    END IF;

    -- 3. Fan-out: distinct API keys and client addresses of each user's tracked calls in the window.
    IF v_max_keys > 0 OR v_max_ips > 0 THEN
        FOR v_row IN
            SELECT ct.user_id, count(DISTINCT ct.client_key) AS api_keys, count(DISTINCT ct.client_ip) AS client_ips,
                   count(*) AS calls
              FROM billing.cost_tracking ct
             WHERE ct.user_id IS NOT NULL AND ct.created_at > v_now - v_window AND ct.created_at <= v_now
             GROUP BY ct.user_id
            HAVING (v_max_keys > 0 AND count(DISTINCT ct.client_key) > v_max_keys)
                OR (v_max_ips > 0 AND count(DISTINCT ct.client_ip) > v_max_ips)
             ORDER BY ct.user_id
        LOOP
            fanout_candidates := fanout_candidates + 1;
            IF v_max_keys > 0 AND v_row.api_keys > v_max_keys THEN
                v_raised := billing._raise_account_flag(
                    v_row.user_id, 'velocity.fanout_api_keys',
                    jsonb_build_object('window_minutes', v_window_min, 'api_keys', v_row.api_keys,
                                       'limit', v_max_keys, 'calls', v_row.calls),
                    v_pause, v_now, v_window);
                IF v_raised.flag_id IS NOT NULL THEN
                    flags_raised := flags_raised + 1;
                    accounts_paused := accounts_paused + v_raised.paused::integer;
                END IF;
            END IF;
            IF v_max_ips > 0 AND v_row.client_ips > v_max_ips THEN
                v_raised := billing._raise_account_flag(
                    v_row.user_id, 'velocity.fanout_ips',
                    jsonb_build_object('window_minutes', v_window_min, 'client_ips', v_row.client_ips,
                                       'limit', v_max_ips, 'calls', v_row.calls),
                    v_pause, v_now, v_window);
                IF v_raised.flag_id IS NOT NULL THEN
                    flags_raised := flags_raised + 1;
                    accounts_paused := accounts_paused + v_raised.paused::integer;
                END IF;
            END IF;
        END LOOP;
    END IF;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.detect_velocity(boolean) TO tollgate_operator;
