-- billing._settlement_cover(account, hold_usd, price_usd) -> (charge_usd, reason)
-- How much of `price_usd`, the price of a call that already ran, may be charged to the account: the
-- settlement rule of db/README.md ("Overrun"). The call's own hold (`hold_usd`; 0 when it took none or the
-- hold expired) is its own, so the charge may always use it; above it, only what is free may be taken:
--   free    = balance - open holds (the available balance), and unless limit_override, also
--             daily limit - today's spend - open holds, and monthly limit - this month's spend - open holds;
--   bound   = greatest(hold, free), never more than the balance itself (a hold a debit or a clawback left
--             uncovered is not charged into a negative balance), never below 0;
--   charge  = least(price, bound).
-- `p_account` must be the locked, current account (billing._load_account) with the call's own hold
-- already taken out of held_usd, so that held_usd is the account's *other* open holds: with its own hold
-- counted in "open holds", "hold + the excess that fits" is the same greatest(hold, free).
-- reason is NULL when the whole price is charged, else what bounded it: 'insufficient_funds',
-- 'daily_limit' or 'monthly_limit' (the smallest of the three rooms; the balance wins a tie).
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._settlement_cover(
    p_account billing.user_billing, p_hold_usd numeric, p_price_usd numeric,
    OUT charge_usd numeric, OUT reason text)
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_free       numeric := billing._available_usd(p_account.balance_usd, p_account.held_usd, p_account.cooling_usd);
    v_day_room   numeric := billing._limit_room(p_account.daily_limit_usd, p_account.day_spent_usd, p_account.held_usd);
    v_month_room numeric := billing._limit_room(p_account.monthly_limit_usd, p_account.month_spent_usd, p_account.held_usd);
    v_bound      numeric;
BEGIN
    reason := 'insufficient_funds';
    IF NOT p_account.limit_override THEN
        IF v_day_room < v_free THEN
            v_free := v_day_room;
            reason := 'daily_limit';
        END IF;
        IF v_month_room < v_free THEN
            v_free := v_month_room;
            reason := 'monthly_limit';
        END IF;
    END IF;
    v_bound := greatest(p_hold_usd, v_free);
    IF v_bound > greatest(p_account.balance_usd, 0) THEN
        v_bound := greatest(p_account.balance_usd, 0);
        reason := 'insufficient_funds';
    END IF;
    IF p_price_usd <= v_bound THEN
        charge_usd := p_price_usd;
        reason := NULL;
    ELSE
        charge_usd := greatest(v_bound, 0);
    END IF;
END;
$$;
