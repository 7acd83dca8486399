-- billing.unbilled_calls: tool calls that started (and maybe ran) but were never closed by
-- billing.complete_request, so they are neither charged nor released: what reconciliation looks at.
-- A call stays here while its tool runs (seconds); an old row means the gateway lost the outcome
-- (crash, ledger unreachable after the tool ran). Reads cost_tracking through its small partial index
-- of pending rows (migration 0004). The age follows the test clock when one is set (billing.config).
CREATE OR REPLACE VIEW billing.unbilled_calls AS
SELECT ct.request_id,
       ct.tool_name,
       ct.user_id,
       ct.client_key,
       ct.created_at,
       coalesce(c.clock_override, now()) - ct.created_at AS age,
       r.amount_usd AS hold_usd,
       r.status AS hold_status,
       r.expires_at AS hold_expires_at
  FROM billing.cost_tracking ct
 CROSS JOIN billing.config c
  LEFT JOIN billing.reservations r ON r.request_id = ct.request_id
 WHERE ct.status = 'pending';

COMMENT ON VIEW billing.unbilled_calls IS 'Tool calls started and never completed: not charged, not released. Old rows need reconciliation (`tollgate ledger reconcile`).';
COMMENT ON COLUMN billing.unbilled_calls.request_id IS 'Request id of the call (the idempotency key of start_request, reserve and complete_request).';
COMMENT ON COLUMN billing.unbilled_calls.tool_name IS 'Tool called.';
COMMENT ON COLUMN billing.unbilled_calls.user_id IS 'Billed user (JWT caller or user-bound API key); NULL for anonymous and unbound API-key callers.';
COMMENT ON COLUMN billing.unbilled_calls.client_key IS 'Name of the API key the call came with, if any.';
COMMENT ON COLUMN billing.unbilled_calls.created_at IS 'When the call was started.';
COMMENT ON COLUMN billing.unbilled_calls.age IS 'How long the call has been open (now minus created_at).';
COMMENT ON COLUMN billing.unbilled_calls.hold_usd IS 'USD held for the call before it ran; NULL when no hold was taken.';
COMMENT ON COLUMN billing.unbilled_calls.hold_status IS 'Status of that hold: held; expired once its TTL passed (it no longer counts against the balance); released or settled when closed outside complete_request; NULL when none.';
COMMENT ON COLUMN billing.unbilled_calls.hold_expires_at IS 'When the hold lapses (or lapsed); NULL when none.';

GRANT SELECT ON billing.unbilled_calls TO tollgate_analyst, tollgate_operator;
