-- billing._refund_cap_status(user_id, now) -> (cap_usd, period_days, refunded_usd)
-- The refund cap of one account as it stands at `now`: the cap (velocity.refund_cap_usd, default 100 USD)
-- and its period (velocity.refund_cap_days, default 30), and what operator refunds (ledger rows of type
-- 'refund') gave back to the account in that period. cap_usd is 0 when the cap is off (either figure 0).
-- Provider refunds and chargebacks (clawbacks: negative adjustments) take money back from the account and
-- are not counted. Read under the caller's lock of the account for an exact cap.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._refund_cap_status(
    p_user_id uuid, p_now timestamptz, OUT cap_usd numeric, OUT period_days numeric, OUT refunded_usd numeric)
LANGUAGE plpgsql STABLE
SET search_path = billing, pg_temp
AS $$
BEGIN
    cap_usd := billing._policy('velocity.refund_cap_usd', 100);
    period_days := billing._policy('velocity.refund_cap_days', 30);
    IF cap_usd <= 0 OR period_days <= 0 THEN
        cap_usd := 0;
        refunded_usd := 0;
        RETURN;
    END IF;
    SELECT coalesce(sum(t.amount_usd), 0) INTO refunded_usd
      FROM billing.billing_transactions t
     WHERE t.user_id = p_user_id AND t.type = 'refund'
       AND t.created_at > p_now - period_days * interval '1 day';
END;
$$;
