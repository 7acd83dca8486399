-- billing._payment_start_refusal(user_id, network, amount_usd, now, account_born)
--     -> (rule, message, detail, retry_at)
-- The payment fraud rule that refuses a new top-up start, or rule NULL when none does (docs/abuse.md,
-- "Payment fraud rules"). The rules, in this order, each with its figure from billing.abuse_policy
-- (0 turns it off):
--   payments.failed_per_day_per_user   payments the provider reported failed (declined: failed_at) in the
--   payments.failed_per_day_per_ip     last 24 hours, of this account / started from this network
--   payments.intents_per_hour_per_user intents started in the last hour, by this account / from this network
--   payments.intents_per_hour_per_ip
--   payments.new_account_topups        an account younger than payments.new_account_days: its open or paid
--   payments.new_account_topup_usd     intents (created/pending and not expired, review, succeeded), this
--                                      one included, by count and by USD total (UAH at the current rate)
-- "This network" is the client's IPv4 address, or its IPv6 /64 (one subscriber's prefix): `network`, NULL
-- when the caller gave no address (the per-IP rules then do not apply).
-- retry_at is when the rule stops refusing (the oldest counted row leaves its window, or the account stops
-- being new). detail holds the figures (limit, count, window, resets_at, ...) and the message.
-- The caller holds the account's row lock (the per-user counts) and the network's advisory lock (the
-- per-network counts), so concurrent starts cannot pass a cap together.
-- Locks: none of its own.  Errors: none.
CREATE OR REPLACE FUNCTION billing._payment_start_refusal(
    p_user_id uuid, p_network cidr, p_amount_usd numeric, p_now timestamptz, p_born timestamptz,
    OUT rule text, OUT message text, OUT detail jsonb, OUT retry_at timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_limit  numeric;
    v_days   numeric;
    v_count  bigint;
    v_oldest timestamptz;
    v_total  numeric;
    v_when   text;
BEGIN
    -- 1. Declined payments in the last 24 hours: card testing.
    v_limit := billing._policy('payments.failed_per_day_per_user', 5);
    IF v_limit > 0 THEN
        SELECT count(*) INTO v_count FROM billing.payment_intents i
         WHERE i.user_id = p_user_id AND i.failed_at > p_now - interval '24 hours';
        IF v_count >= v_limit THEN
            SELECT i.failed_at + interval '24 hours' INTO retry_at FROM billing.payment_intents i
             WHERE i.user_id = p_user_id AND i.failed_at > p_now - interval '24 hours'
             ORDER BY i.failed_at DESC OFFSET (ceil(v_limit) - 1)::bigint LIMIT 1;
            rule := 'payments.failed_per_day_per_user';
            message := format('Top-up refused: %s payments of this account failed in the last 24 hours, and at most %s may fail in a day (a guard against card testing). You can start a new top-up after %s.',
                              v_count, v_limit, to_char(retry_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'));
            detail := jsonb_build_object('limit', v_limit, 'count', v_count, 'window', '24 hours');
        END IF;
    END IF;
    v_limit := billing._policy('payments.failed_per_day_per_ip', 10);
    IF rule IS NULL AND v_limit > 0 AND p_network IS NOT NULL THEN
        SELECT count(*) INTO v_count FROM billing.payment_intents i
         WHERE i.client_ip <<= p_network AND i.failed_at > p_now - interval '24 hours';
        IF v_count >= v_limit THEN
            SELECT i.failed_at + interval '24 hours' INTO retry_at FROM billing.payment_intents i
             WHERE i.client_ip <<= p_network AND i.failed_at > p_now - interval '24 hours'
             ORDER BY i.failed_at DESC OFFSET (ceil(v_limit) - 1)::bigint LIMIT 1;
            rule := 'payments.failed_per_day_per_ip';
            message := format('Top-up refused: %s payments started from your network address failed in the last 24 hours, and at most %s may fail in a day (a guard against card testing). You can start a new top-up after %s.',
                              v_count, v_limit, to_char(retry_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'));
            detail := jsonb_build_object('limit', v_limit, 'count', v_count, 'window', '24 hours',
                                         'network', p_network::text);
        END IF;
    END IF;

    -- 2. Intents started in the last hour.
    v_limit := billing._policy('payments.intents_per_hour_per_user', 10);
    IF rule IS NULL AND v_limit > 0 THEN
        SELECT count(*) INTO v_count FROM billing.payment_intents i
         WHERE i.user_id = p_user_id AND i.created_at > p_now - interval '1 hour';
        IF v_count >= v_limit THEN
            SELECT i.created_at + interval '1 hour' INTO retry_at FROM billing.payment_intents i
             WHERE i.user_id = p_user_id AND i.created_at > p_now - interval '1 hour'
             ORDER BY i.created_at DESC OFFSET (ceil(v_limit) - 1)::bigint LIMIT 1;
            rule := 'payments.intents_per_hour_per_user';
            message := format('Top-up refused: this account started %s top-ups in the last hour, and at most %s may be started in an hour. You can start a new one after %s; a payment already started can still be paid at its checkout.',
                              v_count, v_limit, to_char(retry_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'));
            detail := jsonb_build_object('limit', v_limit, 'count', v_count, 'window', '1 hour');
        END IF;
    END IF;
    v_limit := billing._policy('payments.intents_per_hour_per_ip', 20);
    IF rule IS NULL AND v_limit > 0 AND p_network IS NOT NULL THEN
        SELECT count(*) INTO v_count FROM billing.payment_intents i
         WHERE i.client_ip <<= p_network AND i.created_at > p_now - interval '1 hour';
        IF v_count >= v_limit THEN
            SELECT i.created_at + interval '1 hour' INTO retry_at FROM billing.payment_intents i
             WHERE i.client_ip <<= p_network AND i.created_at > p_now - interval '1 hour'
             ORDER BY i.created_at DESC OFFSET (ceil(v_limit) - 1)::bigint LIMIT 1;
            rule := 'payments.intents_per_hour_per_ip';
            message := format('Top-up refused: %s top-ups were started from your network address in the last hour, and at most %s may be started from one address in an hour. You can start a new one after %s.',
                              v_count, v_limit, to_char(retry_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'));
            detail := jsonb_build_object('limit', v_limit, 'count', v_count, 'window', '1 hour',
                                         'network', p_network::text);
        END IF;
    END IF;

    -- 3. The first top-ups of a new account.
    v_days := billing._policy('payments.new_account_days', 7);
    IF rule IS NULL AND v_days > 0 AND p_born > p_now - make_interval(days => v_days::integer) THEN
        retry_at := p_born + make_interval(days => v_days::integer);
        v_when := to_char(retry_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"');
        SELECT count(*),
               coalesce(sum(CASE WHEN i.currency = 'USD' THEN i.amount
                                 ELSE round(i.amount / (SELECT c.uah_per_usd FROM billing.config c), 8) END), 0)
          INTO v_count, v_total
          FROM billing.payment_intents i
         WHERE i.user_id = p_user_id
           AND (i.status IN ('succeeded', 'review') OR (i.status IN ('created', 'pending') AND i.expires_at > p_now));
        v_limit := billing._policy('payments.new_account_topups', 3);
        IF v_limit > 0 AND v_count + 1 > v_limit THEN
            rule := 'payments.new_account_topups';
            message := format('Top-up refused: an account in its first %s days may have at most %s top-ups open or paid, and this one has %s. More are possible after %s (a started payment that lapses unpaid stops counting).',
                              v_days, v_limit, v_count, v_when);
            detail := jsonb_build_object('limit', v_limit, 'count', v_count, 'window', format('%s days', v_days));
        END IF;
        v_limit := billing._policy('payments.new_account_topup_usd', 200);
        IF rule IS NULL AND v_limit > 0 AND v_total + p_amount_usd > v_limit THEN
            rule := 'payments.new_account_topup_usd';
            message := format('Top-up refused: an account in its first %s days may top up at most %s USD in all; %s USD is already open or paid, and this one adds %s USD. Choose at most %s USD, or wait until %s.',
                              v_days, billing._fmt_usd(v_limit), billing._fmt_usd(v_total),
                              billing._fmt_usd(p_amount_usd), billing._fmt_usd(greatest(v_limit - v_total, 0)), v_when);
            detail := jsonb_build_object('limit_usd', v_limit, 'count', v_count, 'open_or_paid_usd', v_total,
                                         'requested_usd', p_amount_usd, 'window', format('%s days', v_days));
        END IF;
        IF rule IS NULL THEN
            retry_at := NULL;
        END IF;
    END IF;

    IF rule IS NOT NULL THEN
        detail := detail || jsonb_build_object('resets_at', retry_at, 'message', message);
    END IF;
END;
$$;
