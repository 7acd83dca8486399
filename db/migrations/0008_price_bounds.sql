-- depends: 0007_payment_review
-- A price is bounded before the call (docs/design.md §6; issue 12, items 5 and 6):
--  * tool_pricing may declare the most one call is ever charged (max_price_usd) and an estimate from the
--    call's arguments (per_input_char_usd); billing.estimate_price holds that bound;
--  * settlement never charges past the hold unless the available balance and the limits cover the excess
--    at that moment; what is not covered is recorded in write_offs (never charged), and
--    billing.written_off_calls shows it;
--  * billing.estimate_price learns only from billed calls: the partial index behind it now lists billed
--    calls only, with the user of each, so the sample can be capped per user from the index alone.
-- Functions whose signature or result changes are dropped here (when they exist: on a fresh database
-- db/functions has not run yet); db/functions re-creates them right after (a CREATE OR REPLACE cannot
-- change a result type, and a new argument would leave a stale overload).

ALTER TABLE billing.tool_pricing
    -- The most one call is charged, whatever the tool reports; also the hold when declared.
    ADD COLUMN max_price_usd numeric(20, 8)
        CONSTRAINT tool_pricing_max_price_range
        CHECK (max_price_usd IS NULL OR (max_price_usd > 0 AND max_price_usd < 1000000000000)),
    -- The hold from the call's arguments: base_price_usd + input characters x this x (1 + markup/100).
    -- Rates per character are often below a micro-cent, hence 12 decimals.
    ADD COLUMN per_input_char_usd numeric(20, 12)
        CONSTRAINT tool_pricing_per_input_char_range
        CHECK (per_input_char_usd IS NULL OR (per_input_char_usd >= 0 AND per_input_char_usd < 1000000)),
    ADD CONSTRAINT tool_pricing_max_covers_base CHECK (max_price_usd IS NULL OR max_price_usd >= base_price_usd);

-- One row per settled or completed call whose price was not charged in full: the price it was priced at,
-- what was charged (the ledger row, if any) and what was written off, with the reason. Written in the
-- transaction of the settlement; billing.verify_ledger checks that rows and charges agree.
CREATE TABLE billing.write_offs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id      text NOT NULL CONSTRAINT write_offs_request_unique UNIQUE
                    CHECK (length(request_id) BETWEEN 1 AND 200),
    user_id         uuid NOT NULL REFERENCES billing.users (id),
    -- The tracked call's tool; NULL for a hold settled through the SQL API without a tracked call.
    tool_name       text CHECK (tool_name IS NULL OR length(tool_name) BETWEEN 1 AND 200),
    price_usd       numeric(20, 8) NOT NULL CHECK (price_usd > 0),
    max_price_usd   numeric(20, 8) CHECK (max_price_usd IS NULL OR max_price_usd > 0),
    charged_usd     numeric(20, 8) NOT NULL CHECK (charged_usd >= 0),
    written_off_usd numeric(20, 8) NOT NULL CHECK (written_off_usd > 0),
    reason          text NOT NULL CHECK (reason IN ('max_price', 'insufficient_funds', 'daily_limit', 'monthly_limit')),
    transaction_id  bigint REFERENCES billing.billing_transactions (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT write_offs_add_up CHECK (price_usd = charged_usd + written_off_usd),
    CONSTRAINT write_offs_charge_recorded CHECK ((transaction_id IS NULL) = (charged_usd = 0))
);
CREATE INDEX write_offs_user_created ON billing.write_offs (user_id, created_at);
CREATE INDEX write_offs_created ON billing.write_offs (created_at);
ALTER TABLE billing.write_offs OWNER TO tollgate_owner;

-- billing.estimate_price: the newest billed calls of a tool (a ledger charge: never anonymous, unbound
-- API-key or billing-disabled calls), with their user and price, read from the index alone.
DROP INDEX billing.cost_tracking_completed_by_tool;
CREATE INDEX cost_tracking_billed_by_tool ON billing.cost_tracking (tool_name, id DESC) INCLUDE (user_id, price_usd)
    WHERE status = 'completed' AND transaction_id IS NOT NULL;

DROP FUNCTION IF EXISTS billing.settle(text, numeric, text, jsonb);
DROP FUNCTION IF EXISTS billing.complete_request(text, boolean, numeric, jsonb, integer, text, numeric, text);
DROP FUNCTION IF EXISTS billing.begin_request(text, text, uuid, text, numeric, interval);
DROP FUNCTION IF EXISTS billing.estimate_price(text);
DROP FUNCTION IF EXISTS billing.set_tool_pricing(text, numeric, numeric, numeric, boolean, text);
