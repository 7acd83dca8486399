-- Rolls back 0003: the migrating role owns schema billing and its objects again; tollgate_owner is
-- dropped unless it still owns or holds something elsewhere in the cluster.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS relation, c.relkind
          FROM pg_class c
         WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO CURRENT_USER',
                       CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                      ELSE 'TABLE' END,
                       r.relation);
    END LOOP;
    FOR r IN
        SELECT p.oid::regprocedure AS routine FROM pg_proc p WHERE p.pronamespace = 'billing'::regnamespace
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO CURRENT_USER', r.routine);
    END LOOP;
    ALTER SCHEMA billing OWNER TO CURRENT_USER;
    BEGIN
        DROP ROLE tollgate_owner;
    EXCEPTION WHEN dependent_objects_still_exist THEN
        RAISE NOTICE 'role tollgate_owner still owns objects elsewhere in the cluster; kept';
    END;
END
$$;
