-- billing.check_balance(user_id, cost) -> (sufficient, balance_usd, held_usd, available_usd, shortfall_usd)
-- Whether the available balance (balance - open holds - a new payer's credit still cooling off; expired
-- holds and a finished cooling-off no longer count) covers `cost`,
-- with the figures. A read-only answer: it takes no lock, so a concurrent call may change it; only
-- billing.reserve and billing.charge decide atomically.
-- Locks: none.  Errors: BL006 invalid_amount (cost), BL007 unknown_user.
CREATE OR REPLACE FUNCTION billing.check_balance(
    p_user_id uuid, p_cost numeric,
    OUT sufficient boolean, OUT balance_usd numeric, OUT held_usd numeric,
    OUT available_usd numeric, OUT shortfall_usd numeric)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_clock     timestamptz;
    v_tz      text;
    v_account billing.user_billing;
BEGIN
    PERFORM billing._check_usd(p_cost, 'cost', 'non_negative');
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;
    v_account := billing._load_account(p_user_id, v_tz, v_clock, false);
    balance_usd := v_account.balance_usd;
    held_usd := v_account.held_usd;
    available_usd := billing._available_usd(v_account.balance_usd, v_account.held_usd, v_account.cooling_usd);
    sufficient := available_usd >= p_cost;
    shortfall_usd := greatest(p_cost - available_usd, 0);
END;
$$;

GRANT EXECUTE ON FUNCTION billing.check_balance(uuid, numeric) TO tollgate_metering;
