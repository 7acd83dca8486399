-- billing.record_refused_refund(transaction_id, amount_usd, reason, actor) -> bigint
-- The audit row of a refund the refund cap refused (billing.abuse_events: rule velocity.refund_cap, action
-- 'refused', the figures, the reason asked and the actor). billing.refund refuses by raising BL030, which
-- rolls its own work back; the caller runs this after catching it, in a transaction that commits (the
-- gateway's admin API does, on its autocommit connection). It re-reads the cap rather than trusting the
-- caller's figures: when the refund would not pass the cap (any more) nothing is written and the answer
-- is NULL; otherwise the new event's id.
-- Locks: none (a read of the account's refunds).
-- Errors: BL006 invalid_amount, BL009 invalid_argument, BL010 unknown_transaction.
CREATE OR REPLACE FUNCTION billing.record_refused_refund(
    p_transaction_id bigint, p_amount_usd numeric, p_reason text, p_actor text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_user_id uuid;
    v_now     timestamptz;
    v_cap     record;
BEGIN
    PERFORM billing._check_usd(p_amount_usd, 'amount_usd');
    PERFORM billing._check_text(p_reason, 'reason', 1000, false, true);
    p_actor := coalesce(billing._check_text(p_actor, 'actor', 200, false), session_user::text);
    SELECT t.user_id INTO v_user_id FROM billing.billing_transactions t WHERE t.id = p_transaction_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown transaction: there is no ledger transaction %.', coalesce(p_transaction_id::text, 'NULL')
            USING ERRCODE = 'BL010', DETAIL = jsonb_build_object('transaction_id', p_transaction_id)::text;
    END IF;
    SELECT coalesce(c.clock_override, now()) INTO v_now FROM billing.config c;
    v_cap := billing._refund_cap_status(v_user_id, v_now);
    IF v_cap.cap_usd <= 0 OR v_cap.refunded_usd + p_amount_usd <= v_cap.cap_usd THEN
        RETURN NULL;
    END IF;
    RETURN billing._record_abuse_event(
        'velocity.refund_cap', 'refused', v_user_id, NULL,
        jsonb_build_object(
            'transaction_id', p_transaction_id, 'requested_usd', p_amount_usd, 'cap_usd', v_cap.cap_usd,
            'period_days', v_cap.period_days, 'refunded_usd', v_cap.refunded_usd,
            'remaining_usd', greatest(v_cap.cap_usd - v_cap.refunded_usd, 0), 'reason', p_reason),
        p_actor);
END;
$$;

GRANT EXECUTE ON FUNCTION billing.record_refused_refund(bigint, numeric, text, text) TO tollgate_operator;
