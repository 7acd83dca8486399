-- Rolls back 0006: tollgate_app may EXECUTE every public function of this database again (as after
-- 0005), and the metering, payments and operator roles lose this database's privileges. The roles are
-- cluster-wide and may hold privileges in other databases (another Tollgate database at 0006), so they
-- are dropped only when nothing else depends on them; with them go their memberships (tollgate_app's in
-- tollgate_metering, the login roles' in theirs).
DO $$
DECLARE
    r record;
    role_name text;
BEGIN
    FOR r IN
        SELECT p.oid::regprocedure AS routine
          FROM pg_proc p
         WHERE p.pronamespace = 'billing'::regnamespace AND p.prokind IN ('f', 'p') AND left(p.proname, 1) <> '_'
    LOOP
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO tollgate_app', r.routine);
    END LOOP;
    FOREACH role_name IN ARRAY ARRAY['tollgate_metering', 'tollgate_payments', 'tollgate_operator'] LOOP
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA billing FROM %I', role_name);
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA billing FROM %I', role_name);
            EXECUTE format('REVOKE ALL ON SCHEMA billing FROM %I', role_name);
            BEGIN
                EXECUTE format('DROP ROLE %I', role_name);
            EXCEPTION WHEN dependent_objects_still_exist THEN
                RAISE NOTICE 'role % still holds privileges elsewhere in the cluster; kept', role_name;
            END;
        END IF;
    END LOOP;
END
$$;
