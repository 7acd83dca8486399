-- billing._undo_fast_charge(user_id, amount_usd, uah_per_usd, released_hold_usd)
-- Takes back, within the same transaction, the account update of a fast-path charge or settlement
-- whose ledger row could not be written (the request turned out to be charged, or its hold no longer
-- held, once the account's lock was granted): balance, totals, request count, day/month spend,
-- version and the ledger head (the newest row's hash again) go back, and a hold the settlement freed
-- is counted again. The windows stay rolled over (harmless: rolling over is lazy anyway). The caller then answers through its exact path.
-- Locks: the user_billing row (already held by the caller).  Errors: none.
CREATE OR REPLACE FUNCTION billing._undo_fast_charge(
    p_user_id uuid, p_amount_usd numeric, p_uah_per_usd numeric, p_released_hold_usd numeric DEFAULT 0)
RETURNS void
LANGUAGE sql
AS $$
    UPDATE billing.user_billing b
       SET balance_usd     = b.balance_usd + p_amount_usd,
           balance_uah     = b.balance_uah + coalesce(round(p_amount_usd * p_uah_per_usd, 2), 0),
           held_usd        = b.held_usd + p_released_hold_usd,
           total_spent_usd = b.total_spent_usd - p_amount_usd,
           total_spent_uah = b.total_spent_uah - coalesce(round(p_amount_usd * p_uah_per_usd, 2), 0),
           total_requests  = b.total_requests - 1,
           day_spent_usd   = b.day_spent_usd - p_amount_usd,
           month_spent_usd = b.month_spent_usd - p_amount_usd,
           version         = b.version - 1,
           ledger_head     = (SELECT t.entry_hash FROM billing.billing_transactions t
                               WHERE t.user_id = p_user_id ORDER BY t.version DESC LIMIT 1),
           last_request_at = (SELECT t.created_at FROM billing.billing_transactions t
                               WHERE t.user_id = p_user_id AND t.type = 'charge' ORDER BY t.id DESC LIMIT 1)
     WHERE b.user_id = p_user_id;
$$;
