-- billing.list_tool_pricing() -> setof billing.tool_pricing
-- Every priced tool, by name (the table itself is private to every run-time role).
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing.list_tool_pricing()
RETURNS SETOF billing.tool_pricing
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$ SELECT * FROM billing.tool_pricing ORDER BY tool_name $$;

GRANT EXECUTE ON FUNCTION billing.list_tool_pricing() TO tollgate_metering, tollgate_operator;
