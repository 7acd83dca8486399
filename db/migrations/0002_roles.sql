-- depends: 0001_ledger_schema
-- Roles of docs/design.md §5. Roles are cluster-wide, so they are created only when missing.
--   tollgate_app      may EXECUTE the public billing functions, nothing else (no table access);
--   tollgate_analyst  may SELECT the views in db/views, nothing else.
-- Both are NOLOGIN group roles: grant them to the login roles of a deployment.
-- The grants on individual functions and views are (re)made by `tollgate migrate` every time it
-- re-applies db/functions and db/views.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tollgate_app') THEN
        CREATE ROLE tollgate_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tollgate_analyst') THEN
        CREATE ROLE tollgate_analyst NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON SCHEMA billing FROM PUBLIC;
GRANT USAGE ON SCHEMA billing TO tollgate_app, tollgate_analyst;
REVOKE ALL ON ALL TABLES IN SCHEMA billing FROM PUBLIC, tollgate_app, tollgate_analyst;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA billing FROM PUBLIC, tollgate_app, tollgate_analyst;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA billing FROM PUBLIC;
-- Functions created later by the migrating role are not executable by PUBLIC either.
ALTER DEFAULT PRIVILEGES IN SCHEMA billing REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
