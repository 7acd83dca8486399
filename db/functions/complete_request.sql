-- billing.complete_request(request_id, success, total_cost_usd, cost_breakdown, execution_time_ms, error,
--     price_usd, description) -> (request_id, status, price_usd, charged_usd, written_off_usd, transaction_id,
--     billed, replayed)
-- Closes the cost-tracking record of a tool call (the original CostTracker.completeTrackingRecord) and,
-- in the same transaction, bills it:
--  * success with a user: the price (price_usd, or billing.tool_price(tool, total_cost_usd) when NULL) is
--    capped at the tool's max_price_usd when one is declared, then settles the call's hold (billing.settle)
--    or, when no hold was taken, is charged directly; either way under the settlement policy of
--    billing.settle (db/README.md, "Overrun"): up to the hold, and above it only what the available balance
--    and the day/month limit room cover now (billing._settlement_cover). The rest of the price is written
--    off (billing.write_offs, reason 'max_price' when only the declared maximum cut it), never charged.
--    Price 0 or billing disabled: the hold is freed, nothing is charged and nothing is written off.
--  * success without a user (anonymous or API-key calls): tracked with its price, not charged.
--  * failure: the hold, if any, is released; nothing is charged.
-- cost_tracking.price_usd keeps the price as computed; the charge is the ledger row (transaction_id), and
-- the result says both: charged_usd and written_off_usd (price_usd = charged_usd + written_off_usd for a
-- billed user's call). billed is true when a ledger charge was written.
-- Idempotent on request_id: a replay with the same outcome, cost and price returns the stored result,
-- charged and written-off figures included (replayed = true); a different one is a conflict.
-- Locks: the cost_tracking row, then the user's user_billing row (always in this order).
-- Errors: BL009 invalid_argument, BL006 invalid_amount, BL008 unknown_request, BL005 idempotency_conflict
--         (also when the request's hold belongs to another user than the tracked caller),
--         BL012 invalid_state (the hold was released before a successful completion).
CREATE OR REPLACE FUNCTION billing.complete_request(
    p_request_id text, p_success boolean, p_total_cost_usd numeric DEFAULT 0, p_cost_breakdown jsonb DEFAULT NULL,
    p_execution_time_ms integer DEFAULT NULL, p_error text DEFAULT NULL, p_price_usd numeric DEFAULT NULL,
    p_description text DEFAULT NULL,
    OUT request_id text, OUT status text, OUT price_usd numeric, OUT charged_usd numeric,
    OUT written_off_usd numeric, OUT transaction_id bigint, OUT billed boolean, OUT replayed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = billing, pg_temp
AS $$
DECLARE
    v_now       timestamptz;
    v_clock     timestamptz;
    v_tz        text;
    v_tracking  billing.cost_tracking;
    v_account   billing.user_billing;
    v_tx        billing.billing_transactions;
    v_held      text;
    v_holder    uuid;
    v_metadata  jsonb;
    v_max_usd   numeric;
    v_capped    numeric;
    v_cover     record;
    v_billing   boolean;
    v_reason    text;
    v_acted_at  timestamptz;
BEGIN
    PERFORM billing._check_text(p_request_id, 'request_id');
    IF p_success IS NULL THEN
        RAISE EXCEPTION 'Invalid argument: success is required (true or false).'
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'success')::text;
    END IF;
    PERFORM billing._check_usd(p_total_cost_usd, 'total_cost_usd', 'non_negative');
    IF p_price_usd IS NOT NULL THEN
        PERFORM billing._check_usd(p_price_usd, 'price_usd', 'non_negative');
    END IF;
    IF p_cost_breakdown IS NOT NULL AND (jsonb_typeof(p_cost_breakdown) NOT IN ('array', 'object')
                                         OR octet_length(p_cost_breakdown::text) > 65536) THEN
        RAISE EXCEPTION 'Invalid argument: cost_breakdown must be a JSON array or object of at most 64 KiB.'
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'cost_breakdown')::text;
    END IF;
    IF p_execution_time_ms < 0 THEN
        RAISE EXCEPTION 'Invalid argument: execution_time_ms must not be negative (got %).', p_execution_time_ms
            USING ERRCODE = 'BL009', DETAIL = jsonb_build_object('field', 'execution_time_ms')::text;
    END IF;
    PERFORM billing._check_text(p_error, 'error', 4000, false, true);
    PERFORM billing._check_text(p_description, 'description', 1000, false, true);
    SELECT c.clock_override, c.time_zone INTO v_clock, v_tz FROM billing.config c;
    v_now := coalesce(v_clock, now());

    SELECT * INTO v_tracking FROM billing.cost_tracking ct WHERE ct.request_id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Unknown request: no tracked call with request id %.', p_request_id
            USING ERRCODE = 'BL008', DETAIL = jsonb_build_object('request_id', p_request_id)::text,
                  HINT = 'Open it with billing.start_request first.';
    END IF;
    request_id := p_request_id;

    IF v_tracking.status <> 'pending' THEN
        IF (v_tracking.status = 'completed') <> p_success
           OR v_tracking.total_cost_usd <> p_total_cost_usd
           OR (p_success AND p_price_usd IS NOT NULL AND v_tracking.price_usd <> p_price_usd) THEN
            RAISE EXCEPTION 'Idempotency conflict: request % was already completed as % with cost % USD.',
                    p_request_id, v_tracking.status, billing._fmt_usd(v_tracking.total_cost_usd)
                USING ERRCODE = 'BL005',
                      DETAIL = jsonb_build_object('request_id', p_request_id, 'status', v_tracking.status,
                                                  'total_cost_usd', v_tracking.total_cost_usd,
                                                  'price_usd', v_tracking.price_usd)::text;
        END IF;
        status := v_tracking.status;
        price_usd := v_tracking.price_usd;
        transaction_id := v_tracking.transaction_id;
        charged_usd := coalesce((SELECT -t.amount_usd FROM billing.billing_transactions t
                                  WHERE t.id = v_tracking.transaction_id), 0);
        written_off_usd := coalesce((SELECT w.written_off_usd FROM billing.write_offs w
                                      WHERE w.request_id = p_request_id), 0);
        billed := v_tracking.transaction_id IS NOT NULL;
        replayed := true;
        RETURN;
    END IF;

    SELECT r.status, r.user_id INTO v_held, v_holder FROM billing.reservations r WHERE r.request_id = p_request_id;
    IF v_held IS NOT NULL AND v_holder IS DISTINCT FROM v_tracking.user_id THEN
        RAISE EXCEPTION 'Idempotency conflict: request % holds money of another user than the caller it was tracked for.',
                p_request_id
            USING ERRCODE = 'BL005',
                  DETAIL = jsonb_build_object('request_id', p_request_id, 'tracked_user_id', v_tracking.user_id,
                                              'hold_user_id', v_holder)::text,
                  HINT = 'Use one request_id per call, for start_request, reserve and complete_request alike.';
    END IF;
    charged_usd := 0;
    written_off_usd := 0;
    IF p_success THEN
        status := 'completed';
        price_usd := coalesce(p_price_usd, billing.tool_price(v_tracking.tool_name, p_total_cost_usd))::numeric(20, 8);
        v_metadata := jsonb_build_object('tool_name', v_tracking.tool_name, 'total_cost_usd', p_total_cost_usd);
        SELECT p.max_price_usd INTO v_max_usd FROM billing.tool_pricing p WHERE p.tool_name = v_tracking.tool_name;
        v_capped := least(price_usd, v_max_usd);  -- least() ignores a NULL maximum
        IF v_tracking.user_id IS NOT NULL AND v_held IS NOT NULL THEN
            SELECT s.transaction_id, s.charged_usd INTO transaction_id, charged_usd
              FROM billing.settle(p_request_id, v_capped, coalesce(p_description, 'Tool call: ' || v_tracking.tool_name),
                                  v_metadata) s;
            IF charged_usd < price_usd THEN
                -- settle holds the account's lock now: this reads the flag and the time it acted on, and
                -- the reason of the write-off it made when the funds or a limit bounded the charge.
                SELECT b.billing_enabled, b.updated_at INTO v_billing, v_acted_at
                  FROM billing.user_billing b WHERE b.user_id = v_tracking.user_id;
                SELECT w.reason INTO v_reason FROM billing.write_offs w WHERE w.request_id = p_request_id;
            END IF;
        ELSIF v_tracking.user_id IS NOT NULL AND price_usd > 0 THEN
            v_account := billing._load_account(v_tracking.user_id, v_tz, v_clock);
            v_billing := v_account.billing_enabled;
            v_acted_at := v_account.updated_at;
            IF v_billing THEN
                v_cover := billing._settlement_cover(v_account, 0, v_capped);
                v_reason := v_cover.reason;
                IF v_cover.charge_usd > 0 THEN
                    v_tx := billing._record_charge(v_account, v_acted_at, p_request_id, v_cover.charge_usd,
                                                   coalesce(p_description, 'Tool call: ' || v_tracking.tool_name),
                                                   v_metadata);
                    PERFORM billing._save_account(billing._account_after(v_account, v_tx));
                    transaction_id := v_tx.id;
                    charged_usd := v_cover.charge_usd;
                END IF;
            END IF;
        END IF;
        IF v_billing AND charged_usd < price_usd THEN
            written_off_usd := price_usd - charged_usd;
            PERFORM billing._record_write_off(
                p_request_id, v_tracking.user_id, v_tracking.tool_name, price_usd, v_max_usd, charged_usd,
                CASE WHEN charged_usd = v_capped THEN 'max_price' ELSE v_reason END, transaction_id, v_acted_at);
        END IF;
    ELSE
        status := 'failed';
        IF v_held = 'held' THEN
            PERFORM billing.release(p_request_id);
        END IF;
    END IF;

    UPDATE billing.cost_tracking ct
       SET status = complete_request.status,
           cost_breakdown = coalesce(p_cost_breakdown, ct.cost_breakdown),
           total_cost_usd = p_total_cost_usd,
           price_usd = complete_request.price_usd,
           transaction_id = complete_request.transaction_id,
           execution_time_ms = p_execution_time_ms,
           error = p_error,
           completed_at = v_now
     WHERE ct.id = v_tracking.id;
    billed := transaction_id IS NOT NULL;
    replayed := false;
END;
$$;

GRANT EXECUTE ON FUNCTION billing.complete_request(text, boolean, numeric, jsonb, integer, text, numeric, text) TO tollgate_metering, tollgate_operator;
