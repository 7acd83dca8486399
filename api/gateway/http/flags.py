"""Velocity flags for administrators (docs/abuse.md, "Velocity flags and refund caps"): the suspicions
billing.detect_velocity raised on accounts, and the decision on each, through the operator's login.

    GET  /api/admin/abuse/flags                 ?status=open|cleared|confirmed|all &user_id= &limit=
    POST /api/admin/abuse/flags/{flag_id}/clear     {"reason": ...}  a false alarm: reactivates a paused account
    POST /api/admin/abuse/flags/{flag_id}/confirm   {"reason": ...}  keeps the account deactivated

The caller's label is recorded as the actor of a decision; a repeated decision answers the first one.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from api.gateway.auth import Identity
from api.gateway.http.envelope import ApiError, ok
from api.gateway.http.parsing import int_param, object_schema, path_int, read_body
from api.ledger import aio as aledger

if TYPE_CHECKING:
    from api.gateway.context import Gateway

FLAG_STATUSES = ("open", "cleared", "confirmed", "all")

FLAGS_QUERY: tuple[tuple[str, dict[str, Any]], ...] = (
    ("status", {"type": "string", "enum": list(FLAG_STATUSES), "default": "open"}),
    ("user_id", {"type": "string", "format": "uuid", "description": "only this user's flags"}),
    ("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
)

DECISION_BODY = object_schema(
    {"reason": {"type": "string", "minLength": 1, "maxLength": 1000, "description": "why (audited)"}},
    ("reason",),
)


async def list_flags(gateway: Gateway, request: Request, caller: Identity) -> Response:
    status = request.query_params.get("status") or "open"
    if status not in FLAG_STATUSES:
        raise ApiError(422, "invalid_parameter", f"status must be one of {', '.join(FLAG_STATUSES)}", field="status")
    raw_user = request.query_params.get("user_id") or None
    try:
        user_id = None if raw_user is None else uuid.UUID(raw_user)
    except ValueError:
        raise ApiError(422, "invalid_parameter", "user_id must be a UUID", field="user_id") from None
    limit = int_param(request, "limit", 100, 1, 1000)
    assert limit is not None
    async with gateway.operator_pool.connection() as conn:
        flags = await aledger.list_account_flags(
            conn, user_id=user_id, status=None if status == "all" else status, limit=limit
        )
    return ok(flags=[asdict(flag) for flag in flags])


async def clear_flag(gateway: Gateway, request: Request, caller: Identity) -> Response:
    return await _decide(gateway, request, caller, "clear")


async def confirm_flag(gateway: Gateway, request: Request, caller: Identity) -> Response:
    return await _decide(gateway, request, caller, "confirm")


async def _decide(gateway: Gateway, request: Request, caller: Identity, decision: str) -> Response:
    flag_id = path_int(request, "flag_id")
    body = await read_body(request, DECISION_BODY)
    async with gateway.operator_pool.connection() as conn:
        decided = await aledger.decide_account_flag(conn, flag_id, decision, caller.label, body["reason"])
    return ok(flag=asdict(decided))
