-- billing._refuse_unaffordable(account, amount, time_zone)
-- Raises unless a new hold or charge of `amount` may be taken on the (locked, current) account:
-- the account must be active, the available balance (balance - open holds - a new payer's credit still
-- cooling off) must cover the amount (when cooling credit is what is missing, the refusal says how much
-- cools and until when, with cooling_usd and cooling_until in its DETAIL), and
-- today's and this month's spend + open holds + amount must stay within the limits unless the admin
-- override is set. The DETAIL of each refusal is a JSON object with the figures.
-- Locks: none beyond the caller's.
-- A deactivated account that an open velocity flag paused (billing.account_flags) is answered as paused
-- pending review, with the flag's id to quote to the operator (DETAIL: paused, flag_id, rule, raised_at).
-- Errors: BL004 account_inactive, BL001 insufficient_funds, BL002 daily_limit_exceeded,
--         BL003 monthly_limit_exceeded.
CREATE OR REPLACE FUNCTION billing._refuse_unaffordable(
    p_account billing.user_billing, p_amount numeric, p_time_zone text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_available numeric := billing._available_usd(p_account.balance_usd, p_account.held_usd, p_account.cooling_usd);
    v_limit     record;
    v_flag      record;
BEGIN
    IF NOT p_account.is_active THEN
        SELECT f.id, f.rule, f.raised_at INTO v_flag
          FROM billing.account_flags f
         WHERE f.user_id = p_account.user_id AND f.status = 'open' AND f.paused
         ORDER BY f.id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'Account paused pending review: unusual activity on this account paused it at %, and no new charges are taken until an operator has reviewed it.',
                    to_char(v_flag.raised_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                USING ERRCODE = 'BL004',
                      DETAIL = jsonb_build_object('user_id', p_account.user_id, 'paused', true, 'flag_id', v_flag.id,
                                                  'rule', v_flag.rule, 'raised_at', v_flag.raised_at)::text,
                      HINT = format('Contact the operator of this gateway about review flag #%s; once it is cleared the account is active again.', v_flag.id);
        END IF;
        RAISE EXCEPTION 'Account inactive: billing for this user is deactivated, so no new charges are taken.'
            USING ERRCODE = 'BL004',
                  DETAIL = jsonb_build_object('user_id', p_account.user_id)::text,
                  HINT = 'Ask an administrator to reactivate the account.';
    END IF;
    IF v_available < p_amount AND p_account.cooling_usd > 0 THEN
        -- A new payer's fresh card credit is part of the balance but not spendable yet: say how much and until when.
        RAISE EXCEPTION 'Insufficient funds: this needs % USD but only % USD is available: % USD of your recent top-up is cooling off until % (a new payer''s first card payments are spendable up to % USD in their first % hours).',
                billing._fmt_usd(p_amount), billing._fmt_usd(greatest(v_available, 0)),
                billing._fmt_usd(p_account.cooling_usd),
                to_char(p_account.cooling_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                billing._fmt_usd(billing._policy('payments.cooling_off_spendable_usd', 5)),
                billing._policy('payments.cooling_off_hours', 24)
            USING ERRCODE = 'BL001',
                  DETAIL = jsonb_build_object(
                      'required_usd', p_amount, 'balance_usd', p_account.balance_usd,
                      'held_usd', p_account.held_usd, 'available_usd', v_available,
                      'shortfall_usd', p_amount - v_available,
                      'cooling_usd', p_account.cooling_usd, 'cooling_until', p_account.cooling_until,
                      'rule', 'payments.cooling_off')::text,
                  HINT = format('The cooling credit becomes spendable at %s UTC; wait until then, or top up again.',
                                to_char(p_account.cooling_until AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'));
    END IF;
    IF v_available < p_amount THEN
        RAISE EXCEPTION 'Insufficient funds: this needs % USD but only % USD is available.',
                billing._fmt_usd(p_amount), billing._fmt_usd(greatest(v_available, 0))
            USING ERRCODE = 'BL001',
                  DETAIL = jsonb_build_object(
                      'required_usd', p_amount, 'balance_usd', p_account.balance_usd,
                      'held_usd', p_account.held_usd, 'available_usd', v_available,
                      'shortfall_usd', p_amount - v_available)::text,
                  HINT = 'Top up the balance, then try again.';
    END IF;
    v_limit := billing._limit_status(p_account, p_amount, p_time_zone);
    IF NOT v_limit.allowed THEN
        RAISE EXCEPTION '% spend limit reached: % USD of % USD is spent or held, and this needs % USD more. The limit resets at %.',
                initcap(v_limit.limit_type), billing._fmt_usd(v_limit.spent_usd + v_limit.held_usd),
                billing._fmt_usd(v_limit.limit_usd), billing._fmt_usd(p_amount),
                to_char(v_limit.resets_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            USING ERRCODE = CASE v_limit.limit_type WHEN 'daily' THEN 'BL002' ELSE 'BL003' END,
                  DETAIL = jsonb_build_object(
                      'limit', v_limit.limit_type, 'limit_usd', v_limit.limit_usd,
                      'spent_usd', v_limit.spent_usd, 'held_usd', v_limit.held_usd,
                      'required_usd', p_amount, 'remaining_usd', v_limit.remaining_usd,
                      'resets_at', v_limit.resets_at)::text,
                  HINT = 'Wait until the limit resets, or raise the limit in the billing settings.';
    END IF;
END;
$$;
