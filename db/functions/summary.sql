-- billing.summary(user_id) -> jsonb
-- The user's billing summary in the original system's shape (getBillingSummary), plus what enforcement
-- adds: {"user_id", "balance_usd", "balance_uah", "held_usd", "available_usd", "total_spent_usd",
-- "total_spent_uah", "total_requests", "limits": {"daily_usd", "monthly_usd"},
-- "usage": {"today_usd", "month_usd"}, "is_active", "billing_enabled", "limit_override",
-- "last_request_at" (UTC, "YYYY-MM-DDTHH:MI:SSZ" or null), "cooling_usd", "cooling_until"}.
-- cooling_usd is a new payer's fresh card credit that is not spendable before cooling_until (UTC, as
-- above; null when nothing cools): available_usd = balance - held - cooling (docs/abuse.md, cooling-off).
-- Today's and this month's spend come from the account's counters (rolled over lazily in the
-- configured time zone), never from a scan of the ledger. Money values are JSON numbers with 8
-- decimals (UAH: 2); parse them as decimals.
-- Locks: none.  Errors: BL007 unknown_user.
CREATE OR REPLACE FUNCTION billing.summary(p_user_id uuid)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_clock     timestamptz;
    v_tz      text;
    v_account billing.user_billing;
BEGIN
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;
    v_account := billing._load_account(p_user_id, v_tz, v_clock, false);
    RETURN jsonb_build_object(
        'user_id', v_account.user_id,
        'balance_usd', v_account.balance_usd,
        'balance_uah', v_account.balance_uah,
        'held_usd', v_account.held_usd,
        'available_usd', billing._available_usd(v_account.balance_usd, v_account.held_usd, v_account.cooling_usd),
        'cooling_usd', v_account.cooling_usd,
        'cooling_until', CASE WHEN v_account.cooling_usd > 0
                              THEN to_char(v_account.cooling_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') END,
        'total_spent_usd', v_account.total_spent_usd,
        'total_spent_uah', v_account.total_spent_uah,
        'total_requests', v_account.total_requests,
        'limits', jsonb_build_object('daily_usd', v_account.daily_limit_usd,
                                     'monthly_usd', v_account.monthly_limit_usd),
        'usage', jsonb_build_object('today_usd', v_account.day_spent_usd,
                                    'month_usd', v_account.month_spent_usd),
        'is_active', v_account.is_active,
        'billing_enabled', v_account.billing_enabled,
        'limit_override', v_account.limit_override,
        'last_request_at', to_char(v_account.last_request_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
END;
$$;

GRANT EXECUTE ON FUNCTION billing.summary(uuid) TO tollgate_metering, tollgate_operator;
