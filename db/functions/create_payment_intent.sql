-- billing.create_payment_intent(user_id, provider, amount, currency, idempotency_key, ttl, client_ip)
--     -> (intent_id, provider, status, amount, currency, external_id, checkout_url, expires_at, created_at,
--         replayed, rule, message, retry_at, retry_after)
-- Records a payment a user starts (status 'created'): nothing is credited until the provider confirms
-- it through billing.record_payment_event. The amount is in `currency` (USD or UAH) with at most 2
-- decimals (providers take minor units); a UAH payment needs an exchange rate to be set, so that its
-- credit can be converted when it arrives. The intent expires `ttl` from now unless paid.
-- Configured minimum and maximum amounts are the caller's (the gateway's) to enforce.
-- `client_ip` is the address the user started it from (the gateway's api.abuse.clientip); it is recorded
-- on the intent and the per-network caps count it (an IPv4 address, or the IPv6 /64 it is in).
-- The payment fraud rules (billing._payment_start_refusal, docs/abuse.md) are checked before anything is
-- recorded, so a refused start never reaches a provider: a refusal is answered as a result row, not raised,
-- so that its audit row (billing.abuse_events, action 'refused') commits with it: status 'refused',
-- intent_id, external_id, checkout_url and expires_at NULL, `rule` the rule's name, `message` what the
-- user is told, `retry_at` when the rule stops refusing and `retry_after` the seconds until then (>= 1).
-- Every other answer has rule, message, retry_at and retry_after NULL.
-- Idempotent on (user_id, idempotency_key) when a key is given: a replay with the same provider,
-- amount and currency returns the existing intent (replayed = true), whatever its status, and is never
-- refused by a cap (the intent was counted when it started); other parameters under the same key are
-- a conflict. A refused start records no intent, so its key stays free.
-- Locks: the user's user_billing row (the per-account counts: concurrent starts of one account take turns),
-- then, with a client_ip, an advisory lock on its network (the per-network counts, across accounts).
-- Errors: BL006 invalid_amount, BL009 invalid_argument, BL014 unsupported_currency, BL013 no_exchange_rate,
--         BL007 unknown_user, BL005 idempotency_conflict.
CREATE OR REPLACE FUNCTION billing.create_payment_intent(
    p_user_id uuid, p_provider text, p_amount numeric, p_currency text, p_idempotency_key text DEFAULT NULL,
    p_ttl interval DEFAULT interval '1 hour', p_client_ip inet DEFAULT NULL,
    OUT intent_id uuid, OUT provider text, OUT status text, OUT amount numeric, OUT currency text,
    OUT external_id text, OUT checkout_url text, OUT expires_at timestamptz, OUT created_at timestamptz,
    OUT replayed boolean, OUT rule text, OUT message text, OUT retry_at timestamptz, OUT retry_after integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_currency text := upper(btrim(coalesce(p_currency, '')));
    v_now      timestamptz;
    v_intent   billing.payment_intents;
    v_ip       inet := host(p_client_ip)::inet;
    v_network  cidr;
    v_born     timestamptz;
    v_refusal  record;
BEGIN
    PERFORM billing._check_usd(p_amount, 'amount');
    IF p_amount <> round(p_amount, 2) THEN
        RAISE EXCEPTION 'Invalid amount: a payment is made in cents or kopiykas, so at most 2 decimal places, not %.', p_amount
            USING ERRCODE = 'BL006', DETAIL = jsonb_build_object('field', 'amount', 'value', p_amount)::text;
    END IF;
    PERFORM billing._check_text(p_provider, 'provider', 50);
    IF p_provider !~ '^[a-z][a-z0-9_]{0,49}$' THEN
        RAISE EXCEPTION 'Invalid argument: provider % is not a provider name (lowercase letters, digits, _).', p_provider
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'provider')::text;
    END IF;
    PERFORM billing._check_text(p_idempotency_key, 'idempotency_key', 200, false);
    IF v_currency NOT IN ('USD', 'UAH') THEN
        RAISE EXCEPTION 'Unsupported currency %: payments are in USD or UAH.', p_currency
            USING ERRCODE = 'BL014', DETAIL = jsonb_build_object('currency', p_currency)::text;
    END IF;
    IF p_ttl IS NULL OR p_ttl <= interval '0' OR p_ttl > interval '30 days' THEN
        RAISE EXCEPTION 'Invalid argument: ttl must be positive and at most 30 days, not %.', coalesce(p_ttl::text, 'NULL')
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'ttl')::text;
    END IF;
    IF v_currency = 'UAH' AND (SELECT c.uah_per_usd FROM billing.config c) IS NULL THEN
        RAISE EXCEPTION 'No exchange rate: a UAH payment needs a UAH/USD rate to be credited, and none is set.'
            USING ERRCODE = 'BL013', DETAIL = jsonb_build_object('currency', 'UAH')::text,
                  HINT = 'Pay in USD, or ask an operator to set the rate (billing.set_exchange_rate).';
    END IF;
    -- The account's lock first: one account's starts take turns, so its caps count every intent before
    -- this one. The clock is read once the lock is held.
    SELECT u.created_at INTO v_born
      FROM billing.user_billing b JOIN billing.users u ON u.id = b.user_id
     WHERE b.user_id = p_user_id
       FOR UPDATE OF b;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown user: there is no billing account %.', coalesce(p_user_id::text, 'NULL')
            USING ERRCODE = 'BL007', DETAIL = jsonb_build_object('user_id', p_user_id)::text;
    END IF;
    v_now := coalesce((SELECT c.clock_override FROM billing.config c), clock_timestamp());

    replayed := false;
    IF p_idempotency_key IS NOT NULL THEN
        -- A replay answers the intent it started, before any cap: that intent was counted already.
        SELECT * INTO v_intent FROM billing.payment_intents i
         WHERE i.user_id = p_user_id AND i.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            IF v_intent.provider <> p_provider OR v_intent.amount <> p_amount OR v_intent.currency <> v_currency THEN
                RAISE EXCEPTION 'Idempotency conflict: key % already started a payment of % % via %.',
                        p_idempotency_key, v_intent.amount, v_intent.currency, v_intent.provider
                    USING ERRCODE = 'BL005',
                          DETAIL = jsonb_build_object('idempotency_key', p_idempotency_key,
                                                      'intent_id', v_intent.id, 'provider', v_intent.provider,
                                                      'amount', v_intent.amount, 'currency', v_intent.currency)::text;
            END IF;
            replayed := true;
        END IF;
    END IF;

    IF NOT replayed THEN
        -- Starts from one network, whatever the account, take turns on its advisory lock (after the
        -- account's row lock, in every caller: no cycle).
        IF v_ip IS NOT NULL THEN
            v_network := network(set_masklen(v_ip, CASE WHEN family(v_ip) = 6 THEN 64 ELSE 32 END));
            PERFORM pg_advisory_xact_lock(hashtextextended('tollgate.payment_network:' || v_network::text, 0));
        END IF;
        SELECT * INTO v_refusal FROM billing._payment_start_refusal(
            p_user_id, v_network,
            CASE WHEN v_currency = 'USD' THEN p_amount
                 ELSE round(p_amount / (SELECT c.uah_per_usd FROM billing.config c), 8) END,
            v_now, v_born);
        IF v_refusal.rule IS NOT NULL THEN
            PERFORM billing._record_abuse_event(
                v_refusal.rule, 'refused', p_user_id, v_ip,
                v_refusal.detail || jsonb_build_object('provider', p_provider, 'amount', p_amount,
                                                       'currency', v_currency));
            provider := p_provider;
            status := 'refused';
            amount := p_amount;
            currency := v_currency;
            created_at := v_now;
            rule := v_refusal.rule;
            message := v_refusal.message;
            retry_at := v_refusal.retry_at;
            retry_after := greatest(ceil(extract(epoch FROM v_refusal.retry_at - v_now)), 1)::integer;
            RETURN;
        END IF;
    END IF;

    IF replayed THEN
        NULL;
    ELSIF p_idempotency_key IS NOT NULL THEN
        -- The account's lock serialises its starts, so the key cannot have been taken since the look above.
        INSERT INTO billing.payment_intents AS i (user_id, provider, currency, amount, idempotency_key, expires_at,
                                                  client_ip, created_at, updated_at)
        VALUES (p_user_id, p_provider, v_currency, p_amount, p_idempotency_key, v_now + p_ttl, v_ip, v_now, v_now)
        RETURNING i.* INTO v_intent;
    ELSE
        INSERT INTO billing.payment_intents AS i (user_id, provider, currency, amount, expires_at, client_ip,
                                                  created_at, updated_at)
        VALUES (p_user_id, p_provider, v_currency, p_amount, v_now + p_ttl, v_ip, v_now, v_now)
        RETURNING i.* INTO v_intent;
    END IF;

    intent_id := v_intent.id;
    provider := v_intent.provider;
    status := v_intent.status;
    amount := v_intent.amount;
    currency := v_intent.currency;
    external_id := v_intent.external_id;
    checkout_url := v_intent.checkout_url;
    expires_at := v_intent.expires_at;
    created_at := v_intent.created_at;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.create_payment_intent(uuid, text, numeric, text, text, interval, inet) TO tollgate_payments;
