-- Rolls back 0008: the write-offs, the declared bounds and the index of billed calls. The functions whose
-- signature or result 0008 changed are dropped with the helpers only they use; the next `tollgate migrate`
-- of the earlier code re-creates them (and every other function) from its db/functions.
DROP VIEW IF EXISTS billing.written_off_calls;
DROP FUNCTION IF EXISTS billing.settle(text, numeric, text, jsonb);
DROP FUNCTION IF EXISTS billing.complete_request(text, boolean, numeric, jsonb, integer, text, numeric, text);
DROP FUNCTION IF EXISTS billing.begin_request(text, text, uuid, text, numeric, interval, integer);
DROP FUNCTION IF EXISTS billing.estimate_price(text, integer);
DROP FUNCTION IF EXISTS billing.set_tool_pricing(text, numeric, numeric, numeric, boolean, text, numeric, numeric);
DROP FUNCTION IF EXISTS billing._settlement_cover(billing.user_billing, numeric, numeric);
DROP FUNCTION IF EXISTS billing._record_write_off(text, uuid, text, numeric, numeric, numeric, text, bigint,
                                                 timestamptz);
DROP TABLE billing.write_offs;
DROP INDEX billing.cost_tracking_billed_by_tool;
CREATE INDEX cost_tracking_completed_by_tool ON billing.cost_tracking (tool_name, id DESC) INCLUDE (price_usd)
    WHERE status = 'completed' AND price_usd IS NOT NULL;
ALTER TABLE billing.tool_pricing
    DROP CONSTRAINT tool_pricing_max_covers_base,
    DROP COLUMN per_input_char_usd,
    DROP COLUMN max_price_usd;
