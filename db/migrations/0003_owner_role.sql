-- depends: 0002_roles
-- A dedicated, non-superuser owner for everything in schema billing. The public functions are
-- SECURITY DEFINER, so they run with their owner's rights: owned by the (often superuser) role that
-- migrates, a flaw in one would run as superuser. Owned by tollgate_owner, they can reach the billing
-- tables and nothing else. `tollgate migrate` gives every function and view re-applied from
-- db/functions and db/views to tollgate_owner as well.
-- The migrating role must be a superuser or a member of tollgate_owner.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tollgate_owner') THEN
        CREATE ROLE tollgate_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;

ALTER SCHEMA billing OWNER TO tollgate_owner;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS relation, c.relkind
          FROM pg_class c
         WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO tollgate_owner',
                       CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                      ELSE 'TABLE' END,
                       r.relation);
    END LOOP;
    FOR r IN
        SELECT p.oid::regprocedure AS routine FROM pg_proc p WHERE p.pronamespace = 'billing'::regnamespace
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO tollgate_owner', r.routine);
    END LOOP;
END
$$;
