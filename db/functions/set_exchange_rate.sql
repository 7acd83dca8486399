-- billing.set_exchange_rate(currency, per_usd, valid_from) -> (id, currency, per_usd, valid_from)
-- Records the UAH/USD rate (UAH per 1 USD) in force from valid_from (default now; a past time may be
-- given to backfill history, a future one is refused). The newest rate is the one in force: it is
-- kept in billing.config, and every transaction from then on records it. Past transactions keep theirs.
-- Locks: the billing.config row.
-- Errors: BL014 unsupported_currency, BL006 invalid_amount, BL009 invalid_argument (future valid_from),
--         BL005 idempotency_conflict (a different rate was already recorded for that exact valid_from).
CREATE OR REPLACE FUNCTION billing.set_exchange_rate(
    p_currency text, p_per_usd numeric, p_valid_from timestamptz DEFAULT NULL,
    OUT id bigint, OUT currency text, OUT per_usd numeric, OUT valid_from timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now  timestamptz;
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
    SELECT coalesce(c.clock_override, now()) INTO v_now FROM billing.config c FOR UPDATE;
    v_from := coalesce(p_valid_from, v_now);
    IF v_from > v_now THEN
        RAISE EXCEPTION 'Invalid argument: valid_from % is in the future: record a rate when it takes effect.', v_from
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'valid_from', 'value', v_from)::text;
    END IF;
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
    -- The rate in force is the newest one.
    UPDATE billing.config c
       SET uah_per_usd = e.per_usd, uah_rate_from = e.valid_from
      FROM (SELECT x.per_usd, x.valid_from FROM billing.exchange_rates x
             WHERE x.currency = 'UAH' ORDER BY x.valid_from DESC LIMIT 1) e
     WHERE c.uah_rate_from IS DISTINCT FROM e.valid_from;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.set_exchange_rate(text, numeric, timestamp with time zone) TO tollgate_operator;
