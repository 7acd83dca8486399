"""Async twins of the ``api.ledger.sync`` wrappers that the gateway calls on its request path.

Same named queries, same row types, same error translation; only the connection is a
``psycopg.AsyncConnection``. The gateway needs a subset of the SQL API, so only that subset is here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from api.jsonio import dumps
from api.ledger import sync as ledger
from api.ledger.errors import translate_errors
from api.ledger.queries import QUERIES
from api.ledger.sync import Money, Row, _money

AsyncConn = psycopg.AsyncConnection[Any]


async def _rows(conn: AsyncConn, query: str, params: dict[str, Any], row_type: type[Row]) -> list[Row]:
    with translate_errors():
        async with conn.cursor(row_factory=class_row(row_type)) as cur:
            await cur.execute(QUERIES[query], params)
            return await cur.fetchall()


async def _one(conn: AsyncConn, query: str, params: dict[str, Any], row_type: type[Row]) -> Row:
    rows = await _rows(conn, query, params, row_type)
    if len(rows) != 1:
        raise RuntimeError(f"billing query {query} returned {len(rows)} rows, expected 1")
    return rows[0]


async def _value(conn: AsyncConn, query: str, params: dict[str, Any]) -> Any:
    with translate_errors():
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(QUERIES[query], params)
            row = await cur.fetchone()
    assert row is not None
    return next(iter(row.values()))


async def ensure_account(
    conn: AsyncConn, external_id: str, email: str | None = None, name: str | None = None
) -> uuid.UUID:
    result: uuid.UUID = await _value(conn, "ensure_account", {"external_id": external_id, "email": email, "name": name})
    return result


async def begin_request(
    conn: AsyncConn,
    request_id: str,
    tool_name: str,
    user_id: uuid.UUID | None,
    client_key: str | None,
    estimate_usd: Money | None = None,
    input_chars: int | None = None,
) -> ledger.RequestStart:
    params = {
        "request_id": request_id,
        "tool_name": tool_name,
        "user_id": user_id,
        "client_key": client_key,
        "estimate_usd": _money(estimate_usd, "estimate_usd"),
        "ttl": None,
        "input_chars": input_chars,
    }
    return await _one(conn, "begin_request", params, ledger.RequestStart)


async def complete_request(
    conn: AsyncConn,
    request_id: str,
    success: bool,
    total_cost_usd: Money = 0,
    *,
    cost_breakdown: list[Any] | dict[str, Any] | None = None,
    execution_time_ms: int | None = None,
    error: str | None = None,
    price_usd: Money | None = None,
    description: str | None = None,
) -> ledger.Completion:
    params = {
        "request_id": request_id,
        "success": success,
        "total_cost_usd": _money(total_cost_usd, "total_cost_usd"),
        "cost_breakdown": None if cost_breakdown is None else Jsonb(cost_breakdown, dumps=dumps),
        "execution_time_ms": execution_time_ms,
        "error": error,
        "price_usd": _money(price_usd, "price_usd"),
        "description": description,
    }
    return await _one(conn, "complete_request", params, ledger.Completion)


async def authenticate_api_key(conn: AsyncConn, key_hash: bytes) -> ledger.ApiKeyIdentity | None:
    rows = await _rows(conn, "authenticate_api_key", {"key_hash": key_hash}, ledger.ApiKeyIdentity)
    return rows[0] if rows else None


async def summary(conn: AsyncConn, user_id: uuid.UUID) -> dict[str, Any]:
    result: dict[str, Any] = await _value(conn, "summary", {"user_id": user_id})
    return result


async def history(
    conn: AsyncConn,
    user_id: uuid.UUID,
    *,
    type: str | None = None,
    from_: dt.datetime | None = None,
    to: dt.datetime | None = None,
    limit: int = 50,
    offset: int = 0,
    before_id: int | None = None,
) -> list[ledger.Transaction]:
    params = {
        "user_id": user_id,
        "type": type,
        "from": from_,
        "to": to,
        "limit": limit,
        "offset": offset,
        "before_id": before_id,
    }
    return await _rows(conn, "history", params, ledger.Transaction)


async def update_settings(
    conn: AsyncConn,
    user_id: uuid.UUID,
    *,
    daily_limit_usd: Money | None = None,
    monthly_limit_usd: Money | None = None,
    is_active: bool | None = None,
    billing_enabled: bool | None = None,
    limit_override: bool | None = None,
) -> ledger.AccountSettings:
    params = {
        "user_id": user_id,
        "daily_limit_usd": _money(daily_limit_usd, "daily_limit_usd"),
        "monthly_limit_usd": _money(monthly_limit_usd, "monthly_limit_usd"),
        "is_active": is_active,
        "billing_enabled": billing_enabled,
        "limit_override": limit_override,
    }
    return await _one(conn, "update_settings", params, ledger.AccountSettings)


async def update_limits(
    conn: AsyncConn,
    user_id: uuid.UUID,
    *,
    daily_limit_usd: Money | None = None,
    monthly_limit_usd: Money | None = None,
) -> ledger.Limits:
    params = {
        "user_id": user_id,
        "daily_limit_usd": _money(daily_limit_usd, "daily_limit_usd"),
        "monthly_limit_usd": _money(monthly_limit_usd, "monthly_limit_usd"),
    }
    return await _one(conn, "update_limits", params, ledger.Limits)


async def top_up(
    conn: AsyncConn,
    user_id: uuid.UUID,
    amount: Money,
    provider: str,
    payment_id: str,
    currency: str = "USD",
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> ledger.TopUp:
    params = {
        "user_id": user_id,
        "amount": _money(amount, "amount"),
        "provider": provider,
        "payment_id": payment_id,
        "currency": currency,
        "description": description,
        "metadata": None if metadata is None else Jsonb(metadata, dumps=dumps),
    }
    return await _one(conn, "top_up", params, ledger.TopUp)


async def refund(
    conn: AsyncConn, transaction_id: int, amount_usd: Money, reason: str, idempotency_key: str
) -> ledger.Refund:
    params = {
        "transaction_id": transaction_id,
        "amount_usd": _money(amount_usd, "amount_usd"),
        "reason": reason,
        "idempotency_key": idempotency_key,
    }
    return await _one(conn, "refund", params, ledger.Refund)


async def adjust(
    conn: AsyncConn, user_id: uuid.UUID, amount_usd: Money, reason: str, actor: str, idempotency_key: str
) -> ledger.Adjustment:
    params = {
        "user_id": user_id,
        "amount_usd": _money(amount_usd, "amount_usd"),
        "reason": reason,
        "actor": actor,
        "idempotency_key": idempotency_key,
    }
    return await _one(conn, "adjust", params, ledger.Adjustment)


async def list_tool_pricing(conn: AsyncConn) -> list[ledger.ToolPricingRow]:
    return await _rows(conn, "list_tool_pricing", {}, ledger.ToolPricingRow)


async def set_tool_pricing(
    conn: AsyncConn,
    tool_name: str,
    base_price_usd: Money,
    *,
    markup_percent: Money = 0,
    estimate_usd: Money | None = None,
    variable_cost: bool = False,
    description: str | None = None,
    max_price_usd: Money | None = None,
    per_input_char_usd: Money | None = None,
) -> ledger.ToolPricingRow:
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
    return await _one(conn, "set_tool_pricing", params, ledger.ToolPricingRow)


async def create_payment_intent(
    conn: AsyncConn,
    user_id: uuid.UUID,
    provider: str,
    amount: Money,
    currency: str,
    idempotency_key: str | None = None,
    ttl: dt.timedelta = dt.timedelta(hours=1),
) -> ledger.PaymentIntent:
    params = {
        "user_id": user_id,
        "provider": provider,
        "amount": _money(amount, "amount"),
        "currency": currency,
        "idempotency_key": idempotency_key,
        "ttl": ttl,
    }
    return await _one(conn, "create_payment_intent", params, ledger.PaymentIntent)


async def attach_payment_checkout(
    conn: AsyncConn, intent_id: uuid.UUID, external_id: str, checkout_url: str, expires_at: dt.datetime | None = None
) -> ledger.CheckoutAttached:
    params = {
        "intent_id": intent_id,
        "external_id": external_id,
        "checkout_url": checkout_url,
        "expires_at": expires_at,
    }
    return await _one(conn, "attach_payment_checkout", params, ledger.CheckoutAttached)


async def fail_payment_intent(conn: AsyncConn, intent_id: uuid.UUID, reason: str) -> ledger.IntentStatus:
    return await _one(conn, "fail_payment_intent", {"intent_id": intent_id, "reason": reason}, ledger.IntentStatus)


async def record_payment_event(conn: AsyncConn, facts: ledger.PaymentFacts) -> ledger.PaymentEventResult:
    return await _one(conn, "record_payment_event", facts.params(), ledger.PaymentEventResult)


async def credit_reviewed_payment(
    conn: AsyncConn,
    intent_id: uuid.UUID,
    actor: str,
    reason: str,
    amount: Money | None = None,
    currency: str | None = None,
) -> ledger.ReviewedCredit:
    params = {
        "intent_id": intent_id,
        "actor": actor,
        "reason": reason,
        "amount": _money(amount, "amount"),
        "currency": currency,
    }
    return await _one(conn, "credit_reviewed_payment", params, ledger.ReviewedCredit)


async def payment_intent(
    conn: AsyncConn, intent_id: uuid.UUID, user_id: uuid.UUID | None = None
) -> ledger.PaymentDetails:
    return await _one(conn, "payment_intent", {"intent_id": intent_id, "user_id": user_id}, ledger.PaymentDetails)


async def open_payment_intents(
    conn: AsyncConn,
    provider: str | None = None,
    min_age: dt.timedelta = dt.timedelta(minutes=5),
    lookback: dt.timedelta = dt.timedelta(days=7),
    limit: int = 1000,
) -> list[ledger.OpenIntent]:
    params = {"provider": provider, "min_age": min_age, "lookback": lookback, "limit": limit}
    return await _rows(conn, "open_payment_intents", params, ledger.OpenIntent)


async def expire_payment_intents(conn: AsyncConn, grace: dt.timedelta = dt.timedelta(0)) -> int:
    expired: int = await _value(conn, "expire_payment_intents", {"grace": grace})
    return expired
