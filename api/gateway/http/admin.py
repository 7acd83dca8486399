"""Administrators' operations on any account (a JWT with the admin scope; the binding checks it), through
the operator's login: read and change an account, signed corrections, refunds, crediting a payment in review,
and the audit trail of the abuse rules.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from api.gateway.auth import Identity
from api.gateway.http.envelope import ApiError, ok
from api.gateway.http.parsing import (
    MONEY_SCHEMA,
    TEXT,
    int_param,
    money,
    object_schema,
    path_int,
    path_uuid,
    read_body,
    time_param,
)
from api.jsonio import iso_utc
from api.ledger import aio as aledger
from api.ledger.errors import RefundCapExceeded

if TYPE_CHECKING:
    from api.gateway.context import Gateway


async def admin_get_billing(gateway: Gateway, request: Request, caller: Identity) -> Response:
    user_id = path_uuid(request, "user_id")
    async with gateway.operator_pool.connection() as conn:
        summary = await aledger.summary(conn, user_id)
    return ok(billing=summary)


ADMIN_BILLING_BODY = object_schema(
    {
        "daily_limit_usd": MONEY_SCHEMA,
        "monthly_limit_usd": MONEY_SCHEMA,
        "is_active": {"type": "boolean"},
        "billing_enabled": {"type": "boolean"},
        "limit_override": {"type": "boolean"},
    }
)


async def admin_put_billing(gateway: Gateway, request: Request, caller: Identity) -> Response:
    user_id = path_uuid(request, "user_id")
    body = await read_body(request, ADMIN_BILLING_BODY)
    if not body:
        raise ApiError(422, "invalid_request", "give at least one setting to change")
    async with gateway.operator_pool.connection() as conn:
        result = await aledger.update_settings(
            conn,
            user_id,
            daily_limit_usd=money(body["daily_limit_usd"], "daily_limit_usd") if "daily_limit_usd" in body else None,
            monthly_limit_usd=(
                money(body["monthly_limit_usd"], "monthly_limit_usd") if "monthly_limit_usd" in body else None
            ),
            is_active=body.get("is_active"),
            billing_enabled=body.get("billing_enabled"),
            limit_override=body.get("limit_override"),
        )
    return ok(settings=asdict(result))


ADJUST_BODY = object_schema(
    {
        "amount_usd": {**MONEY_SCHEMA, "description": "signed USD amount: positive credits, negative debits"},
        "reason": {"type": "string", "minLength": 1, "maxLength": 1000},
        "idempotency_key": TEXT,
    },
    ("amount_usd", "reason", "idempotency_key"),
)


async def admin_adjust(gateway: Gateway, request: Request, caller: Identity) -> Response:
    user_id = path_uuid(request, "user_id")
    body = await read_body(request, ADJUST_BODY)
    amount = money(body["amount_usd"], "amount_usd", signed=True)
    if amount == 0:
        raise ApiError(422, "invalid_amount", "amount_usd must not be zero", field="amount_usd")
    async with gateway.operator_pool.connection() as conn:
        result = await aledger.adjust(conn, user_id, amount, body["reason"], caller.label, body["idempotency_key"])
    return ok(transaction=asdict(result))


REFUND_BODY = object_schema(
    {
        "amount_usd": MONEY_SCHEMA,
        "reason": {"type": "string", "minLength": 1, "maxLength": 1000},
        "idempotency_key": TEXT,
    },
    ("amount_usd", "reason", "idempotency_key"),
)


async def admin_refund(gateway: Gateway, request: Request, caller: Identity) -> Response:
    """A refund of a charge, audited with the reason and the administrator. Past the refund cap the ledger refuses
    (BL030, nothing written) and the refusal is then recorded in a statement of its own (the pool's connections
    are autocommit), before the 409 is answered."""
    transaction_id = path_int(request, "transaction_id")
    body = await read_body(request, REFUND_BODY)
    amount = money(body["amount_usd"], "amount_usd", positive=True)
    async with gateway.operator_pool.connection() as conn:
        try:
            result = await aledger.refund(
                conn, transaction_id, amount, body["reason"], body["idempotency_key"], actor=caller.label
            )
        except RefundCapExceeded:
            await aledger.record_refused_refund(conn, transaction_id, amount, body["reason"], caller.label)
            raise
    return ok(transaction=asdict(result))


CREDIT_PAYMENT_BODY = object_schema(
    {
        "reason": {"type": "string", "minLength": 1, "maxLength": 1000, "description": "why it is credited (audited)"},
        "amount": {**MONEY_SCHEMA, "description": "amount to credit in currency (default: what was paid)"},
        "currency": {"type": "string", "enum": ["USD", "UAH"], "description": "default: the paid currency"},
    },
    ("reason",),
)


async def admin_credit_payment(gateway: Gateway, request: Request, caller: Identity) -> Response:
    """An administrator credits a payment in review, after looking at it (billing.credit_reviewed_payment)."""
    intent_id = path_uuid(request, "intent_id")
    body = await read_body(request, CREDIT_PAYMENT_BODY)
    amount = money(body["amount"], "amount", positive=True) if "amount" in body else None
    async with gateway.operator_pool.connection() as conn:
        credit = await aledger.credit_reviewed_payment(
            conn, intent_id, caller.label, body["reason"], amount, body.get("currency")
        )
    return ok(payment=asdict(credit))


# A rule's name, or a dotted prefix of names (billing.abuse_events.rule).
RULE_NAME = "[a-z][a-z0-9_.]{0,62}"

ABUSE_EVENTS_QUERY: tuple[tuple[str, dict[str, Any]], ...] = (
    ("user_id", {"type": "string", "format": "uuid", "description": "only this account's events"}),
    (
        "rule",
        {"type": "string", "pattern": f"^{RULE_NAME}$", "description": "a rule, or a dotted prefix: payments"},
    ),
    ("since", {"type": "string", "format": "date-time", "description": "only events at or after this time"}),
    ("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
)


async def admin_abuse_events(gateway: Gateway, request: Request, caller: Identity) -> Response:
    """The audit trail of the abuse rules (billing.list_abuse_events), newest first: every refusal, limit,
    flag and pause a rule caused, and every operator decision, with the figures and the user's message."""
    raw_user = request.query_params.get("user_id") or None
    try:
        user_id = None if raw_user is None else uuid.UUID(raw_user)
    except ValueError:
        raise ApiError(422, "invalid_parameter", "user_id must be a UUID", field="user_id") from None
    rule = request.query_params.get("rule") or None
    if rule is not None and not re.fullmatch(RULE_NAME, rule):
        raise ApiError(
            422, "invalid_parameter", "rule must be a rule name or a dotted prefix (payments, payments.x)", field="rule"
        )
    since = time_param(request, "since")
    limit = int_param(request, "limit", 100, 1, 1000)
    assert limit is not None
    async with gateway.operator_pool.connection() as conn:
        rows = await aledger.list_abuse_events(conn, user_id=user_id, rule=rule, since=since, limit=limit)
    events = [
        {
            "id": row.id,
            "created_at": iso_utc(row.created_at),
            "rule": row.rule,
            "action": row.action,
            "user_id": None if row.user_id is None else str(row.user_id),
            "client_ip": None if row.client_ip is None else str(row.client_ip),
            "detail": row.detail,
            "actor": row.actor,
        }
        for row in rows
    ]
    return ok(events=events, count=len(events))
