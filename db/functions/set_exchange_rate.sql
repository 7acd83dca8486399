-- billing.set_exchange_rate(currency, per_usd, valid_from) -> (id, currency, per_usd, valid_from)
-- Records the UAH/USD rate (UAH per 1 USD) in force from valid_from (default now). Transactions use
-- the newest rate at or before their time and record it; past transactions keep theirs.
-- Locks: none.  Errors: BL014 unsupported_currency, BL006 invalid_amount, BL005 idempotency_conflict
-- (a different rate was already recorded for that exact valid_from).
CREATE OR REPLACE FUNCTION billing.set_exchange_rate(
    p_currency text, p_per_usd numeric, p_valid_from timestamptz DEFAULT NULL,
    OUT id bigint, OUT currency text, OUT per_usd numeric, OUT valid_from timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_from timestamptz;
BEGIN
    IF upper(btrim(coalesce(p_currency, ''))) <> 'UAH' THEN
        RAISE EXCEPTION 'Unsupported currency %: the only exchange rate kept is UAH per USD.', p_currency
            USING ERRCODE = 'BL014', DETAIL = jsonb_build_object('currency', p_currency)::text;
    END IF;
    PERFORM billing._check_usd(p_per_usd, 'per_usd');
    IF p_per_usd >= 1000000 THEN
        RAISE EXCEPTION 'Invalid amount: per_usd % is not a plausible UAH/USD rate.', p_per_usd
            USING ERRCODE = 'BL006', DETAIL = jsonb_build_object('field', 'per_usd', 'value', p_per_usd)::text;
    END IF;
    SELECT coalesce(p_valid_from, c.clock_override, now()) INTO v_from FROM billing.config c;
    INSERT INTO billing.exchange_rates AS e (currency, per_usd, valid_from)
    VALUES ('UAH', p_per_usd, v_from)
    ON CONFLICT ON CONSTRAINT exchange_rates_currency_valid_from_key DO NOTHING
    RETURNING e.id, e.currency, e.per_usd, e.valid_from INTO id, currency, per_usd, valid_from;
    IF id IS NULL THEN
        SELECT e.id, e.currency, e.per_usd, e.valid_from INTO id, currency, per_usd, valid_from
          FROM billing.exchange_rates e WHERE e.currency = 'UAH' AND e.valid_from = v_from;
        IF per_usd <> p_per_usd THEN
            RAISE EXCEPTION 'Idempotency conflict: a rate of % UAH per USD is already recorded from %.', per_usd, v_from
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object('per_usd', per_usd, 'valid_from', v_from)::text;
        END IF;
    END IF;
END;
$$;
