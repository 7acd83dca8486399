-- billing.top_up(user_id, amount, provider, payment_id, currency, description, metadata) -> (transaction_id,
--     amount_usd, amount_uah, currency, exchange_rate, balance_before_usd, balance_after_usd, replayed)
-- Credits a confirmed payment: one 'topup' ledger row with its before/after snapshot, balance updated.
-- `amount` is in `currency`: USD (8 decimals) or UAH (2 decimals), converted to USD, the currency of
-- record, at the UAH rate in force (billing.set_exchange_rate); the rate is recorded on the row.
-- Top-ups are accepted on inactive accounts too (money in is never refused for that reason).
-- Idempotent on (provider, payment_id): a replay with the same user, amount and currency returns the
-- original transaction (replayed = true); anything else under the same payment is a conflict.
-- Crediting money is an operator/payment-provider path: the gateway never exposes it to users.
-- Locks: the user's user_billing row.
-- Errors: BL006 invalid_amount, BL009 invalid_argument, BL014 unsupported_currency, BL013 no_exchange_rate,
--         BL007 unknown_user, BL005 idempotency_conflict.
CREATE OR REPLACE FUNCTION billing.top_up(
    p_user_id uuid, p_amount numeric, p_provider text, p_payment_id text, p_currency text DEFAULT 'USD',
    p_description text DEFAULT NULL, p_metadata jsonb DEFAULT NULL,
    OUT transaction_id bigint, OUT amount_usd numeric, OUT amount_uah numeric, OUT currency text,
    OUT exchange_rate numeric, OUT balance_before_usd numeric, OUT balance_after_usd numeric,
    OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now      timestamptz;
    v_clock      timestamptz;
    v_tz       text;
    v_currency text := upper(btrim(coalesce(p_currency, 'USD')));
    v_usd      numeric;
    v_uah      numeric;
    v_rate     numeric;
    v_account  billing.user_billing;
    v_tx       billing.billing_transactions;
BEGIN
    PERFORM billing._check_usd(p_amount, 'amount');
    PERFORM billing._check_text(p_provider, 'payment_provider', 50);
    PERFORM billing._check_text(p_payment_id, 'payment_id');
    PERFORM billing._check_text(p_description, 'description', 1000, false, true);
    p_metadata := billing._check_metadata(p_metadata);
    IF v_currency NOT IN ('USD', 'UAH') THEN
        RAISE EXCEPTION 'Unsupported currency %: top-ups are in USD or UAH.', p_currency
            USING ERRCODE = 'BL014', DETAIL = jsonb_build_object('currency', p_currency)::text;
    END IF;
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;

    v_account := billing._load_account(p_user_id, v_tz, v_clock);
    v_now := v_account.updated_at;

    IF v_currency = 'UAH' THEN
        IF p_amount <> round(p_amount, 2) THEN
            RAISE EXCEPTION 'Invalid amount: a UAH amount has at most 2 decimal places, not %.', p_amount
                USING ERRCODE = 'BL006', DETAIL = jsonb_build_object('field', 'amount', 'value', p_amount)::text;
        END IF;
        SELECT c.uah_per_usd INTO v_rate FROM billing.config c;
        IF v_rate IS NULL THEN
            RAISE EXCEPTION 'No exchange rate: a UAH top-up needs a UAH/USD rate and none is set.'
                USING ERRCODE = 'BL013', DETAIL = jsonb_build_object('currency', 'UAH')::text,
                      HINT = 'Set one with billing.set_exchange_rate(''UAH'', per_usd).';
        END IF;
        v_uah := p_amount;
        v_usd := billing._check_usd(round(p_amount / v_rate, 8), 'amount converted to USD');
    ELSE
        v_usd := p_amount;
    END IF;

    SELECT * INTO v_tx FROM billing.billing_transactions t
     WHERE t.payment_provider = p_provider AND t.payment_id = p_payment_id AND t.type = 'topup';
    IF FOUND THEN
        IF v_tx.user_id <> p_user_id OR v_tx.currency <> v_currency
           OR (v_currency = 'USD' AND v_tx.amount_usd <> p_amount)
           OR (v_currency = 'UAH' AND v_tx.amount_uah <> p_amount) THEN
            RAISE EXCEPTION 'Idempotency conflict: payment % of % was already credited with other details.',
                    p_payment_id, p_provider
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object(
                          'payment_provider', p_provider, 'payment_id', p_payment_id,
                          'credited_usd', v_tx.amount_usd, 'credited_currency', v_tx.currency,
                          'requested_amount', p_amount, 'requested_currency', v_currency,
                          'same_user', v_tx.user_id = p_user_id)::text;
        END IF;
        replayed := true;
    ELSE
        v_tx := billing._append_ledger(
            v_account, v_now, 'topup', v_usd, NULL,
            coalesce(p_description, format('Top-up via %s', p_provider)), p_metadata,
            v_currency, v_uah, v_rate, p_provider, p_payment_id);
        IF v_tx.id IS NULL THEN
            RAISE EXCEPTION 'Idempotency conflict: payment % of % was already credited to another user.',
                    p_payment_id, p_provider
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object('payment_provider', p_provider, 'payment_id', p_payment_id,
                                                  'same_user', false)::text;
        END IF;
        PERFORM billing._save_account(billing._account_after(v_account, v_tx));
        replayed := false;
    END IF;

    transaction_id := v_tx.id;
    amount_usd := v_tx.amount_usd;
    amount_uah := v_tx.amount_uah;
    currency := v_tx.currency;
    exchange_rate := v_tx.exchange_rate;
    balance_before_usd := v_tx.balance_before_usd;
    balance_after_usd := v_tx.balance_after_usd;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.top_up(uuid, numeric, text, text, text, text, jsonb) TO tollgate_operator;
