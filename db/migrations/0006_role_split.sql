-- depends: 0005_payments
-- Least privilege at run time (docs/design.md §5): the single tollgate_app role is split by authority.
--   tollgate_metering  tracking, holds, settlement and the caller's own reads and limits: the gateway's
--                      call path;
--   tollgate_payments  money in: payment intents, provider events, their expiry;
--   tollgate_operator  credits, adjustments, refunds, settings, prices, API keys, ledger checks;
--   tollgate_analyst   (0002) SELECT on the views;
--   tollgate_owner     (0003) owns everything; only migrations use it.
-- All are NOLOGIN group roles; a deployment logs in as members of them (the gateway's own logins,
-- tollgate_gw_metering, tollgate_gw_payments and tollgate_gw_operator, are made by `tollgate migrate` and
-- `tollgate run` from the owner's URL where it may create roles, or by the DBA).
-- Which function each role may EXECUTE is the GRANT line at the end of the function's file in
-- db/functions (views: db/views); `tollgate migrate` revokes every EXECUTE and SELECT from these roles
-- before it re-applies the files, so a grant removed from a file disappears from the database.
--
-- tollgate_app (0002) stays, deprecated, as an alias of tollgate_metering: its members (logins made
-- for earlier versions) keep the gateway's call path and lose top_up, adjust, refund, configuration,
-- API keys and payment events. Its own direct grants are revoked here.
-- Roles are cluster-wide, so they are created only when missing.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['tollgate_metering', 'tollgate_payments', 'tollgate_operator'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', r);
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA billing TO tollgate_metering, tollgate_payments, tollgate_operator;
REVOKE ALL ON ALL TABLES IN SCHEMA billing FROM tollgate_metering, tollgate_payments, tollgate_operator;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA billing FROM tollgate_metering, tollgate_payments, tollgate_operator;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA billing FROM tollgate_app;
GRANT tollgate_metering TO tollgate_app;
