-- billing.written_off_calls: calls whose price was not charged in full, and why. Settlement never charges
-- past a call's hold more than the available balance and the day/month limit room cover at that moment,
-- nor more than a tool's declared max_price_usd (db/README.md, "Overrun"); the rest is written off here,
-- never charged to the user. What operators read to see what metered work went unpaid, by tool and user.
-- One row per written-off request (billing.write_offs), with the hold taken for it if any.
CREATE OR REPLACE VIEW billing.written_off_calls AS
SELECT w.request_id,
       w.created_at AS written_off_at,
       w.user_id,
       w.tool_name,
       r.amount_usd AS hold_usd,
       w.price_usd,
       w.max_price_usd,
       w.charged_usd,
       w.written_off_usd,
       w.reason,
       w.transaction_id
  FROM billing.write_offs w
  LEFT JOIN billing.reservations r ON r.request_id = w.request_id;

COMMENT ON VIEW billing.written_off_calls IS 'Calls charged less than their price: the part the hold, the available balance and the limits (or the tool''s declared maximum) did not cover was written off, not charged.';
COMMENT ON COLUMN billing.written_off_calls.request_id IS 'Request id of the call (the idempotency key of reserve/settle and of start_request/complete_request).';
COMMENT ON COLUMN billing.written_off_calls.written_off_at IS 'When the call was settled (the time the settlement acted at).';
COMMENT ON COLUMN billing.written_off_calls.user_id IS 'The billed user the call was settled for.';
COMMENT ON COLUMN billing.written_off_calls.tool_name IS 'Tool called; NULL for a hold settled through the SQL API without a tracked call.';
COMMENT ON COLUMN billing.written_off_calls.hold_usd IS 'USD held for the call before it ran (its bound); NULL when no hold was taken.';
COMMENT ON COLUMN billing.written_off_calls.price_usd IS 'The price of the call as computed (tool price of its reported cost, or the price it was settled at).';
COMMENT ON COLUMN billing.written_off_calls.max_price_usd IS 'The tool''s declared maximum price when the call completed; NULL when none.';
COMMENT ON COLUMN billing.written_off_calls.charged_usd IS 'USD actually charged (the ledger charge; 0 when nothing could be charged).';
COMMENT ON COLUMN billing.written_off_calls.written_off_usd IS 'USD written off: price_usd - charged_usd, never charged to the user.';
COMMENT ON COLUMN billing.written_off_calls.reason IS 'What bounded the charge: max_price (the declared maximum), insufficient_funds (the available balance), daily_limit or monthly_limit (the room left under the limit).';
COMMENT ON COLUMN billing.written_off_calls.transaction_id IS 'The ledger charge of the call; NULL when nothing was charged.';

GRANT SELECT ON billing.written_off_calls TO tollgate_analyst, tollgate_operator;
