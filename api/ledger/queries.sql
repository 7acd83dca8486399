-- Every SQL statement the Python package runs against the ledger, by name. Each block is a
-- `-- name --` header, a one-line comment, and one statement with %(param)s placeholders.
-- Application code only ever calls billing.* functions and reads billing.* views (docs/design.md §1:
-- money moves only in PL/pgSQL); login_role, the gateway's check of its own connections, reads the system catalogs.

-- ensure_account --
-- The user id for an external subject, creating the account on first sight.
SELECT billing.ensure_account(%(external_id)s, %(email)s, %(name)s) AS user_id;

-- check_balance --
-- Whether the available balance covers a cost.
SELECT * FROM billing.check_balance(%(user_id)s, %(cost_usd)s);

-- check_limits --
-- Whether a cost fits the daily and monthly limits.
SELECT * FROM billing.check_limits(%(user_id)s, %(cost_usd)s);

-- reserve --
-- Hold an estimate before a tool runs.
SELECT * FROM billing.reserve(%(user_id)s, %(request_id)s, %(amount_usd)s, %(ttl)s);

-- settle --
-- Turn a hold into a charge of the actual price (bounded by the hold, the balance and the limits).
SELECT * FROM billing.settle(%(request_id)s, %(actual_usd)s, %(description)s, %(metadata)s);

-- release --
-- Drop a hold.
SELECT * FROM billing.release(%(request_id)s);

-- charge --
-- Charge without a hold.
SELECT * FROM billing.charge(%(user_id)s, %(request_id)s, %(amount_usd)s, %(description)s, %(metadata)s);

-- top_up --
-- Credit a confirmed payment, once per (provider, payment_id).
SELECT * FROM billing.top_up(%(user_id)s, %(amount)s, %(provider)s, %(payment_id)s, %(currency)s,
                             %(description)s, %(metadata)s);

-- refund --
-- Give back part or all of a charge (capped per account and period; the actor and reason are audited).
SELECT * FROM billing.refund(%(transaction_id)s, %(amount_usd)s, %(reason)s, %(idempotency_key)s, %(actor)s);

-- adjust --
-- Administrative signed correction.
SELECT * FROM billing.adjust(%(user_id)s, %(amount_usd)s, %(reason)s, %(actor)s, %(idempotency_key)s);

-- update_settings --
-- Change limits and flags (NULL keeps a setting).
SELECT * FROM billing.update_settings(%(user_id)s, %(daily_limit_usd)s, %(monthly_limit_usd)s, %(is_active)s,
                                      %(billing_enabled)s, %(limit_override)s);

-- update_limits --
-- A user's own daily/monthly limits (NULL keeps one); the flags stay the operator's (update_settings).
SELECT * FROM billing.update_limits(%(user_id)s, %(daily_limit_usd)s, %(monthly_limit_usd)s);

-- summary --
-- The original system's billing summary, as JSON.
SELECT billing.summary(%(user_id)s) AS summary;

-- history --
-- A page of the user's transactions, newest first.
SELECT * FROM billing.history(%(user_id)s, %(type)s, %(from)s, %(to)s, %(limit)s, %(offset)s, %(before_id)s);

-- start_request --
-- Open the cost-tracking record of a tool call.
SELECT * FROM billing.start_request(%(request_id)s, %(tool_name)s, %(user_id)s, %(client_key)s, %(client_ip)s);

-- complete_request --
-- Close a tool call's record and bill it in the same transaction.
SELECT * FROM billing.complete_request(%(request_id)s, %(success)s, %(total_cost_usd)s, %(cost_breakdown)s,
                                       %(execution_time_ms)s, %(error)s, %(price_usd)s, %(description)s);

-- verify_ledger --
-- Every row that breaks a ledger invariant.
SELECT * FROM billing.verify_ledger();

-- ledger_heads --
-- The head (newest version and hash) of every account's hash chain, to anchor elsewhere.
SELECT * FROM billing.ledger_heads();

-- verify_anchors --
-- The anchored heads that no longer hold (row missing or rewritten).
SELECT * FROM billing.verify_anchors(%(user_ids)s, %(versions)s, %(hashes)s);

-- reap_expired_holds --
-- Expire lapsed holds (operator sweep).
SELECT billing.reap_expired_holds(%(max_accounts)s) AS reaped;

-- set_exchange_rate --
-- Record a UAH/USD rate.
SELECT * FROM billing.set_exchange_rate(%(currency)s, %(per_usd)s, %(valid_from)s);

-- set_tool_pricing --
-- Create or replace a tool's price.
SELECT * FROM billing.set_tool_pricing(%(tool_name)s, %(base_price_usd)s, %(markup_percent)s, %(estimate_usd)s,
                                       %(variable_cost)s, %(description)s, %(max_price_usd)s,
                                       %(per_input_char_usd)s, %(anonymous)s);

-- list_tool_pricing --
-- Every priced tool.
SELECT * FROM billing.list_tool_pricing();

-- tool_price --
-- The price of one call given its metered cost.
SELECT billing.tool_price(%(tool_name)s, %(cost_usd)s) AS price_usd;

-- configure --
-- Set the time zone of the spend windows and the default hold lifetime.
SELECT * FROM billing.configure(%(time_zone)s, %(hold_ttl)s);

-- begin_request --
-- Pre-flight of a metered call in one round trip: start_request, estimate, reserve.
SELECT * FROM billing.begin_request(%(request_id)s, %(tool_name)s, %(user_id)s, %(client_key)s, %(estimate_usd)s,
                                    %(ttl)s, %(input_chars)s, %(client_ip)s);

-- estimate_price --
-- The amount held before a call of a tool (of that many input characters, when known).
SELECT billing.estimate_price(%(tool_name)s, %(input_chars)s) AS estimate_usd;

-- create_api_key --
-- Register an API key by its SHA-256 digest.
SELECT * FROM billing.create_api_key(%(name)s, %(key_hash)s, %(key_prefix)s, %(user_id)s);

-- revoke_api_key --
-- Revoke an API key (idempotent).
SELECT * FROM billing.revoke_api_key(%(name)s);

-- list_api_keys --
-- Every API key, without digests.
SELECT * FROM billing.list_api_keys();

-- authenticate_api_key --
-- The API key with that digest (no row when unknown).
SELECT * FROM billing.authenticate_api_key(%(key_hash)s);

-- list_unbilled_calls --
-- Every column of billing.unbilled_calls, oldest first (owner or analyst connection: it is a view).
SELECT * FROM billing.unbilled_calls ORDER BY created_at, request_id;

-- list_written_off_calls --
-- Every column of billing.written_off_calls, oldest first (owner or analyst connection: it is a view).
SELECT * FROM billing.written_off_calls ORDER BY written_off_at, request_id;

-- user_by_external_id --
-- An operator lookup (CLI): the summary row of the user with that external subject, if any.
SELECT * FROM billing.user_billing_summary WHERE external_id = %(external_id)s;

-- stale_unbilled_calls --
-- Pending calls older than %(minutes)s minutes (their gateway stopped mid-call).
SELECT request_id FROM billing.unbilled_calls WHERE created_at < now() - make_interval(mins => %(minutes)s);

-- create_payment_intent --
-- Record a payment a user starts (nothing is credited until the provider confirms it), or refuse it by a fraud rule.
SELECT * FROM billing.create_payment_intent(%(user_id)s, %(provider)s, %(amount)s, %(currency)s,
                                            %(idempotency_key)s, %(ttl)s, %(client_ip)s);

-- attach_payment_checkout --
-- Record the provider's checkout (id, URL) of an intent.
SELECT * FROM billing.attach_payment_checkout(%(intent_id)s, %(external_id)s, %(checkout_url)s, %(expires_at)s);

-- fail_payment_intent --
-- Mark an intent whose checkout could not be created as failed.
SELECT * FROM billing.fail_payment_intent(%(intent_id)s, %(reason)s);

-- record_payment_event --
-- Store a verified provider event and apply it (credit, fail, expire, claw back), once per event id.
SELECT * FROM billing.record_payment_event(
    %(provider)s, %(event_id)s, %(event_type)s, %(payload)s, %(intent_id)s, %(external_id)s, %(payment_ref)s,
    %(action)s, %(amount)s, %(currency)s, %(reversal_key)s, %(reversal_kind)s, %(reversed_amount)s,
    %(reversal_currency)s, %(reinstated)s, %(review_reason)s);

-- credit_reviewed_payment --
-- An operator credits a payment in review (once; actor and reason recorded).
SELECT * FROM billing.credit_reviewed_payment(%(intent_id)s, %(actor)s, %(reason)s, %(amount)s, %(currency)s);

-- payment_intent --
-- One payment as its owner (or, with user NULL, an operator) sees it.
SELECT * FROM billing.payment_intent(%(intent_id)s, %(user_id)s);

-- open_payment_intents --
-- The intents reconciliation asks the providers about.
SELECT * FROM billing.open_payment_intents(%(provider)s, %(min_age)s, %(lookback)s, %(limit)s);

-- expire_payment_intents --
-- Expire open intents past their expiry (plus a grace period).
SELECT billing.expire_payment_intents(%(grace)s) AS expired;

-- payments_needing_review --
-- What an operator must look at (owner or analyst connection: it is a view).
SELECT * FROM billing.payments_needing_review ORDER BY at;

-- login_role --
-- Who this connection is logged in as, and what it holds beyond its authority (api.roles.check_login).
SELECT r.rolname AS role, r.rolsuper AS superuser, r.rolcreaterole AS createrole,
       pg_has_role(r.oid, n.nspowner, 'MEMBER') AS owns_schema,
       ARRAY(SELECT g FROM unnest(ARRAY['tollgate_metering', 'tollgate_payments', 'tollgate_operator']) g
              WHERE to_regrole(g) IS NOT NULL AND pg_has_role(r.oid, g::regrole, 'USAGE')) AS uses,
       ARRAY(SELECT g FROM unnest(ARRAY['tollgate_metering', 'tollgate_payments', 'tollgate_operator']) g
              WHERE to_regrole(g) IS NOT NULL AND pg_has_role(r.oid, g::regrole, 'MEMBER')) AS member_of
  FROM pg_roles r
  JOIN pg_namespace n ON n.nspname = 'billing'
 WHERE r.rolname = current_user;

-- set_abuse_policy --
-- Store the figure of an abuse rule (no write when it is already that).
SELECT * FROM billing.set_abuse_policy(%(name)s, %(value)s, %(actor)s);

-- list_abuse_policy --
-- The stored figures of the abuse rules, by name.
SELECT * FROM billing.list_abuse_policy();

-- list_abuse_events --
-- The audit trail of abuse rules, newest first, filtered by user, rule (or dotted prefix) and time.
SELECT * FROM billing.list_abuse_events(%(user_id)s, %(rule)s, %(since)s, %(limit)s);

-- begin_anonymous_call --
-- An anonymous call's pre-flight: its tool's policy applied, the call counted in the daily aggregate.
SELECT * FROM billing.begin_anonymous_call(%(tool_name)s, %(client_ip)s::inet);

-- record_anonymous_failure --
-- Mark one counted anonymous call as failed.
SELECT billing.record_anonymous_failure(%(usage_day)s, %(tool_name)s, %(client_network)s::inet) AS recorded;

-- prune_anonymous_usage --
-- Delete the anonymous aggregate's rows of days before a date.
SELECT billing.prune_anonymous_usage(%(before)s) AS deleted;

-- detect_velocity --
-- Run the velocity detector once (spend spikes, fan-out): raise flags, pause accounts when so configured.
SELECT * FROM billing.detect_velocity(%(force)s);

-- list_account_flags --
-- The flags raised on accounts, newest first, filtered by user and status.
SELECT * FROM billing.list_account_flags(%(user_id)s, %(status)s, %(limit)s);

-- decide_account_flag --
-- An operator clears or confirms a flag (actor and reason recorded; reactivates an account the flag paused).
SELECT * FROM billing.decide_account_flag(%(flag_id)s, %(decision)s, %(actor)s, %(reason)s);

-- record_refused_refund --
-- Record a refund the refund cap refused (after catching BL030), in a statement of its own that commits.
SELECT billing.record_refused_refund(%(transaction_id)s, %(amount_usd)s, %(reason)s, %(actor)s) AS event_id;
