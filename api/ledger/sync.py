# Generated from api/ledger/aio.py by `python -m api.ledger.generate_sync` — do not edit.
"""Thin, typed wrappers over the billing SQL API (db/functions), blocking: for CLI, tests, bench.

Generated from ``api.ledger.aio`` (see its docstring, and ``api.ledger.generate_sync``): the same wrappers,
arguments and row types (``api.ledger.types``, re-exported here), on a ``psycopg.Connection``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from api.ledger.errors import PaymentRefused, translate_errors
from api.ledger.queries import QUERIES
from api.ledger.types import *  # noqa: F403  (the row types: callers write ledger.RequestStart)
from api.ledger.types import (
    AbuseEvent,
    AbusePolicy,
    AccountFlag,
    AccountSettings,
    Adjustment,
    AnonymousCall,
    ApiKey,
    ApiKeyIdentity,
    ApiKeyRevocation,
    BalanceCheck,
    BrokenAnchor,
    Charge,
    CheckoutAttached,
    Completion,
    Configuration,
    ExchangeRate,
    FlagDecision,
    IntentStatus,
    IPAddressParam,
    LedgerHead,
    LimitCheck,
    Limits,
    Money,
    OpenIntent,
    PaymentDetails,
    PaymentEventResult,
    PaymentFacts,
    PaymentIntent,
    Refund,
    Release,
    RequestStart,
    Reservation,
    ReviewedCredit,
    Row,
    Settlement,
    ToolPricingRow,
    TopUp,
    TrackedRequest,
    Transaction,
    UnbilledCall,
    VelocityRun,
    Violation,
    WrittenOffCall,
    anchor_params,
    jsonb_param,
    money_param,
)

Conn = psycopg.Connection[Any]
IPAddress = IPv4Address | IPv6Address


def _rows(conn: Conn, query: str, params: dict[str, Any], row_type: type[Row]) -> list[Row]:
    with translate_errors():
        with conn.cursor(row_factory=class_row(row_type)) as cur:
            cur.execute(QUERIES[query], params)
            return cur.fetchall()


def _one(conn: Conn, query: str, params: dict[str, Any], row_type: type[Row]) -> Row:
    rows = _rows(conn, query, params, row_type)
    if len(rows) != 1:
        raise RuntimeError(f"billing query {query} returned {len(rows)} rows, expected 1")
    return rows[0]


def _value(conn: Conn, query: str, params: dict[str, Any]) -> Any:
    with translate_errors():
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(QUERIES[query], params)
            row = cur.fetchone()
    assert row is not None
    return next(iter(row.values()))


def ensure_account(
    conn: Conn, external_id: str, email: str | None = None, name: str | None = None
) -> uuid.UUID:
    result: uuid.UUID = _value(conn, "ensure_account", {"external_id": external_id, "email": email, "name": name})
    return result


def check_balance(conn: Conn, user_id: uuid.UUID, cost_usd: Money) -> BalanceCheck:
    params = {"user_id": user_id, "cost_usd": money_param(cost_usd, "cost_usd")}
    return _one(conn, "check_balance", params, BalanceCheck)


def check_limits(conn: Conn, user_id: uuid.UUID, cost_usd: Money) -> LimitCheck:
    params = {"user_id": user_id, "cost_usd": money_param(cost_usd, "cost_usd")}
    return _one(conn, "check_limits", params, LimitCheck)


def reserve(
    conn: Conn,
    user_id: uuid.UUID,
    request_id: str,
    amount_usd: Money,
    ttl: dt.timedelta | None = None,
) -> Reservation:
    params = {
        "user_id": user_id,
        "request_id": request_id,
        "amount_usd": money_param(amount_usd, "amount_usd"),
        "ttl": ttl,
    }
    return _one(conn, "reserve", params, Reservation)


def settle(
    conn: Conn,
    request_id: str,
    actual_usd: Money,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Settlement:
    params = {
        "request_id": request_id,
        "actual_usd": money_param(actual_usd, "actual_usd"),
        "description": description,
        "metadata": jsonb_param(metadata),
    }
    return _one(conn, "settle", params, Settlement)


def release(conn: Conn, request_id: str) -> Release:
    return _one(conn, "release", {"request_id": request_id}, Release)


def charge(
    conn: Conn,
    user_id: uuid.UUID,
    request_id: str,
    amount_usd: Money,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Charge:
    params = {
        "user_id": user_id,
        "request_id": request_id,
        "amount_usd": money_param(amount_usd, "amount_usd"),
        "description": description,
        "metadata": jsonb_param(metadata),
    }
    return _one(conn, "charge", params, Charge)


def top_up(
    conn: Conn,
    user_id: uuid.UUID,
    amount: Money,
    provider: str,
    payment_id: str,
    currency: str = "USD",
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> TopUp:
    params = {
        "user_id": user_id,
        "amount": money_param(amount, "amount"),
        "provider": provider,
        "payment_id": payment_id,
        "currency": currency,
        "description": description,
        "metadata": jsonb_param(metadata),
    }
    return _one(conn, "top_up", params, TopUp)


def refund(
    conn: Conn,
    transaction_id: int,
    amount_usd: Money,
    reason: str,
    idempotency_key: str,
    actor: str | None = None,
) -> Refund:
    """Refund part or all of a charge. ``actor`` is recorded on the ledger row (None: the database login).
    Past the refund cap this raises ``RefundCapExceeded`` and writes nothing: record the refusal with
    ``record_refused_refund`` (on a connection whose transaction is not the failed one)."""
    params = {
        "transaction_id": transaction_id,
        "amount_usd": money_param(amount_usd, "amount_usd"),
        "reason": reason,
        "idempotency_key": idempotency_key,
        "actor": actor,
    }
    return _one(conn, "refund", params, Refund)


def record_refused_refund(
    conn: Conn, transaction_id: int, amount_usd: Money, reason: str | None, actor: str | None = None
) -> int | None:
    """The abuse event of a refund the cap refused (its id), or None when the refund would not pass the cap."""
    params = {
        "transaction_id": transaction_id,
        "amount_usd": money_param(amount_usd, "amount_usd"),
        "reason": reason,
        "actor": actor,
    }
    result: int | None = _value(conn, "record_refused_refund", params)
    return result


def adjust(
    conn: Conn, user_id: uuid.UUID, amount_usd: Money, reason: str, actor: str, idempotency_key: str
) -> Adjustment:
    params = {
        "user_id": user_id,
        "amount_usd": money_param(amount_usd, "amount_usd"),
        "reason": reason,
        "actor": actor,
        "idempotency_key": idempotency_key,
    }
    return _one(conn, "adjust", params, Adjustment)


def update_settings(
    conn: Conn,
    user_id: uuid.UUID,
    *,
    daily_limit_usd: Money | None = None,
    monthly_limit_usd: Money | None = None,
    is_active: bool | None = None,
    billing_enabled: bool | None = None,
    limit_override: bool | None = None,
) -> AccountSettings:
    params = {
        "user_id": user_id,
        "daily_limit_usd": money_param(daily_limit_usd, "daily_limit_usd"),
        "monthly_limit_usd": money_param(monthly_limit_usd, "monthly_limit_usd"),
        "is_active": is_active,
        "billing_enabled": billing_enabled,
        "limit_override": limit_override,
    }
    return _one(conn, "update_settings", params, AccountSettings)


def update_limits(
    conn: Conn,
    user_id: uuid.UUID,
    *,
    daily_limit_usd: Money | None = None,
    monthly_limit_usd: Money | None = None,
) -> Limits:
    """A user's own limits (metering role); the flags and the override are ``update_settings`` (operator)."""
    params = {
        "user_id": user_id,
        "daily_limit_usd": money_param(daily_limit_usd, "daily_limit_usd"),
        "monthly_limit_usd": money_param(monthly_limit_usd, "monthly_limit_usd"),
    }
    return _one(conn, "update_limits", params, Limits)


def summary(conn: Conn, user_id: uuid.UUID) -> dict[str, Any]:
    """The summary JSON with every number as Decimal (the connection must come from ``api.ledger.db``)."""
    result: dict[str, Any] = _value(conn, "summary", {"user_id": user_id})
    return result


def history(
    conn: Conn,
    user_id: uuid.UUID,
    *,
    type: str | None = None,
    from_: dt.datetime | None = None,
    to: dt.datetime | None = None,
    limit: int = 50,
    offset: int = 0,
    before_id: int | None = None,
) -> list[Transaction]:
    params = {
        "user_id": user_id,
        "type": type,
        "from": from_,
        "to": to,
        "limit": limit,
        "offset": offset,
        "before_id": before_id,
    }
    return _rows(conn, "history", params, Transaction)


def start_request(
    conn: Conn,
    request_id: str,
    tool_name: str,
    user_id: uuid.UUID | None = None,
    client_key: str | None = None,
    client_ip: IPAddress | None = None,
) -> TrackedRequest:
    params = {
        "request_id": request_id,
        "tool_name": tool_name,
        "user_id": user_id,
        "client_key": client_key,
        "client_ip": client_ip,
    }
    return _one(conn, "start_request", params, TrackedRequest)


def complete_request(
    conn: Conn,
    request_id: str,
    success: bool,
    total_cost_usd: Money = 0,
    *,
    cost_breakdown: list[Any] | dict[str, Any] | None = None,
    execution_time_ms: int | None = None,
    error: str | None = None,
    price_usd: Money | None = None,
    description: str | None = None,
) -> Completion:
    params = {
        "request_id": request_id,
        "success": success,
        "total_cost_usd": money_param(total_cost_usd, "total_cost_usd"),
        "cost_breakdown": jsonb_param(cost_breakdown),
        "execution_time_ms": execution_time_ms,
        "error": error,
        "price_usd": money_param(price_usd, "price_usd"),
        "description": description,
    }
    return _one(conn, "complete_request", params, Completion)


def verify_ledger(conn: Conn) -> list[Violation]:
    return _rows(conn, "verify_ledger", {}, Violation)


def ledger_heads(conn: Conn) -> list[LedgerHead]:
    return _rows(conn, "ledger_heads", {}, LedgerHead)


def verify_anchors(conn: Conn, anchors: list[LedgerHead]) -> list[BrokenAnchor]:
    return _rows(conn, "verify_anchors", anchor_params(anchors), BrokenAnchor)


def reap_expired_holds(conn: Conn, max_accounts: int = 1000) -> int:
    result: int = _value(conn, "reap_expired_holds", {"max_accounts": max_accounts})
    return result


def set_exchange_rate(
    conn: Conn, per_usd: Money, currency: str = "UAH", valid_from: dt.datetime | None = None
) -> ExchangeRate:
    params = {"currency": currency, "per_usd": money_param(per_usd, "per_usd"), "valid_from": valid_from}
    return _one(conn, "set_exchange_rate", params, ExchangeRate)


def set_tool_pricing(
    conn: Conn,
    tool_name: str,
    base_price_usd: Money,
    *,
    markup_percent: Money = 0,
    estimate_usd: Money | None = None,
    variable_cost: bool = False,
    description: str | None = None,
    max_price_usd: Money | None = None,
    per_input_char_usd: Money | None = None,
    anonymous: str | None = None,
) -> ToolPricingRow:
    """Create or replace a tool's price; ``anonymous`` is "deny", "free" or "free:N/day" (None: the default,
    deny for a priced tool, free for a free one)."""
    params = {
        "tool_name": tool_name,
        "base_price_usd": money_param(base_price_usd, "base_price_usd"),
        "markup_percent": money_param(markup_percent, "markup_percent"),
        "estimate_usd": money_param(estimate_usd, "estimate_usd"),
        "variable_cost": variable_cost,
        "description": description,
        "max_price_usd": money_param(max_price_usd, "max_price_usd"),
        "per_input_char_usd": money_param(per_input_char_usd, "per_input_char_usd"),
        "anonymous": anonymous,
    }
    return _one(conn, "set_tool_pricing", params, ToolPricingRow)


def list_tool_pricing(conn: Conn) -> list[ToolPricingRow]:
    return _rows(conn, "list_tool_pricing", {}, ToolPricingRow)


def tool_price(conn: Conn, tool_name: str, cost_usd: Money = 0) -> Decimal:
    params = {"tool_name": tool_name, "cost_usd": money_param(cost_usd, "cost_usd")}
    result: Decimal = _value(conn, "tool_price", params)
    return result


def configure(
    conn: Conn, time_zone: str | None = None, hold_ttl: dt.timedelta | None = None
) -> Configuration:
    return _one(conn, "configure", {"time_zone": time_zone, "hold_ttl": hold_ttl}, Configuration)


def begin_request(
    conn: Conn,
    request_id: str,
    tool_name: str,
    user_id: uuid.UUID | None = None,
    client_key: str | None = None,
    estimate_usd: Money | None = None,
    ttl: dt.timedelta | None = None,
    input_chars: int | None = None,
    client_ip: IPAddress | None = None,
) -> RequestStart:
    """start_request + estimate + reserve in one transaction; a refused hold writes nothing.

    ``input_chars`` is the size of the call's arguments (``api.gateway.metering.input_characters``), from which a
    tool priced per input character estimates its hold. ``client_ip`` is the caller's address
    (``api.abuse.clientip``), kept on the tracked call for the velocity detector's fan-out rule.
    """
    params = {
        "request_id": request_id,
        "tool_name": tool_name,
        "user_id": user_id,
        "client_key": client_key,
        "estimate_usd": money_param(estimate_usd, "estimate_usd"),
        "ttl": ttl,
        "input_chars": input_chars,
        "client_ip": client_ip,
    }
    return _one(conn, "begin_request", params, RequestStart)


def estimate_price(conn: Conn, tool_name: str, input_chars: int | None = None) -> Decimal:
    result: Decimal = _value(conn, "estimate_price", {"tool_name": tool_name, "input_chars": input_chars})
    return result


def create_api_key(
    conn: Conn,
    name: str,
    key_hash: bytes,
    key_prefix: str | None,
    user_id: uuid.UUID | None = None,
) -> ApiKey:
    """Register a key by its digest (``api.gateway.apikeys.hash_key``); the key itself never reaches the database."""
    params = {"name": name, "key_hash": key_hash, "key_prefix": key_prefix, "user_id": user_id}
    return _one(conn, "create_api_key", params, ApiKey)


def revoke_api_key(conn: Conn, name: str) -> ApiKeyRevocation:
    return _one(conn, "revoke_api_key", {"name": name}, ApiKeyRevocation)


def list_api_keys(conn: Conn) -> list[ApiKey]:
    return _rows(conn, "list_api_keys", {}, ApiKey)


def authenticate_api_key(conn: Conn, key_hash: bytes) -> ApiKeyIdentity | None:
    """The key with that digest, revoked or not; None when no key has it."""
    rows = _rows(conn, "authenticate_api_key", {"key_hash": key_hash}, ApiKeyIdentity)
    return rows[0] if rows else None


def unbilled_calls(conn: Conn) -> list[UnbilledCall]:
    """billing.unbilled_calls, oldest first. A view: needs the owner's or the analyst role's connection."""
    return _rows(conn, "list_unbilled_calls", {}, UnbilledCall)


def written_off_calls(conn: Conn) -> list[WrittenOffCall]:
    """billing.written_off_calls, oldest first. A view: needs the owner's or the analyst role's connection."""
    return _rows(conn, "list_written_off_calls", {}, WrittenOffCall)


def create_payment_intent(
    conn: Conn,
    user_id: uuid.UUID,
    provider: str,
    amount: Money,
    currency: str,
    idempotency_key: str | None = None,
    ttl: dt.timedelta = dt.timedelta(hours=1),
    client_ip: IPv4Address | IPv6Address | None = None,
) -> PaymentIntent:
    """Record a payment a user starts (``client_ip``: where from, for the per-network caps). A start refused
    by a payment fraud rule raises PaymentRefused; its audit row is committed when the connection is in
    autocommit mode (or when the caller commits)."""
    params = {
        "user_id": user_id,
        "provider": provider,
        "amount": money_param(amount, "amount"),
        "currency": currency,
        "idempotency_key": idempotency_key,
        "ttl": ttl,
        "client_ip": client_ip,
    }
    intent = _one(conn, "create_payment_intent", params, PaymentIntent)
    if intent.status == "refused":
        raise PaymentRefused(
            intent.message or "top-up refused", intent.rule or "payments", intent.retry_at, intent.retry_after
        )
    return intent


def attach_payment_checkout(
    conn: Conn,
    intent_id: uuid.UUID,
    external_id: str,
    checkout_url: str,
    expires_at: dt.datetime | None = None,
) -> CheckoutAttached:
    params = {
        "intent_id": intent_id,
        "external_id": external_id,
        "checkout_url": checkout_url,
        "expires_at": expires_at,
    }
    return _one(conn, "attach_payment_checkout", params, CheckoutAttached)


def fail_payment_intent(conn: Conn, intent_id: uuid.UUID, reason: str) -> IntentStatus:
    return _one(conn, "fail_payment_intent", {"intent_id": intent_id, "reason": reason}, IntentStatus)


def record_payment_event(conn: Conn, facts: PaymentFacts) -> PaymentEventResult:
    return _one(conn, "record_payment_event", facts.params(), PaymentEventResult)


def credit_reviewed_payment(
    conn: Conn,
    intent_id: uuid.UUID,
    actor: str,
    reason: str,
    amount: Money | None = None,
    currency: str | None = None,
) -> ReviewedCredit:
    params = {
        "intent_id": intent_id,
        "actor": actor,
        "reason": reason,
        "amount": money_param(amount, "amount"),
        "currency": currency,
    }
    return _one(conn, "credit_reviewed_payment", params, ReviewedCredit)


def payment_intent(conn: Conn, intent_id: uuid.UUID, user_id: uuid.UUID | None = None) -> PaymentDetails:
    return _one(conn, "payment_intent", {"intent_id": intent_id, "user_id": user_id}, PaymentDetails)


def open_payment_intents(
    conn: Conn,
    provider: str | None = None,
    min_age: dt.timedelta = dt.timedelta(minutes=5),
    lookback: dt.timedelta = dt.timedelta(days=7),
    limit: int = 1000,
) -> list[OpenIntent]:
    params = {"provider": provider, "min_age": min_age, "lookback": lookback, "limit": limit}
    return _rows(conn, "open_payment_intents", params, OpenIntent)


def expire_payment_intents(conn: Conn, grace: dt.timedelta = dt.timedelta(0)) -> int:
    expired: int = _value(conn, "expire_payment_intents", {"grace": grace})
    return expired


def set_abuse_policy(conn: Conn, name: str, value: Money, actor: str) -> AbusePolicy:
    """Store the figure of an abuse rule; ``changed`` is False when it already had that value."""
    params = {"name": name, "value": money_param(value, "value"), "actor": actor}
    return _one(conn, "set_abuse_policy", params, AbusePolicy)


def list_abuse_policy(conn: Conn) -> list[AbusePolicy]:
    return _rows(conn, "list_abuse_policy", {}, AbusePolicy)


def list_abuse_events(
    conn: Conn,
    *,
    user_id: uuid.UUID | None = None,
    rule: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 100,
) -> list[AbuseEvent]:
    """The audit trail of abuse rules, newest first; ``rule`` may be a dotted prefix ("payments")."""
    params = {"user_id": user_id, "rule": rule, "since": since, "limit": limit}
    return _rows(conn, "list_abuse_events", params, AbuseEvent)


def begin_anonymous_call(conn: Conn, tool_name: str, client_ip: IPAddressParam | None) -> AnonymousCall:
    """Apply the tool's anonymous policy to a caller without credentials and count the call (no tracking
    row, no hold). Refusals: AnonymousDenied (BL040), AnonymousQuotaExceeded (BL041)."""
    params = {"tool_name": tool_name, "client_ip": client_ip}
    return _one(conn, "begin_anonymous_call", params, AnonymousCall)


def record_anonymous_failure(
    conn: Conn, usage_day: dt.date, tool_name: str, client_network: IPAddressParam
) -> bool:
    """Mark one anonymous call counted by begin_anonymous_call as failed; False when nothing was marked."""
    params = {"usage_day": usage_day, "tool_name": tool_name, "client_network": client_network}
    result: bool = _value(conn, "record_anonymous_failure", params)
    return result


def prune_anonymous_usage(conn: Conn, before: dt.date) -> int:
    """Delete the anonymous aggregate's rows of days before ``before`` (never today's); how many."""
    result: int = _value(conn, "prune_anonymous_usage", {"before": before})
    return result


def detect_velocity(conn: Conn, force: bool = False) -> VelocityRun:
    """One run of the velocity detector; ``force`` runs even when another ran within half the interval."""
    return _one(conn, "detect_velocity", {"force": force}, VelocityRun)


def list_account_flags(
    conn: Conn, *, user_id: uuid.UUID | None = None, status: str | None = "open", limit: int = 100
) -> list[AccountFlag]:
    """Flags raised on accounts, newest first; ``status`` None lists every status."""
    params = {"user_id": user_id, "status": status, "limit": limit}
    return _rows(conn, "list_account_flags", params, AccountFlag)


def decide_account_flag(
    conn: Conn, flag_id: int, decision: str, actor: str, reason: str
) -> FlagDecision:
    """``decision`` is "clear" (reactivates an account the flag paused) or "confirm" (keeps it deactivated)."""
    params = {"flag_id": flag_id, "decision": decision, "actor": actor, "reason": reason}
    return _one(conn, "decide_account_flag", params, FlagDecision)
