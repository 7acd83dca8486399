-- billing.open_payment_intents(provider, min_age, lookback, limit) -> setof (intent_id, user_id, provider,
--     status, amount, currency, external_id, payment_ref, expires_at, created_at)
-- The intents reconciliation asks the provider about, oldest first: open ones (created, pending) at
-- least `min_age` old (younger ones are still being paid), and those created within `lookback` that
-- failed or expired (a late success must still be credited), succeeded (refunds and chargebacks
-- a missed webhook did not report) or in review (the same, for an operator's credit to apply; and a
-- checkout recorded since is credited when it matches). `provider` NULL means all providers.
-- Locks: none.  Errors: BL009 invalid_argument.
CREATE OR REPLACE FUNCTION billing.open_payment_intents(
    p_provider text DEFAULT NULL, p_min_age interval DEFAULT interval '5 minutes',
    p_lookback interval DEFAULT interval '7 days', p_limit integer DEFAULT 1000)
RETURNS TABLE (intent_id uuid, user_id uuid, provider text, status text, amount numeric, currency text,
               external_id text, payment_ref text, expires_at timestamptz, created_at timestamptz)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now timestamptz := coalesce((SELECT c.clock_override FROM billing.config c), clock_timestamp());
BEGIN
    IF p_min_age IS NULL OR p_min_age < interval '0' OR p_min_age > interval '3660 days'
       OR p_lookback IS NULL OR p_lookback < interval '0' OR p_lookback > interval '3660 days'
       OR p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'Invalid argument: min_age and lookback must be from zero to 10 years and limit between 1 and 100000.'
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'min_age/lookback/limit')::text;
    END IF;
    RETURN QUERY
    SELECT i.id, i.user_id, i.provider, i.status, i.amount, i.currency, i.external_id, i.payment_ref,
           i.expires_at, i.created_at
      FROM billing.payment_intents i
     WHERE (p_provider IS NULL OR i.provider = p_provider)
       AND ((i.status IN ('created', 'pending') AND i.created_at <= v_now - p_min_age)
            OR (i.status IN ('failed', 'expired', 'succeeded', 'review') AND i.created_at >= v_now - p_lookback))
     ORDER BY i.created_at, i.id
     LIMIT p_limit;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.open_payment_intents(text, interval, interval, integer) TO tollgate_payments;
