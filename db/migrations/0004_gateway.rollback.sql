-- Rolls back 0004: drops the API keys (and the functions that only work with them) and the gateway's
-- indexes on cost_tracking. billing.estimate_price, billing.begin_request and billing.unbilled_calls
-- still work without the indexes (slower), so they stay until the next `tollgate migrate`.
DROP FUNCTION IF EXISTS billing.create_api_key(text, bytea, text, uuid);
DROP FUNCTION IF EXISTS billing.revoke_api_key(text);
DROP FUNCTION IF EXISTS billing.list_api_keys();
DROP FUNCTION IF EXISTS billing.authenticate_api_key(bytea);
DROP TABLE billing.api_keys;
DROP INDEX billing.cost_tracking_pending;
DROP INDEX billing.cost_tracking_completed_by_tool;
