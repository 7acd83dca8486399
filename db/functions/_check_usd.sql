-- billing._check_usd(amount, field, rule) -> numeric
-- Validates a USD amount argument before anything is read or written: present, a finite number,
-- at most 8 decimal places, below 1e12 in magnitude, and positive / non-negative / non-zero as `rule`
-- says ('positive', 'non_negative', 'non_zero'). Returns the amount unchanged.
-- Locks: none.  Errors: BL006 invalid_amount.
CREATE OR REPLACE FUNCTION billing._check_usd(p_amount numeric, p_field text, p_rule text DEFAULT 'positive')
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_problem text;
BEGIN
    IF p_amount IS NULL THEN
        v_problem := 'is required';
    ELSIF p_amount = 'NaN'::numeric THEN
        v_problem := 'must be a number, not NaN';
    ELSIF p_amount IN ('Infinity'::numeric, '-Infinity'::numeric) THEN
        v_problem := 'must be finite';
    ELSIF p_amount <> round(p_amount, 8) THEN
        v_problem := 'has more than 8 decimal places';
    ELSIF abs(p_amount) >= 1e12 THEN
        v_problem := 'is too large (must be below 1000000000000)';
    ELSIF p_rule = 'positive' AND p_amount <= 0 THEN
        v_problem := 'must be greater than zero';
    ELSIF p_rule = 'non_negative' AND p_amount < 0 THEN
        v_problem := 'must not be negative';
    ELSIF p_rule = 'non_zero' AND p_amount = 0 THEN
        v_problem := 'must not be zero';
    ELSE
        RETURN p_amount;
    END IF;
    RAISE EXCEPTION 'Invalid amount: % %.', p_field, v_problem
        USING ERRCODE = 'BL006',
              DETAIL = jsonb_build_object('field', p_field, 'value', p_amount::text, 'rule', p_rule)::text,
              HINT = 'Send a finite decimal number with at most 8 decimal places.';
END;
$$;
