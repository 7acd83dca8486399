-- billing._account_after(account, transaction) -> billing.user_billing
-- The in-memory account after a ledger row written by billing._append_ledger: balances, version and
-- the chain's head (ledger_head) follow the row; a charge also adds to the totals, the request count and
-- the day/month spend of the windows the account is in (refunds do not lower spend: spend counters are gross, see db/README.md).
-- The one place where counters follow the ledger; billing.verify_ledger checks the same rules.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._account_after(p_account billing.user_billing, p_tx billing.billing_transactions)
RETURNS billing.user_billing
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_account billing.user_billing := p_account;
BEGIN
    v_account.balance_usd := p_tx.balance_after_usd;
    v_account.balance_uah := v_account.balance_uah + coalesce(p_tx.amount_uah, 0);
    v_account.version := p_tx.version;
    v_account.ledger_head := p_tx.entry_hash;
    IF p_tx.type = 'charge' THEN
        v_account.total_spent_usd := v_account.total_spent_usd - p_tx.amount_usd;
        v_account.total_spent_uah := v_account.total_spent_uah - coalesce(p_tx.amount_uah, 0);
        v_account.total_requests := v_account.total_requests + 1;
        v_account.day_spent_usd := v_account.day_spent_usd - p_tx.amount_usd;
        v_account.month_spent_usd := v_account.month_spent_usd - p_tx.amount_usd;
        v_account.last_request_at := p_tx.created_at;
    END IF;
    RETURN v_account;
END;
$$;
