"""The signed-in user's own account: balance, history, limits (the original system's billing endpoints)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from api.gateway.auth import Identity
from api.gateway.http.envelope import ApiError, ok
from api.gateway.http.parsing import MONEY_SCHEMA, int_param, money, object_schema, read_body, time_param
from api.jsonio import iso_utc
from api.ledger import aio as aledger

if TYPE_CHECKING:
    from api.gateway.context import Gateway


TRANSACTION_TYPES = ("charge", "refund", "topup", "adjustment")


def _balance_shape(summary: dict[str, Any]) -> dict[str, Any]:
    """The original system's ``billing`` object, plus what the cooling-off adds (docs/abuse.md): ``cooling_usd``,
    a new payer's fresh card credit not spendable yet, and ``cooling_until`` (UTC; null when nothing cools)."""
    return {
        "balance_usd": summary["balance_usd"],
        "balance_uah": summary["balance_uah"],
        "total_spent_usd": summary["total_spent_usd"],
        "total_requests": summary["total_requests"],
        "limits": {"daily_usd": summary["limits"]["daily_usd"], "monthly_usd": summary["limits"]["monthly_usd"]},
        "usage": {"today_usd": summary["usage"]["today_usd"], "month_usd": summary["usage"]["month_usd"]},
        "last_request_at": summary["last_request_at"],
        "cooling_usd": summary["cooling_usd"],
        "cooling_until": summary["cooling_until"],
    }


async def balance(gateway: Gateway, request: Request, caller: Identity) -> Response:
    user_id = await gateway.accounts.user_id(caller)
    assert user_id is not None
    async with gateway.pool.connection() as conn:
        summary = await aledger.summary(conn, user_id)
    return ok(billing=_balance_shape(summary))


HISTORY_QUERY: tuple[tuple[str, dict[str, Any]], ...] = (
    ("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}),
    ("offset", {"type": "integer", "minimum": 0, "maximum": 100000, "default": 0}),
    ("type", {"type": "string", "enum": list(TRANSACTION_TYPES)}),
    ("from", {"type": "string", "format": "date-time"}),
    ("to", {"type": "string", "format": "date-time"}),
    ("before_id", {"type": "integer", "minimum": 1, "description": "keyset cursor: pagination.next_before_id"}),
)


async def history(gateway: Gateway, request: Request, caller: Identity) -> Response:
    user_id = await gateway.accounts.user_id(caller)
    assert user_id is not None
    limit = int_param(request, "limit", 50, 1, 1000)
    offset = int_param(request, "offset", 0, 0, 100_000)
    before_id = int_param(request, "before_id", None, 1, 10**17)
    assert limit is not None and offset is not None
    kind = request.query_params.get("type") or None
    if kind is not None and kind not in TRANSACTION_TYPES:
        raise ApiError(422, "invalid_parameter", f"type must be one of {', '.join(TRANSACTION_TYPES)}", field="type")
    from_, to = time_param(request, "from"), time_param(request, "to")
    if from_ is not None and to is not None and from_ > to:
        raise ApiError(422, "invalid_parameter", "from must not be after to", field="from")
    async with gateway.pool.connection() as conn:
        rows = await aledger.history(
            conn, user_id, type=kind, from_=from_, to=to, limit=limit, offset=offset, before_id=before_id
        )
    transactions = [
        {
            "id": row.id,
            "user_id": row.user_id,
            "type": row.type,
            "amount_usd": row.amount_usd,
            "balance_before_usd": row.balance_before_usd,
            "balance_after_usd": row.balance_after_usd,
            "request_id": row.request_id,
            "description": row.description,
            "created_at": iso_utc(row.created_at),
        }
        for row in rows
    ]
    pagination: dict[str, Any] = {"limit": limit, "offset": offset, "count": len(transactions)}
    # Keyset cursor for deep pages: pass it as before_id (with offset 0) to get the next page.
    pagination["next_before_id"] = transactions[-1]["id"] if len(transactions) == limit else None
    return ok(transactions=transactions, pagination=pagination)


SETTINGS_BODY = object_schema({"daily_limit_usd": MONEY_SCHEMA, "monthly_limit_usd": MONEY_SCHEMA})


async def settings(gateway: Gateway, request: Request, caller: Identity) -> Response:
    user_id = await gateway.accounts.user_id(caller)
    assert user_id is not None
    body = await read_body(request, SETTINGS_BODY)
    if not body:
        raise ApiError(422, "invalid_request", "give daily_limit_usd and/or monthly_limit_usd")
    daily = money(body["daily_limit_usd"], "daily_limit_usd") if "daily_limit_usd" in body else None
    monthly = money(body["monthly_limit_usd"], "monthly_limit_usd") if "monthly_limit_usd" in body else None
    # update_limits, not update_settings: the caller's own limits, never the flags or the override.
    async with gateway.pool.connection() as conn:
        result = await aledger.update_limits(conn, user_id, daily_limit_usd=daily, monthly_limit_usd=monthly)
    return ok(settings={"daily_limit_usd": result.daily_limit_usd, "monthly_limit_usd": result.monthly_limit_usd})
