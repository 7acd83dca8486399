-- billing.list_abuse_policy() -> setof (name, value, updated_at, updated_by)
-- The stored figures of the abuse rules, by name (a rule with no row uses its documented default).
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing.list_abuse_policy(
    OUT name text, OUT value numeric, OUT updated_at timestamptz, OUT updated_by text)
RETURNS SETOF record
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
    SELECT p.name, p.value, p.updated_at, p.updated_by FROM billing.abuse_policy p ORDER BY p.name
$$;

GRANT EXECUTE ON FUNCTION billing.list_abuse_policy() TO tollgate_operator;
