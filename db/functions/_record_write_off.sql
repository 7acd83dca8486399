-- billing._record_write_off(request_id, user_id, tool_name, price_usd, max_price_usd, charged_usd, reason,
--     transaction_id, now)
-- Records that a settled call priced `price_usd` was charged only `charged_usd` (in the ledger row
-- `transaction_id`, NULL when nothing was charged): the difference is written off, never charged
-- (billing.written_off_calls shows it). Called in the settlement's transaction, on the locked account.
-- One row per request: billing.settle writes the part its funds and limits could not cover; when
-- billing.complete_request then also capped the price at the tool's max_price_usd, it widens the same row
-- to the full price (the reason stays the one of the tighter bound, the funds or a limit).
-- Locks: the write_offs row.  Errors: none.
CREATE OR REPLACE FUNCTION billing._record_write_off(
    p_request_id text, p_user_id uuid, p_tool_name text, p_price_usd numeric, p_max_price_usd numeric,
    p_charged_usd numeric, p_reason text, p_transaction_id bigint, p_now timestamptz)
RETURNS void
LANGUAGE sql
AS $$
    INSERT INTO billing.write_offs AS w (
        request_id, user_id, tool_name, price_usd, max_price_usd, charged_usd, written_off_usd, reason,
        transaction_id, created_at)
    VALUES (p_request_id, p_user_id, p_tool_name, p_price_usd, p_max_price_usd, p_charged_usd,
            p_price_usd - p_charged_usd, p_reason, p_transaction_id, p_now)
    ON CONFLICT (request_id) DO UPDATE
       SET tool_name = coalesce(EXCLUDED.tool_name, w.tool_name), price_usd = EXCLUDED.price_usd,
           max_price_usd = EXCLUDED.max_price_usd, charged_usd = EXCLUDED.charged_usd,
           written_off_usd = EXCLUDED.written_off_usd, transaction_id = EXCLUDED.transaction_id;
$$;
