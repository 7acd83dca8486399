-- billing.charges_by_tool: per tool, calls tracked and what they cost and earned.
CREATE OR REPLACE VIEW billing.charges_by_tool AS
SELECT ct.tool_name,
       count(*) AS calls,
       count(*) FILTER (WHERE ct.status = 'completed') AS completed_calls,
       count(*) FILTER (WHERE ct.status = 'failed') AS failed_calls,
       count(*) FILTER (WHERE ct.status = 'pending') AS pending_calls,
       count(*) FILTER (WHERE ct.transaction_id IS NOT NULL) AS billed_calls,
       count(*) FILTER (WHERE ct.user_id IS NULL) AS unbilled_caller_calls,
       coalesce(sum(-t.amount_usd), 0) AS charged_usd,
       coalesce(sum(ct.total_cost_usd) FILTER (WHERE ct.status = 'completed'), 0) AS cost_usd,
       coalesce(sum(-t.amount_usd), 0)
           - coalesce(sum(ct.total_cost_usd) FILTER (WHERE ct.transaction_id IS NOT NULL), 0) AS margin_usd,
       avg(ct.execution_time_ms) FILTER (WHERE ct.status = 'completed')::numeric(20, 2) AS avg_execution_time_ms,
       min(ct.created_at) AS first_call_at,
       max(ct.created_at) AS last_call_at
  FROM billing.cost_tracking ct
  LEFT JOIN billing.billing_transactions t ON t.id = ct.transaction_id
 GROUP BY ct.tool_name;

COMMENT ON VIEW billing.charges_by_tool IS 'Per tool: calls tracked (all callers), calls billed, USD charged, metered cost and margin.';
COMMENT ON COLUMN billing.charges_by_tool.tool_name IS 'Tool name as called through the gateway.';
COMMENT ON COLUMN billing.charges_by_tool.calls IS 'Calls tracked, whatever their outcome or caller.';
COMMENT ON COLUMN billing.charges_by_tool.completed_calls IS 'Calls that succeeded.';
COMMENT ON COLUMN billing.charges_by_tool.failed_calls IS 'Calls that failed (never charged).';
COMMENT ON COLUMN billing.charges_by_tool.pending_calls IS 'Calls started and not yet completed.';
COMMENT ON COLUMN billing.charges_by_tool.billed_calls IS 'Calls with a charge in the ledger.';
COMMENT ON COLUMN billing.charges_by_tool.unbilled_caller_calls IS 'Calls by anonymous or API-key callers (tracked, not charged).';
COMMENT ON COLUMN billing.charges_by_tool.charged_usd IS 'USD charged for the tool''s calls (before refunds).';
COMMENT ON COLUMN billing.charges_by_tool.cost_usd IS 'Metered cost reported by successful calls (what the calls cost us).';
COMMENT ON COLUMN billing.charges_by_tool.margin_usd IS 'charged_usd minus the metered cost of the billed calls.';
COMMENT ON COLUMN billing.charges_by_tool.avg_execution_time_ms IS 'Mean execution time of successful calls.';
COMMENT ON COLUMN billing.charges_by_tool.first_call_at IS 'First tracked call.';
COMMENT ON COLUMN billing.charges_by_tool.last_call_at IS 'Newest tracked call.';

GRANT SELECT ON billing.charges_by_tool TO tollgate_analyst;
