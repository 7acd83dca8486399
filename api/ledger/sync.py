"""Thin, typed wrappers over the billing SQL API (db/functions): one call each, no logic of their own.

Every wrapper runs one named query from ``queries.sql`` on the connection it is given (inside the
caller's transaction when one is open; its own when the connection is in autocommit mode), maps the
row into a frozen dataclass, and turns refusals into ``api.ledger.errors.BillingError`` subclasses. Money is
``Decimal`` in and out; floats are refused before they reach the database.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from api.ledger.errors import translate_errors
from api.ledger.queries import QUERIES

Row = TypeVar("Row")
Money = Decimal | int


@dataclass(frozen=True)
class BalanceCheck:
    sufficient: bool
    balance_usd: Decimal
    held_usd: Decimal
    available_usd: Decimal
    shortfall_usd: Decimal


@dataclass(frozen=True)
class LimitCheck:
    allowed: bool
    limit_type: str
    spent_usd: Decimal
    held_usd: Decimal
    limit_usd: Decimal
    remaining_usd: Decimal
    resets_at: dt.datetime
    override: bool


@dataclass(frozen=True)
class Reservation:
    reservation_id: int | None
    request_id: str
    status: str
    amount_usd: Decimal
    expires_at: dt.datetime | None
    available_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class Settlement:
    """billing.settle: what was charged (at most the hold plus what the balance and limits cover) and what
    was written off (``actual - charged``, never charged)."""

    transaction_id: int | None
    request_id: str
    status: str
    charged_usd: Decimal
    written_off_usd: Decimal
    released_usd: Decimal
    balance_after_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class Release:
    request_id: str
    status: str
    released_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class Charge:
    transaction_id: int | None
    request_id: str
    status: str
    amount_usd: Decimal
    balance_before_usd: Decimal
    balance_after_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class TopUp:
    transaction_id: int
    amount_usd: Decimal
    amount_uah: Decimal | None
    currency: str
    exchange_rate: Decimal | None
    balance_before_usd: Decimal
    balance_after_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class Refund:
    transaction_id: int
    refund_of: int
    amount_usd: Decimal
    balance_before_usd: Decimal
    balance_after_usd: Decimal
    refunded_total_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class Adjustment:
    transaction_id: int
    amount_usd: Decimal
    balance_before_usd: Decimal
    balance_after_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class AccountSettings:
    user_id: uuid.UUID
    daily_limit_usd: Decimal
    monthly_limit_usd: Decimal
    is_active: bool
    billing_enabled: bool
    limit_override: bool


@dataclass(frozen=True)
class Limits:
    user_id: uuid.UUID
    daily_limit_usd: Decimal
    monthly_limit_usd: Decimal


@dataclass(frozen=True)
class Transaction:
    id: int
    user_id: uuid.UUID
    type: str
    currency: str
    amount_usd: Decimal
    amount_uah: Decimal | None
    exchange_rate: Decimal | None
    balance_before_usd: Decimal
    balance_after_usd: Decimal
    request_id: str | None
    payment_provider: str | None
    payment_id: str | None
    refund_of: int | None
    actor: str | None
    description: str | None
    metadata: dict[str, Any]
    created_at: dt.datetime


@dataclass(frozen=True)
class TrackedRequest:
    tracking_id: int
    request_id: str
    status: str
    replayed: bool


@dataclass(frozen=True)
class Completion:
    """billing.complete_request: ``price_usd`` is the call's price as computed; of it, ``charged_usd`` was
    charged and ``written_off_usd`` written off (both 0 for callers without a user or billing disabled)."""

    request_id: str
    status: str
    price_usd: Decimal | None
    charged_usd: Decimal
    written_off_usd: Decimal
    transaction_id: int | None
    billed: bool
    replayed: bool


@dataclass(frozen=True)
class Violation:
    invariant: str
    user_id: uuid.UUID | None
    transaction_id: int | None
    detail: str


@dataclass(frozen=True)
class LedgerHead:
    user_id: uuid.UUID
    version: int
    ledger_head: str  # SHA-256, hex


@dataclass(frozen=True)
class BrokenAnchor:
    user_id: uuid.UUID
    version: int
    problem: str  # missing | rewritten


@dataclass(frozen=True)
class ExchangeRate:
    id: int
    currency: str
    per_usd: Decimal
    valid_from: dt.datetime


@dataclass(frozen=True)
class ToolPricingRow:
    tool_name: str
    base_price_usd: Decimal
    markup_percent: Decimal
    estimate_usd: Decimal | None
    variable_cost: bool
    description: str | None
    updated_at: dt.datetime
    max_price_usd: Decimal | None
    per_input_char_usd: Decimal | None


@dataclass(frozen=True)
class Configuration:
    time_zone: str
    hold_ttl: dt.timedelta


@dataclass(frozen=True)
class RequestStart:
    """The pre-flight of a metered call (billing.begin_request): tracking record, estimate and hold."""

    tracking_id: int
    request_id: str
    status: str
    estimate_usd: Decimal
    reservation_id: int | None
    reservation_status: str | None
    available_usd: Decimal | None
    replayed: bool


@dataclass(frozen=True)
class ApiKey:
    """An API key as listed (never its digest). ``revoked_at`` is None for a live key (and on creation)."""

    id: int
    name: str
    key_prefix: str | None
    user_id: uuid.UUID | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


@dataclass(frozen=True)
class ApiKeyRevocation:
    name: str
    revoked_at: dt.datetime
    replayed: bool


@dataclass(frozen=True)
class ApiKeyIdentity:
    """Who an API key is: ``name`` is the client key of its calls, ``user_id`` the user it bills (or None)."""

    name: str
    user_id: uuid.UUID | None
    revoked: bool
    key_hash: bytes


@dataclass(frozen=True)
class UnbilledCall:
    request_id: str
    tool_name: str
    user_id: uuid.UUID | None
    client_key: str | None
    created_at: dt.datetime
    age: dt.timedelta
    hold_usd: Decimal | None
    hold_status: str | None
    hold_expires_at: dt.datetime | None


@dataclass(frozen=True)
class WrittenOffCall:
    """A row of billing.written_off_calls: a call charged less than its price, and why."""

    request_id: str
    written_off_at: dt.datetime
    user_id: uuid.UUID
    tool_name: str | None
    hold_usd: Decimal | None
    price_usd: Decimal
    max_price_usd: Decimal | None
    charged_usd: Decimal
    written_off_usd: Decimal
    reason: str
    transaction_id: int | None


@dataclass(frozen=True)
class PaymentIntent:
    """A payment a user started (billing.create_payment_intent / attach_payment_checkout)."""

    intent_id: uuid.UUID
    provider: str
    status: str
    amount: Decimal
    currency: str
    external_id: str | None
    checkout_url: str | None
    expires_at: dt.datetime
    created_at: dt.datetime
    replayed: bool


@dataclass(frozen=True)
class CheckoutAttached:
    intent_id: uuid.UUID
    status: str
    external_id: str | None
    checkout_url: str | None
    expires_at: dt.datetime
    replayed: bool


@dataclass(frozen=True)
class IntentStatus:
    intent_id: uuid.UUID
    status: str


@dataclass(frozen=True)
class PaymentDetails:
    """billing.payment_intent: a payment as its owner sees it."""

    intent_id: uuid.UUID
    provider: str
    status: str
    amount: Decimal
    currency: str
    checkout_url: str | None
    expires_at: dt.datetime
    paid_amount: Decimal | None
    paid_currency: str | None
    credited_usd: Decimal | None
    exchange_rate: Decimal | None
    transaction_id: int | None
    reversed_usd: Decimal
    mismatch: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class OpenIntent:
    """billing.open_payment_intents: an intent reconciliation asks its provider about."""

    intent_id: uuid.UUID
    user_id: uuid.UUID
    provider: str
    status: str
    amount: Decimal
    currency: str
    external_id: str | None
    payment_ref: str | None
    expires_at: dt.datetime
    created_at: dt.datetime


@dataclass(frozen=True)
class PaymentFacts:
    """What a verified provider event says, reduced to the arguments of billing.record_payment_event.

    ``action`` is paid / failed / expired / reversal / ignore; a reversal (or a paid snapshot that also
    reports one) names its bucket (``reversal_key``), kind (refund / chargeback) and the cumulative
    amount the provider reports reversed. ``payload`` is what the provider said (at most 64 KiB), stored
    for audit. ``review_reason``: something the caller found that the ledger cannot check (another
    merchant, say); a paid payment with one goes to review, uncredited.
    """

    provider: str
    event_id: str
    event_type: str
    payload: str
    action: str = "ignore"
    intent_id: uuid.UUID | None = None
    external_id: str | None = None
    payment_ref: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    reversal_key: str | None = None
    reversal_kind: str | None = None
    reversed_amount: Decimal | None = None
    reversal_currency: str | None = None
    reinstated: bool = False
    review_reason: str | None = None

    def params(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "payload": self.payload,
            "intent_id": self.intent_id,
            "external_id": self.external_id,
            "payment_ref": self.payment_ref,
            "action": self.action,
            "amount": _money(self.amount, "amount"),
            "currency": self.currency,
            "reversal_key": self.reversal_key,
            "reversal_kind": self.reversal_kind,
            "reversed_amount": _money(self.reversed_amount, "reversed_amount"),
            "reversal_currency": self.reversal_currency,
            "reinstated": self.reinstated,
            "review_reason": self.review_reason,
        }


@dataclass(frozen=True)
class PaymentEventResult:
    """billing.record_payment_event: what applying an event did (``outcome``: comma-separated steps)."""

    event_row_id: int
    outcome: str
    detail: str | None
    intent_id: uuid.UUID | None
    intent_status: str | None
    user_id: uuid.UUID | None
    transaction_id: int | None
    credited_usd: Decimal | None
    reversed_usd: Decimal
    duplicate: bool


@dataclass(frozen=True)
class ReviewedCredit:
    """billing.credit_reviewed_payment: an operator's credit of a payment that was in review."""

    intent_id: uuid.UUID
    status: str
    user_id: uuid.UUID
    transaction_id: int
    amount: Decimal
    currency: str
    credited_usd: Decimal
    exchange_rate: Decimal | None
    reversed_usd: Decimal
    replayed: bool


def _money(value: Money | None, field: str) -> Decimal | None:
    """Decimal (or int) through; float refused here, before binary noise can become money."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{field} must be a Decimal, not {type(value).__name__}")
    return Decimal(value)


def _rows(conn: psycopg.Connection[Any], query: str, params: dict[str, Any], row_type: type[Row]) -> list[Row]:
    with translate_errors(), conn.cursor(row_factory=class_row(row_type)) as cur:
        cur.execute(QUERIES[query], params)
        return cur.fetchall()


def _one(conn: psycopg.Connection[Any], query: str, params: dict[str, Any], row_type: type[Row]) -> Row:
    rows = _rows(conn, query, params, row_type)
    if len(rows) != 1:
        raise RuntimeError(f"billing query {query} returned {len(rows)} rows, expected 1")
    return rows[0]


def _value(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> Any:
    with translate_errors(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(QUERIES[query], params)
        row = cur.fetchone()
    assert row is not None
    return next(iter(row.values()))


def ensure_account(
    conn: psycopg.Connection[Any], external_id: str, email: str | None = None, name: str | None = None
) -> uuid.UUID:
    result: uuid.UUID = _value(conn, "ensure_account", {"external_id": external_id, "email": email, "name": name})
    return result


def check_balance(conn: psycopg.Connection[Any], user_id: uuid.UUID, cost_usd: Money) -> BalanceCheck:
    params = {"user_id": user_id, "cost_usd": _money(cost_usd, "cost_usd")}
    return _one(conn, "check_balance", params, BalanceCheck)


def check_limits(conn: psycopg.Connection[Any], user_id: uuid.UUID, cost_usd: Money) -> LimitCheck:
    params = {"user_id": user_id, "cost_usd": _money(cost_usd, "cost_usd")}
    return _one(conn, "check_limits", params, LimitCheck)


def reserve(
    conn: psycopg.Connection[Any],
    user_id: uuid.UUID,
    request_id: str,
    amount_usd: Money,
    ttl: dt.timedelta | None = None,
) -> Reservation:
    params = {"user_id": user_id, "request_id": request_id, "amount_usd": _money(amount_usd, "amount_usd"), "ttl": ttl}
    return _one(conn, "reserve", params, Reservation)


def settle(
    conn: psycopg.Connection[Any],
    request_id: str,
    actual_usd: Money,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Settlement:
    params = {
        "request_id": request_id,
        "actual_usd": _money(actual_usd, "actual_usd"),
        "description": description,
        "metadata": None if metadata is None else Jsonb(metadata),
    }
    return _one(conn, "settle", params, Settlement)


def release(conn: psycopg.Connection[Any], request_id: str) -> Release:
    return _one(conn, "release", {"request_id": request_id}, Release)


def charge(
    conn: psycopg.Connection[Any],
    user_id: uuid.UUID,
    request_id: str,
    amount_usd: Money,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Charge:
    params = {
        "user_id": user_id,
        "request_id": request_id,
        "amount_usd": _money(amount_usd, "amount_usd"),
        "description": description,
        "metadata": None if metadata is None else Jsonb(metadata),
    }
    return _one(conn, "charge", params, Charge)


def top_up(
    conn: psycopg.Connection[Any],
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
        "amount": _money(amount, "amount"),
        "provider": provider,
        "payment_id": payment_id,
        "currency": currency,
        "description": description,
        "metadata": None if metadata is None else Jsonb(metadata),
    }
    return _one(conn, "top_up", params, TopUp)


def refund(
    conn: psycopg.Connection[Any], transaction_id: int, amount_usd: Money, reason: str, idempotency_key: str
) -> Refund:
    params = {
        "transaction_id": transaction_id,
        "amount_usd": _money(amount_usd, "amount_usd"),
        "reason": reason,
        "idempotency_key": idempotency_key,
    }
    return _one(conn, "refund", params, Refund)


def adjust(
    conn: psycopg.Connection[Any], user_id: uuid.UUID, amount_usd: Money, reason: str, actor: str, idempotency_key: str
) -> Adjustment:
    params = {
        "user_id": user_id,
        "amount_usd": _money(amount_usd, "amount_usd"),
        "reason": reason,
        "actor": actor,
        "idempotency_key": idempotency_key,
    }
    return _one(conn, "adjust", params, Adjustment)


def update_settings(
    conn: psycopg.Connection[Any],
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
        "daily_limit_usd": _money(daily_limit_usd, "daily_limit_usd"),
        "monthly_limit_usd": _money(monthly_limit_usd, "monthly_limit_usd"),
        "is_active": is_active,
        "billing_enabled": billing_enabled,
        "limit_override": limit_override,
    }
    return _one(conn, "update_settings", params, AccountSettings)


def update_limits(
    conn: psycopg.Connection[Any],
    user_id: uuid.UUID,
    *,
    daily_limit_usd: Money | None = None,
    monthly_limit_usd: Money | None = None,
) -> Limits:
    """A user's own limits (metering role); the flags and the override are ``update_settings`` (operator)."""
    params = {
        "user_id": user_id,
        "daily_limit_usd": _money(daily_limit_usd, "daily_limit_usd"),
        "monthly_limit_usd": _money(monthly_limit_usd, "monthly_limit_usd"),
    }
    return _one(conn, "update_limits", params, Limits)


def summary(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> dict[str, Any]:
    """The summary JSON with every number as Decimal (the connection must come from ``api.ledger.db``)."""
    result: dict[str, Any] = _value(conn, "summary", {"user_id": user_id})
    return result


def history(
    conn: psycopg.Connection[Any],
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
    conn: psycopg.Connection[Any],
    request_id: str,
    tool_name: str,
    user_id: uuid.UUID | None = None,
    client_key: str | None = None,
) -> TrackedRequest:
    params = {"request_id": request_id, "tool_name": tool_name, "user_id": user_id, "client_key": client_key}
    return _one(conn, "start_request", params, TrackedRequest)


def complete_request(
    conn: psycopg.Connection[Any],
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
        "total_cost_usd": _money(total_cost_usd, "total_cost_usd"),
        "cost_breakdown": None if cost_breakdown is None else Jsonb(cost_breakdown),
        "execution_time_ms": execution_time_ms,
        "error": error,
        "price_usd": _money(price_usd, "price_usd"),
        "description": description,
    }
    return _one(conn, "complete_request", params, Completion)


def verify_ledger(conn: psycopg.Connection[Any]) -> list[Violation]:
    return _rows(conn, "verify_ledger", {}, Violation)


def ledger_heads(conn: psycopg.Connection[Any]) -> list[LedgerHead]:
    return _rows(conn, "ledger_heads", {}, LedgerHead)


def verify_anchors(conn: psycopg.Connection[Any], anchors: list[LedgerHead]) -> list[BrokenAnchor]:
    params = {
        "user_ids": [anchor.user_id for anchor in anchors],
        "versions": [anchor.version for anchor in anchors],
        "hashes": [bytes.fromhex(anchor.ledger_head) for anchor in anchors],
    }
    return _rows(conn, "verify_anchors", params, BrokenAnchor)


def reap_expired_holds(conn: psycopg.Connection[Any], max_accounts: int = 1000) -> int:
    result: int = _value(conn, "reap_expired_holds", {"max_accounts": max_accounts})
    return result


def set_exchange_rate(
    conn: psycopg.Connection[Any], per_usd: Money, currency: str = "UAH", valid_from: dt.datetime | None = None
) -> ExchangeRate:
    params = {"currency": currency, "per_usd": _money(per_usd, "per_usd"), "valid_from": valid_from}
    return _one(conn, "set_exchange_rate", params, ExchangeRate)


def set_tool_pricing(
    conn: psycopg.Connection[Any],
    tool_name: str,
    base_price_usd: Money,
    markup_percent: Money = 0,
    estimate_usd: Money | None = None,
    variable_cost: bool = False,
    description: str | None = None,
    max_price_usd: Money | None = None,
    per_input_char_usd: Money | None = None,
) -> ToolPricingRow:
    params = {
        "tool_name": tool_name,
        "base_price_usd": _money(base_price_usd, "base_price_usd"),
        "markup_percent": _money(markup_percent, "markup_percent"),
        "estimate_usd": _money(estimate_usd, "estimate_usd"),
        "variable_cost": variable_cost,
        "description": description,
        "max_price_usd": _money(max_price_usd, "max_price_usd"),
        "per_input_char_usd": _money(per_input_char_usd, "per_input_char_usd"),
    }
    return _one(conn, "set_tool_pricing", params, ToolPricingRow)


def list_tool_pricing(conn: psycopg.Connection[Any]) -> list[ToolPricingRow]:
    return _rows(conn, "list_tool_pricing", {}, ToolPricingRow)


def tool_price(conn: psycopg.Connection[Any], tool_name: str, cost_usd: Money = 0) -> Decimal:
    result: Decimal = _value(conn, "tool_price", {"tool_name": tool_name, "cost_usd": _money(cost_usd, "cost_usd")})
    return result


def configure(
    conn: psycopg.Connection[Any], time_zone: str | None = None, hold_ttl: dt.timedelta | None = None
) -> Configuration:
    return _one(conn, "configure", {"time_zone": time_zone, "hold_ttl": hold_ttl}, Configuration)


def begin_request(
    conn: psycopg.Connection[Any],
    request_id: str,
    tool_name: str,
    user_id: uuid.UUID | None = None,
    client_key: str | None = None,
    estimate_usd: Money | None = None,
    ttl: dt.timedelta | None = None,
    input_chars: int | None = None,
) -> RequestStart:
    """start_request + estimate + reserve in one transaction; a refused hold writes nothing.

    ``input_chars`` is the size of the call's arguments (``api.gateway.metering.input_characters``), from which a
    tool priced per input character estimates its hold.
    """
    params = {
        "request_id": request_id,
        "tool_name": tool_name,
        "user_id": user_id,
        "client_key": client_key,
        "estimate_usd": _money(estimate_usd, "estimate_usd"),
        "ttl": ttl,
        "input_chars": input_chars,
    }
    return _one(conn, "begin_request", params, RequestStart)


def estimate_price(conn: psycopg.Connection[Any], tool_name: str, input_chars: int | None = None) -> Decimal:
    result: Decimal = _value(conn, "estimate_price", {"tool_name": tool_name, "input_chars": input_chars})
    return result


def create_api_key(
    conn: psycopg.Connection[Any],
    name: str,
    key_hash: bytes,
    key_prefix: str | None,
    user_id: uuid.UUID | None = None,
) -> ApiKey:
    """Register a key by its digest (``api.gateway.apikeys.hash_key``); the key itself never reaches the database."""
    params = {"name": name, "key_hash": key_hash, "key_prefix": key_prefix, "user_id": user_id}
    return _one(conn, "create_api_key", params, ApiKey)


def revoke_api_key(conn: psycopg.Connection[Any], name: str) -> ApiKeyRevocation:
    return _one(conn, "revoke_api_key", {"name": name}, ApiKeyRevocation)


def list_api_keys(conn: psycopg.Connection[Any]) -> list[ApiKey]:
    return _rows(conn, "list_api_keys", {}, ApiKey)


def authenticate_api_key(conn: psycopg.Connection[Any], key_hash: bytes) -> ApiKeyIdentity | None:
    """The key with that digest, revoked or not; None when no key has it."""
    rows = _rows(conn, "authenticate_api_key", {"key_hash": key_hash}, ApiKeyIdentity)
    return rows[0] if rows else None


def unbilled_calls(conn: psycopg.Connection[Any]) -> list[UnbilledCall]:
    """billing.unbilled_calls, oldest first. A view: needs the owner's or the analyst role's connection."""
    return _rows(conn, "list_unbilled_calls", {}, UnbilledCall)


def written_off_calls(conn: psycopg.Connection[Any]) -> list[WrittenOffCall]:
    """billing.written_off_calls, oldest first. A view: needs the owner's or the analyst role's connection."""
    return _rows(conn, "list_written_off_calls", {}, WrittenOffCall)


def create_payment_intent(
    conn: psycopg.Connection[Any],
    user_id: uuid.UUID,
    provider: str,
    amount: Money,
    currency: str,
    idempotency_key: str | None = None,
    ttl: dt.timedelta = dt.timedelta(hours=1),
) -> PaymentIntent:
    params = {
        "user_id": user_id,
        "provider": provider,
        "amount": _money(amount, "amount"),
        "currency": currency,
        "idempotency_key": idempotency_key,
        "ttl": ttl,
    }
    return _one(conn, "create_payment_intent", params, PaymentIntent)


def attach_payment_checkout(
    conn: psycopg.Connection[Any],
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


def fail_payment_intent(conn: psycopg.Connection[Any], intent_id: uuid.UUID, reason: str) -> IntentStatus:
    return _one(conn, "fail_payment_intent", {"intent_id": intent_id, "reason": reason}, IntentStatus)


def record_payment_event(conn: psycopg.Connection[Any], facts: PaymentFacts) -> PaymentEventResult:
    return _one(conn, "record_payment_event", facts.params(), PaymentEventResult)


def credit_reviewed_payment(
    conn: psycopg.Connection[Any],
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
        "amount": _money(amount, "amount"),
        "currency": currency,
    }
    return _one(conn, "credit_reviewed_payment", params, ReviewedCredit)


def payment_intent(
    conn: psycopg.Connection[Any], intent_id: uuid.UUID, user_id: uuid.UUID | None = None
) -> PaymentDetails:
    return _one(conn, "payment_intent", {"intent_id": intent_id, "user_id": user_id}, PaymentDetails)


def open_payment_intents(
    conn: psycopg.Connection[Any],
    provider: str | None = None,
    min_age: dt.timedelta = dt.timedelta(minutes=5),
    lookback: dt.timedelta = dt.timedelta(days=7),
    limit: int = 1000,
) -> list[OpenIntent]:
    params = {"provider": provider, "min_age": min_age, "lookback": lookback, "limit": limit}
    return _rows(conn, "open_payment_intents", params, OpenIntent)


def expire_payment_intents(conn: psycopg.Connection[Any], grace: dt.timedelta = dt.timedelta(0)) -> int:
    expired: int = _value(conn, "expire_payment_intents", {"grace": grace})
    return expired
