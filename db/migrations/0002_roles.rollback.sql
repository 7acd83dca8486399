-- Rolls back 0002: takes this database's privileges away from the Tollgate roles. The roles
-- themselves are cluster-wide and may hold privileges in other databases, so they are dropped
-- only when nothing else depends on them.
ALTER DEFAULT PRIVILEGES IN SCHEMA billing GRANT EXECUTE ON FUNCTIONS TO PUBLIC;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['tollgate_app', 'tollgate_analyst'] LOOP
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA billing FROM %I', r);
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA billing FROM %I', r);
            EXECUTE format('REVOKE ALL ON SCHEMA billing FROM %I', r);
            BEGIN
                EXECUTE format('DROP ROLE %I', r);
            EXCEPTION WHEN dependent_objects_still_exist THEN
                RAISE NOTICE 'role % still holds privileges elsewhere in the cluster; kept', r;
            END;
        END IF;
    END LOOP;
END
$$;
