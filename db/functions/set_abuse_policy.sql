-- billing.set_abuse_policy(name, value, actor) -> (name, value, updated_at, updated_by, changed)
-- Stores the figure of an abuse rule (billing.abuse_policy). The gateway writes its configured figures at
-- start-up; `changed` is false when the stored value was already that (no write). Figures are numbers
-- >= 0 (counts, USD amounts, minutes, ratios; 0 turns a cap off where the rule says so).
-- Locks: the policy row.  Errors: BL009 invalid_argument (name, actor), BL006 invalid_amount (value).
CREATE OR REPLACE FUNCTION billing.set_abuse_policy(
    p_name text, p_value numeric, p_actor text,
    OUT name text, OUT value numeric, OUT updated_at timestamptz, OUT updated_by text, OUT changed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
BEGIN
    PERFORM billing._check_text(p_name, 'name', 63);
    PERFORM billing._check_text(p_actor, 'actor', 200);
    IF p_name !~ '^[a-z][a-z0-9_.]{0,62}$' THEN
        RAISE EXCEPTION 'Invalid argument: name must be lower-case letters, digits, "_" and "." (got %).', p_name
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'name', 'value', p_name)::text;
    END IF;
    IF p_value IS NULL OR p_value = 'NaN'::numeric OR p_value < 0 OR p_value >= 1000000000000 THEN
        RAISE EXCEPTION 'Invalid amount: the value of % must be a number >= 0 and < 1e12 (got %).', p_name, p_value
            USING ERRCODE = 'BL006', DETAIL = jsonb_build_object('field', 'value', 'value', p_value::text)::text;
    END IF;
    INSERT INTO billing.abuse_policy AS p (name, value, updated_by)
    VALUES (p_name, p_value, p_actor)
    ON CONFLICT ON CONSTRAINT abuse_policy_pkey DO UPDATE
        SET value = excluded.value, updated_at = now(), updated_by = excluded.updated_by
        WHERE p.value IS DISTINCT FROM excluded.value
    RETURNING p.name, p.value, p.updated_at, p.updated_by, true
         INTO name, value, updated_at, updated_by, changed;
    IF name IS NULL THEN
        SELECT p.name, p.value, p.updated_at, p.updated_by, false
          INTO name, value, updated_at, updated_by, changed
          FROM billing.abuse_policy p WHERE p.name = p_name;
    END IF;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.set_abuse_policy(text, numeric, text) TO tollgate_operator;
