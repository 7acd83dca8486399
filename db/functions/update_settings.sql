-- billing.update_settings(user_id, daily_limit_usd, monthly_limit_usd, is_active, billing_enabled,
--     limit_override) -> (user_id, daily_limit_usd, monthly_limit_usd, is_active, billing_enabled, limit_override)
-- Changes a user's limits and flags; NULL leaves a setting as it is. Limits are USD amounts >= 0
-- (0 allows no spend) with at most 8 decimals and below 1e12. A daily limit above the monthly one is
-- accepted (the monthly limit then binds first). Lowering a limit below what is already spent or held
-- refuses new holds and charges until the window resets; it never touches past charges.
-- An operator's function (tollgate_operator): the flags and the override are administrator settings.
-- A user changes their own limits through billing.update_limits (tollgate_metering), which calls this.
-- Locks: the user's user_billing row.
-- Errors: BL006 invalid_amount, BL007 unknown_user.
CREATE OR REPLACE FUNCTION billing.update_settings(
    p_user_id uuid, p_daily_limit_usd numeric DEFAULT NULL, p_monthly_limit_usd numeric DEFAULT NULL,
    p_is_active boolean DEFAULT NULL, p_billing_enabled boolean DEFAULT NULL, p_limit_override boolean DEFAULT NULL,
    OUT user_id uuid, OUT daily_limit_usd numeric, OUT monthly_limit_usd numeric, OUT is_active boolean,
    OUT billing_enabled boolean, OUT limit_override boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_clock timestamptz;
    v_tz  text;
BEGIN
    IF p_daily_limit_usd IS NOT NULL THEN
        PERFORM billing._check_usd(p_daily_limit_usd, 'daily_limit_usd', 'non_negative');
    END IF;
    IF p_monthly_limit_usd IS NOT NULL THEN
        PERFORM billing._check_usd(p_monthly_limit_usd, 'monthly_limit_usd', 'non_negative');
    END IF;
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;
    PERFORM billing._load_account(p_user_id, v_tz, v_clock);  -- locks the row; BL007 when unknown
    UPDATE billing.user_billing b
       SET daily_limit_usd   = coalesce(p_daily_limit_usd, b.daily_limit_usd),
           monthly_limit_usd = coalesce(p_monthly_limit_usd, b.monthly_limit_usd),
           is_active         = coalesce(p_is_active, b.is_active),
           billing_enabled   = coalesce(p_billing_enabled, b.billing_enabled),
           limit_override    = coalesce(p_limit_override, b.limit_override),
           updated_at        = greatest(b.updated_at, now())
     WHERE b.user_id = p_user_id
    RETURNING b.user_id, b.daily_limit_usd, b.monthly_limit_usd, b.is_active, b.billing_enabled, b.limit_override
         INTO user_id, daily_limit_usd, monthly_limit_usd, is_active, billing_enabled, limit_override;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.update_settings(uuid, numeric, numeric, boolean, boolean, boolean) TO tollgate_operator;
