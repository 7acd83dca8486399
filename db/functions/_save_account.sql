-- billing._save_account(account)
-- Writes back the counters of a user_billing row that the caller locked with billing._load_account and
-- changed in memory (balances, holds, totals, day/month windows, version and ledger head, last request). Settings
-- (limits, flags) are not touched: billing.update_settings owns them. updated_at becomes the effective
-- time the caller acted at (set by billing._load_account).
-- Locks: the user_billing row (already held by the caller).  Errors: none.
CREATE OR REPLACE FUNCTION billing._save_account(p_account billing.user_billing)
RETURNS void
LANGUAGE sql
AS $$
    UPDATE billing.user_billing
       SET balance_usd     = p_account.balance_usd,
           balance_uah     = p_account.balance_uah,
           held_usd        = p_account.held_usd,
           holds_expire_at = p_account.holds_expire_at,
           total_spent_usd = p_account.total_spent_usd,
           total_spent_uah = p_account.total_spent_uah,
           total_requests  = p_account.total_requests,
           day_spent_usd   = p_account.day_spent_usd,
           day_start       = p_account.day_start,
           month_spent_usd = p_account.month_spent_usd,
           month_start     = p_account.month_start,
           version         = p_account.version,
           ledger_head     = p_account.ledger_head,
           last_request_at = p_account.last_request_at,
           updated_at      = p_account.updated_at
     WHERE user_id = p_account.user_id;
$$;
