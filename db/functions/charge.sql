-- billing.charge(user_id, request_id, amount_usd, description, metadata) -> (transaction_id, request_id, status,
--     amount_usd, balance_before_usd, balance_after_usd, replayed)
-- Direct charge without a hold: checks the account is active, the available balance (balance - open
-- holds) covers the amount and the day/month limits allow it (unless overridden), then writes one
-- 'charge' ledger row (amount_usd stored negative) with its before/after snapshot and updates the
-- balance, totals, request count and day/month spend, all in the caller's transaction.
-- billing_enabled = false: nothing is charged; status 'not_billed', transaction_id NULL.
-- Idempotent on request_id: a replay with the same user and amount returns the original charge
-- (replayed = true) even if the balance has changed since; another user or amount is a conflict.
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
BEGIN
    PERFORM billing._check_usd(p_amount_usd, 'amount_usd');
    PERFORM billing._check_text(p_request_id, 'request_id');
    PERFORM billing._check_text(p_description, 'description', 1000, false, true);
    p_metadata := billing._check_metadata(p_metadata);
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
