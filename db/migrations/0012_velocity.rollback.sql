-- Rolls back 0012: velocity flags, the detector's roll-up, the refund cap's index and the client address of
-- tracked calls. The functions whose signature 0012 changed, and the ones only it added, are dropped; the next
-- `tollgate migrate` of the earlier code re-creates the former from its db/functions.
DROP FUNCTION IF EXISTS billing.begin_request(text, text, uuid, text, numeric, interval, integer, inet);
DROP FUNCTION IF EXISTS billing.start_request(text, text, uuid, text, inet);
DROP FUNCTION IF EXISTS billing.refund(bigint, numeric, text, text, text);
DROP FUNCTION IF EXISTS billing.detect_velocity(boolean);
DROP FUNCTION IF EXISTS billing.list_account_flags(uuid, text, integer);
DROP FUNCTION IF EXISTS billing.decide_account_flag(bigint, text, text, text);
DROP FUNCTION IF EXISTS billing.record_refused_refund(bigint, numeric, text, text);
DROP FUNCTION IF EXISTS billing._raise_account_flag(uuid, text, jsonb, boolean, timestamptz);
DROP FUNCTION IF EXISTS billing._refund_cap_status(uuid, timestamptz);
DROP FUNCTION IF EXISTS billing._pause_notice(uuid);
DROP INDEX billing.cost_tracking_users_recent;
DROP INDEX billing.billing_transactions_refunds_by_user;
DROP INDEX billing.billing_transactions_created_brin;
DROP TABLE billing.velocity_state;
DROP TABLE billing.spend_buckets;
DROP TABLE billing.account_flags;
ALTER TABLE billing.cost_tracking DROP COLUMN client_ip;
