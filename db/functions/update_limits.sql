-- billing.update_limits(user_id, daily_limit_usd, monthly_limit_usd)
--     -> (user_id, daily_limit_usd, monthly_limit_usd)
-- A user's own change of their daily and/or monthly spend limit (the gateway's PUT /api/billing/settings);
-- NULL leaves a limit as it is. The same rules as billing.update_settings, which it calls with every flag
-- left alone: the active flag, billing_enabled and the limit override stay administrator settings
-- (update_settings, granted to tollgate_operator only).
-- Locks: the user's user_billing row.
-- Errors: BL006 invalid_amount, BL007 unknown_user.
CREATE OR REPLACE FUNCTION billing.update_limits(
    p_user_id uuid, p_daily_limit_usd numeric DEFAULT NULL, p_monthly_limit_usd numeric DEFAULT NULL,
    OUT user_id uuid, OUT daily_limit_usd numeric, OUT monthly_limit_usd numeric)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
BEGIN
    SELECT s.user_id, s.daily_limit_usd, s.monthly_limit_usd
      INTO user_id, daily_limit_usd, monthly_limit_usd
      FROM billing.update_settings(p_user_id, p_daily_limit_usd, p_monthly_limit_usd) s;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.update_limits(uuid, numeric, numeric) TO tollgate_metering;
