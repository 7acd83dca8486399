-- billing._uncool_clawback(user_id, clawed_usd, now)
-- A provider reversal (refund or chargeback) took `clawed_usd` of card credit back while the account is
-- cooling off (billing._apply_reversals): the cooling credit shrinks by as much (that money is gone, it
-- can no longer be withheld) and the part not spendable yet is recomputed with the current figure of
-- payments.cooling_off_spendable_usd. Nothing happens outside a cooling-off.
-- Locks: the user's user_billing row (already held by the caller).  Errors: none.
CREATE OR REPLACE FUNCTION billing._uncool_clawback(p_user_id uuid, p_clawed_usd numeric, p_now timestamptz)
RETURNS void
LANGUAGE sql
SET search_path = billing, pg_temp
AS $$
    UPDATE billing.user_billing b
       SET cooling_credit_usd = greatest(b.cooling_credit_usd - p_clawed_usd, 0),
           cooling_usd = greatest(greatest(b.cooling_credit_usd - p_clawed_usd, 0)
                                  - billing._policy('payments.cooling_off_spendable_usd', 5), 0)
     WHERE b.user_id = p_user_id AND p_clawed_usd > 0 AND b.cooling_credit_usd > 0 AND b.cooling_until > p_now;
$$;
