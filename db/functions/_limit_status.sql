-- billing._limit_status(account, amount, time_zone) -> (allowed, limit_type, spent_usd, held_usd, limit_usd,
--                                                     remaining_usd, resets_at, override)
-- Whether `amount` more fits the daily and monthly limits of an account whose windows are current
-- (rolled over by billing._load_account): today's/this month's spend + open holds
-- + amount must not pass the limit. Reports the limit that refuses (daily first), or when both allow,
-- the one with less room left. With the admin override set, always allowed (figures still reported).
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._limit_status(
    p_account billing.user_billing, p_amount numeric, p_time_zone text,
    OUT allowed boolean, OUT limit_type text, OUT spent_usd numeric, OUT held_usd numeric,
    OUT limit_usd numeric, OUT remaining_usd numeric, OUT resets_at timestamptz, OUT override boolean)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_day_room   numeric := billing._limit_room(p_account.daily_limit_usd, p_account.day_spent_usd, p_account.held_usd);
    v_month_room numeric := billing._limit_room(p_account.monthly_limit_usd, p_account.month_spent_usd, p_account.held_usd);
BEGIN
    override := p_account.limit_override;
    held_usd := p_account.held_usd;
    IF v_day_room < p_amount OR (v_month_room >= p_amount AND v_day_room <= v_month_room) THEN
        limit_type := 'daily';
        spent_usd := p_account.day_spent_usd;
        limit_usd := p_account.daily_limit_usd;
        remaining_usd := greatest(v_day_room, 0);
        resets_at := (p_account.day_start + 1)::timestamp AT TIME ZONE p_time_zone;
    ELSE
        limit_type := 'monthly';
        spent_usd := p_account.month_spent_usd;
        limit_usd := p_account.monthly_limit_usd;
        remaining_usd := greatest(v_month_room, 0);
        resets_at := (p_account.month_start + interval '1 month')::timestamp AT TIME ZONE p_time_zone;
    END IF;
    -- The rule the fast paths of charge and reserve inline.
    allowed := billing._within_limits(
        p_account.limit_override, p_account.daily_limit_usd, p_account.day_spent_usd,
        p_account.monthly_limit_usd, p_account.month_spent_usd, p_account.held_usd, p_amount);
END;
$$;
