-- billing._policy(name, default) -> numeric
-- The figure of an abuse rule (billing.abuse_policy), or `default` when none is stored. The defaults live
-- with the rules that use them (each caller passes its documented default), so a fresh ledger enforces
-- sane limits before any gateway has written its configuration.
-- Locks: none.  Errors: none.
CREATE OR REPLACE FUNCTION billing._policy(p_name text, p_default numeric)
RETURNS numeric
LANGUAGE sql STABLE
SET search_path = billing, pg_temp
AS $$
    SELECT coalesce((SELECT p.value FROM billing.abuse_policy p WHERE p.name = p_name), p_default)
$$;
