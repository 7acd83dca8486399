"""The HTTP API: tools over plain HTTP, the original billing endpoints, admin operations, health.

One table (``ENDPOINTS``) declares every route with its authentication, request schema and answer;
Starlette's routes and ``/openapi.json`` are both built from it, so the spec cannot drift.

Answers are ``{"success": true, ...}`` or ``{"success": false, "error": {"code", "message", ...}}``.
Bodies are JSON objects parsed with money as Decimal (``api.jsonio``), validated against their
schema (unknown fields refused), and capped in size (``TOLLGATE_MAX_BODY_BYTES``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import jsonschema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.gateway.auth import Identity, identity_of
from api.jsonio import JSONBodyError, dumps, iso_utc, loads
from api.ledger import aio as aledger
from api.payments.base import ProviderUnavailable, WebhookRejected
from api.payments.service import AmountOutOfBounds, PaymentsUnavailable

if TYPE_CHECKING:
    from api.gateway.context import Gateway

webhook_log = logging.getLogger("tollgate.payments")

MAX_MONEY = Decimal("1e12")
DECIMAL_TEXT = re.compile(r"^-?[0-9]{1,13}(\.[0-9]{1,20})?$")
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:\-]{1,200}")
TRANSACTION_TYPES = ("charge", "refund", "topup", "adjustment")
TOPUP_HINT = (
    "Crediting an account directly is for administrators; to top up your own balance, leave out user_id "
    "and pay at the checkout URL POST /api/billing/topup answers with."
)


class ApiError(Exception):
    """An answer other than success: HTTP status, stable code, a message that says what was wrong."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra
        self.headers: dict[str, str] = {}

    def with_auth_header(self) -> ApiError:
        """Add the WWW-Authenticate challenge a 401 must carry."""
        self.headers["WWW-Authenticate"] = 'Bearer realm="tollgate"'
        return self


def json_response(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json", headers=headers)


def ok(**payload: Any) -> Response:
    return json_response({"success": True, **payload})


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message, **extra}}


# ---- request parsing ------------------------------------------------------------------------------

MONEY_SCHEMA: dict[str, Any] = {
    "type": ["number", "string"],
    "pattern": r"^-?[0-9]{1,12}(\.[0-9]{1,8})?$",
    "description": "USD amount: a JSON number or a decimal string, at most 8 decimals (parsed as decimal)",
}
UAH_SCHEMA: dict[str, Any] = {
    "type": ["number", "string"],
    "pattern": r"^[0-9]{1,13}(\.[0-9]{1,2})?$",
    "description": "UAH amount: a JSON number or a decimal string, at most 2 decimals",
}
TEXT = {"type": "string", "minLength": 1, "maxLength": 200}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


async def read_json(request: Request) -> Any:
    """The body as JSON (money as Decimal); an empty body is None."""
    body = await request.body()
    if not body.strip():
        return None
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", "") and not content_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", f"send the body as application/json, not {content_type}")
    try:
        return loads(body)
    except JSONBodyError as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None


async def read_body(request: Request, schema: dict[str, Any], *, empty_ok: bool = False) -> dict[str, Any]:
    data = await read_json(request)
    if data is None:
        if empty_ok:
            return {}
        raise ApiError(400, "missing_body", "a JSON object body is required")
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_body", f"the body must be a JSON object, not {type(data).__name__}")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(part) for part in first.absolute_path) or "(body)"
        raise ApiError(422, "invalid_request", f"{where}: {first.message}", field=where)
    return data


def money(value: Any, field_name: str, *, places: int = 8, signed: bool = False, positive: bool = False) -> Decimal:
    """A JSON number or decimal string as an exact Decimal, refusing what the ledger would refuse."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ApiError(422, "invalid_amount", f"{field_name} must be a number", field=field_name)
    if isinstance(value, str):
        if not DECIMAL_TEXT.match(value.strip()):
            raise ApiError(
                422, "invalid_amount", f"{field_name} is not a decimal amount: {value[:40]!r}", field=field_name
            )
        value = value.strip()
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ApiError(422, "invalid_amount", f"{field_name} is not a decimal amount", field=field_name) from None
    if not amount.is_finite():
        raise ApiError(422, "invalid_amount", f"{field_name} must be finite", field=field_name)
    # Decide on magnitude before any arithmetic: abs() or quantize() of 1e999999999 raise decimal errors.
    if amount.adjusted() >= MAX_MONEY.adjusted():
        raise ApiError(422, "invalid_amount", f"{field_name} must be below 1e12", field=field_name)
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -places and amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise ApiError(
            422, "invalid_amount", f"{field_name} has more than {places} decimal places: {amount}", field=field_name
        )
    if abs(amount) >= MAX_MONEY:
        raise ApiError(422, "invalid_amount", f"{field_name} must be below 1e12", field=field_name)
    if not signed and amount < 0:
        raise ApiError(422, "invalid_amount", f"{field_name} must not be negative", field=field_name)
    if positive and amount <= 0:
        raise ApiError(422, "invalid_amount", f"{field_name} must be greater than zero", field=field_name)
    return amount.quantize(Decimal(1).scaleb(-places)) if exponent != -places else amount


def _int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise ApiError(422, "invalid_parameter", f"{name} must be a whole number", field=name)
    value = int(raw)
    if not low <= value <= high:
        raise ApiError(422, "invalid_parameter", f"{name} must be between {low} and {high}", field=name)
    return value


def _time_param(request: Request, name: str) -> dt.datetime | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, "invalid_parameter", f"{name} must be an ISO 8601 date or time", field=name) from None
    if value.year < 1970 or value.year > 9000:
        raise ApiError(422, "invalid_parameter", f"{name} is out of range", field=name)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _path_uuid(request: Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        raise ApiError(422, "invalid_parameter", f"{name} must be a UUID", field=name) from None


def _path_int(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not re.fullmatch(r"[0-9]{1,18}", raw) or int(raw) < 1:
        raise ApiError(422, "invalid_parameter", f"{name} must be a positive whole number", field=name)
    return int(raw)


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key header, if any, refused unless 1-200 of A-Z a-z 0-9 . _ : -."""
    key = request.headers.get("idempotency-key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(422, "invalid_idempotency_key", "Idempotency-Key must be 1-200 of A-Z a-z 0-9 . _ : -")
    return key


def scoped_request_id(principal: str, key: str) -> str:
    """The request id of a tool call sent with ``Idempotency-Key: key`` by ``principal`` (``Identity.label``:
    ``user:<sub>``, ``key:<name>``). Keys belong to the principal that sent them, as Stripe scopes them
    per account: the same key from two principals names two calls, so nobody can squat another's key
    or learn what it was used for. Derived, not stored: ``idem-`` + 40 hex of SHA-256 over
    ``principal + "\n" + key`` (neither contains a newline), so an operator can find a call from the key."""
    digest = hashlib.sha256(f"{principal}\n{key}".encode()).hexdigest()[:40]
    return f"idem-{digest}"


# ---- authentication requirements ------------------------------------------------------------------


def require_jwt(request: Request) -> Identity:
    identity = identity_of(request)
    if identity.kind != "user":
        raise ApiError(
            401, "jwt_required", "this endpoint needs a user's JWT (Authorization: Bearer <token>)"
        ).with_auth_header()
    return identity


def require_admin(request: Request) -> Identity:
    identity = require_jwt(request)
    if not identity.admin:
        raise ApiError(403, "admin_required", "this endpoint is for administrators (a JWT with the admin scope)")
    return identity


# ---- endpoints ------------------------------------------------------------------------------------

Handler = Callable[["Gateway", Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: str  # none | any | jwt | admin | key_or_jwt
    body: dict[str, Any] | None = None
    query: tuple[tuple[str, dict[str, Any]], ...] = ()
    responses: dict[int, str] = field(default_factory=dict)
    tag: str = "billing"


def _account_user(gateway: Gateway, identity: Identity) -> Awaitable[uuid.UUID | None]:
    return gateway.accounts.user_id(identity)


async def call_tool(gateway: Gateway, request: Request) -> Response:
    identity = identity_of(request)
    if identity.kind == "anonymous":
        raise ApiError(
            401, "credentials_required", "calling tools over HTTP needs a JWT or an API key"
        ).with_auth_header()
    name = request.path_params["name"]
    arguments = await read_json(request)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ApiError(422, "invalid_arguments", "the body must be the tool's arguments as a JSON object")
    key = idempotency_key(request)
    request_id = None if key is None else scoped_request_id(identity.label, key)
    outcome = await gateway.call_tool(identity, name, arguments, transport="http", request_id=request_id)
    result = outcome.result.model_dump(mode="json", by_alias=True, exclude_none=True)
    result.pop("resultType", None)
    if outcome.result.is_error:
        message = " ".join(b.get("text", "") for b in result.get("content", []) if isinstance(b, dict))
        return json_response(
            {
                **error_body("tool_error", message or "the tool failed"),
                "result": result,
                "billing": outcome.billing_json(),
            },
            status=502,
        )
    return ok(result=result, billing=outcome.billing_json())


async def list_tools(gateway: Gateway, request: Request) -> Response:
    tools = [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in gateway.registry.definitions()]
    return ok(tools=tools)


def _balance_shape(summary: dict[str, Any]) -> dict[str, Any]:
    """The original system's ``billing`` object, exactly."""
    return {
        "balance_usd": summary["balance_usd"],
        "balance_uah": summary["balance_uah"],
        "total_spent_usd": summary["total_spent_usd"],
        "total_requests": summary["total_requests"],
        "limits": {"daily_usd": summary["limits"]["daily_usd"], "monthly_usd": summary["limits"]["monthly_usd"]},
        "usage": {"today_usd": summary["usage"]["today_usd"], "month_usd": summary["usage"]["month_usd"]},
        "last_request_at": summary["last_request_at"],
    }


async def balance(gateway: Gateway, request: Request) -> Response:
    user_id = await _account_user(gateway, require_jwt(request))
    assert user_id is not None
    async with gateway.pool.connection() as conn:
        summary = await aledger.summary(conn, user_id)
    return ok(billing=_balance_shape(summary))


async def history(gateway: Gateway, request: Request) -> Response:
    user_id = await _account_user(gateway, require_jwt(request))
    assert user_id is not None
    limit = _int_param(request, "limit", 50, 1, 1000)
    offset = _int_param(request, "offset", 0, 0, 100_000)
    before_id = _int_param(request, "before_id", None, 1, 10**17)
    assert limit is not None and offset is not None
    kind = request.query_params.get("type") or None
    if kind is not None and kind not in TRANSACTION_TYPES:
        raise ApiError(422, "invalid_parameter", f"type must be one of {', '.join(TRANSACTION_TYPES)}", field="type")
    from_, to = _time_param(request, "from"), _time_param(request, "to")
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


SETTINGS_BODY = _object({"daily_limit_usd": MONEY_SCHEMA, "monthly_limit_usd": MONEY_SCHEMA})


async def settings(gateway: Gateway, request: Request) -> Response:
    user_id = await _account_user(gateway, require_jwt(request))
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


TOPUP_BODY = _object(
    {
        "amount_usd": {**MONEY_SCHEMA, "description": "USD to pay (users: whole cents) or credit (admins)"},
        "amount_uah": UAH_SCHEMA,
        "provider": {
            "type": "string",
            "pattern": "^[a-z][a-z0-9_]{0,49}$",
            "description": "users: the payment provider (default: the only or the configured default one)",
        },
        "user_id": {"type": "string", "format": "uuid", "description": "admins: the account to credit directly"},
        "description": {"type": "string", "maxLength": 1000, "description": "admins: ledger description"},
        "payment_provider": {**TEXT, "description": "admins: where the money came from (default admin)"},
        "payment_id": {**TEXT, "description": "admins: the payment's id, the idempotency key of the credit"},
    },
)
ADMIN_ONLY_TOPUP_FIELDS = ("description", "payment_provider", "payment_id")


def _topup_amount(body: dict[str, Any], *, cents: bool) -> tuple[Decimal, str]:
    if ("amount_usd" in body) == ("amount_uah" in body):
        raise ApiError(422, "invalid_request", "give exactly one of amount_usd and amount_uah")
    if "amount_usd" in body:
        return money(body["amount_usd"], "amount_usd", places=2 if cents else 8, positive=True), "USD"
    return money(body["amount_uah"], "amount_uah", places=2, positive=True), "UAH"


async def topup(gateway: Gateway, request: Request) -> Response:
    """Users start a payment (the balance moves when the provider confirms it); admins, naming a
    user_id, credit an account directly."""
    identity = require_jwt(request)
    body = await read_body(request, TOPUP_BODY)
    if "user_id" in body:
        return await _admin_credit(gateway, identity, body)
    extra = [name for name in ADMIN_ONLY_TOPUP_FIELDS if name in body]
    if extra:
        raise ApiError(
            422, "invalid_request", f"{extra[0]} is for administrators' direct credits (with user_id)", field=extra[0]
        )
    amount, currency = _topup_amount(body, cents=True)
    key = idempotency_key(request)
    user_id = await _account_user(gateway, identity)
    assert user_id is not None
    try:
        started = await gateway.payments.start_payment(user_id, amount, currency, body.get("provider"), key)
    except PaymentsUnavailable as exc:
        raise ApiError(503, "payments_unavailable", str(exc)) from None
    except AmountOutOfBounds as exc:
        raise ApiError(422, "amount_out_of_range", str(exc), field=f"amount_{currency.lower()}") from None
    except ProviderUnavailable as exc:
        raise ApiError(502, "payment_provider_unavailable", f"{exc}; nothing was charged, try again") from None
    intent = started.intent
    payment = {
        "intent_id": str(intent.intent_id),
        "provider": intent.provider,
        "status": intent.status,
        "amount": intent.amount,
        "currency": intent.currency,
        "checkout_url": started.checkout_url,
        "expires_at": iso_utc(started.expires_at),
    }
    if intent.status not in ("created", "pending"):
        payment["checkout_url"] = None  # paid, failed or expired: nothing more to pay there
    return json_response(
        {"success": True, "payment": payment, "replayed": intent.replayed}, status=200 if intent.replayed else 201
    )


async def _admin_credit(gateway: Gateway, identity: Identity, body: dict[str, Any]) -> Response:
    if not identity.admin:
        raise ApiError(403, "topup_not_self_service", TOPUP_HINT)
    if "provider" in body:
        raise ApiError(422, "invalid_request", "a direct credit names payment_provider, not provider", field="provider")
    if "payment_id" not in body:
        raise ApiError(
            422, "invalid_request", "a direct credit needs payment_id (its idempotency key)", field="payment_id"
        )
    try:
        user_id = uuid.UUID(body["user_id"])
    except ValueError:
        raise ApiError(422, "invalid_request", "user_id must be a UUID", field="user_id") from None
    amount, currency = _topup_amount(body, cents=False)
    async with gateway.operator_pool.connection() as conn:
        result = await aledger.top_up(
            conn,
            user_id,
            amount,
            body.get("payment_provider", "admin"),
            body["payment_id"],
            currency=currency,
            description=body.get("description"),
            metadata={"credited_by": identity.label},
        )
    return ok(transaction=asdict(result))


async def payment_status(gateway: Gateway, request: Request) -> Response:
    user_id = await _account_user(gateway, require_jwt(request))
    assert user_id is not None
    intent_id = _path_uuid(request, "intent_id")
    async with gateway.pool.connection() as conn:
        details = await aledger.payment_intent(conn, intent_id, user_id)
    payment = asdict(details)
    payment["intent_id"] = str(details.intent_id)
    for name in ("expires_at", "created_at", "updated_at"):
        payment[name] = iso_utc(payment[name])
    return ok(payment=payment)


async def payment_webhook(gateway: Gateway, request: Request) -> Response:
    """A provider's event: verified over the raw body before anything is read or stored."""
    provider = request.path_params["provider"]
    body = await request.body()
    try:
        result = await gateway.payments.handle_webhook(provider, body, request.headers)
    except PaymentsUnavailable as exc:
        raise ApiError(404, "unknown_provider", str(exc)) from None
    except WebhookRejected as exc:
        webhook_log.warning(
            "webhook rejected: %s", exc, extra={"provider": provider[:50], "bytes": len(body)}
        )
        raise ApiError(400, "invalid_webhook", f"the delivery was not accepted: {exc}; nothing was stored") from None
    except ProviderUnavailable as exc:
        # The provider could not confirm the delivery now: nothing was stored; a 5xx makes it retry.
        webhook_log.warning("webhook not confirmed: %s", exc, extra={"provider": provider[:50]})
        error = ApiError(
            503, "payment_provider_unavailable", f"{exc}; nothing was stored, deliver it again later"
        )
        error.headers["Retry-After"] = "60"
        raise error from None
    return ok(
        received=True,
        outcome=result.outcome,
        duplicate=result.duplicate,
        intent_id=None if result.intent_id is None else str(result.intent_id),
    )


async def admin_get_billing(gateway: Gateway, request: Request) -> Response:
    require_admin(request)
    user_id = _path_uuid(request, "user_id")
    async with gateway.operator_pool.connection() as conn:
        summary = await aledger.summary(conn, user_id)
    return ok(billing=summary)


ADMIN_BILLING_BODY = _object(
    {
        "daily_limit_usd": MONEY_SCHEMA,
        "monthly_limit_usd": MONEY_SCHEMA,
        "is_active": {"type": "boolean"},
        "billing_enabled": {"type": "boolean"},
        "limit_override": {"type": "boolean"},
    }
)


async def admin_put_billing(gateway: Gateway, request: Request) -> Response:
    require_admin(request)
    user_id = _path_uuid(request, "user_id")
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


ADJUST_BODY = _object(
    {
        "amount_usd": {**MONEY_SCHEMA, "description": "signed USD amount: positive credits, negative debits"},
        "reason": {"type": "string", "minLength": 1, "maxLength": 1000},
        "idempotency_key": TEXT,
    },
    ("amount_usd", "reason", "idempotency_key"),
)


async def admin_adjust(gateway: Gateway, request: Request) -> Response:
    admin = require_admin(request)
    user_id = _path_uuid(request, "user_id")
    body = await read_body(request, ADJUST_BODY)
    amount = money(body["amount_usd"], "amount_usd", signed=True)
    if amount == 0:
        raise ApiError(422, "invalid_amount", "amount_usd must not be zero", field="amount_usd")
    async with gateway.operator_pool.connection() as conn:
        result = await aledger.adjust(conn, user_id, amount, body["reason"], admin.label, body["idempotency_key"])
    return ok(transaction=asdict(result))


REFUND_BODY = _object(
    {
        "amount_usd": MONEY_SCHEMA,
        "reason": {"type": "string", "minLength": 1, "maxLength": 1000},
        "idempotency_key": TEXT,
    },
    ("amount_usd", "reason", "idempotency_key"),
)


async def admin_refund(gateway: Gateway, request: Request) -> Response:
    require_admin(request)
    transaction_id = _path_int(request, "transaction_id")
    body = await read_body(request, REFUND_BODY)
    amount = money(body["amount_usd"], "amount_usd", positive=True)
    async with gateway.operator_pool.connection() as conn:
        result = await aledger.refund(conn, transaction_id, amount, body["reason"], body["idempotency_key"])
    return ok(transaction=asdict(result))


CREDIT_PAYMENT_BODY = _object(
    {
        "reason": {"type": "string", "minLength": 1, "maxLength": 1000, "description": "why it is credited (audited)"},
        "amount": {**MONEY_SCHEMA, "description": "amount to credit in currency (default: what was paid)"},
        "currency": {"type": "string", "enum": ["USD", "UAH"], "description": "default: the paid currency"},
    },
    ("reason",),
)


async def admin_credit_payment(gateway: Gateway, request: Request) -> Response:
    """An administrator credits a payment in review, after looking at it (billing.credit_reviewed_payment)."""
    admin = require_admin(request)
    intent_id = _path_uuid(request, "intent_id")
    body = await read_body(request, CREDIT_PAYMENT_BODY)
    amount = money(body["amount"], "amount", positive=True) if "amount" in body else None
    async with gateway.operator_pool.connection() as conn:
        credit = await aledger.credit_reviewed_payment(
            conn, intent_id, admin.label, body["reason"], amount, body.get("currency")
        )
    return ok(payment=asdict(credit))


async def health(gateway: Gateway, request: Request) -> Response:
    """Every pool answers (metering, payments, operator): a login that stopped working is a failure."""
    for authority, pool in gateway.pools.items():
        try:
            async with pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:
            return json_response(
                {"status": "unavailable", "database": f"unreachable ({authority.value}): {type(exc).__name__}"},
                status=503,
            )
    return json_response({"status": "ok", "database": "ok", "tools": len(gateway.registry)})


async def metrics(gateway: Gateway, request: Request) -> Response:
    from api.gateway.metrics import CONTENT_TYPE

    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)


async def openapi(gateway: Gateway, request: Request) -> Response:
    return json_response(gateway.openapi)


HISTORY_QUERY: tuple[tuple[str, dict[str, Any]], ...] = (
    ("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}),
    ("offset", {"type": "integer", "minimum": 0, "maximum": 100000, "default": 0}),
    ("type", {"type": "string", "enum": list(TRANSACTION_TYPES)}),
    ("from", {"type": "string", "format": "date-time"}),
    ("to", {"type": "string", "format": "date-time"}),
    ("before_id", {"type": "integer", "minimum": 1, "description": "keyset cursor: pagination.next_before_id"}),
)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/health", health, "Liveness and database check", "none", tag="operations"),
    Endpoint("GET", "/metrics", metrics, "Prometheus metrics", "none", tag="operations"),
    Endpoint("GET", "/openapi.json", openapi, "This document", "none", tag="operations"),
    Endpoint("GET", "/api/tools", list_tools, "The tools this gateway serves", "none", tag="tools"),
    Endpoint(
        "POST",
        "/api/tools/{name}",
        call_tool,
        "Call a tool (metered: tracked, pre-flight checked and charged). Body: the tool's arguments. "
        "Optional Idempotency-Key header, scoped to the caller: a replay is not run or charged again.",
        "key_or_jwt",
        body={"type": "object", "description": "the tool's arguments (see its input schema)"},
        responses={402: "insufficient funds", 429: "spend limit reached", 502: "the tool failed (not charged)"},
        tag="tools",
    ),
    Endpoint("GET", "/api/billing/balance", balance, "The caller's balance, limits and usage", "jwt"),
    Endpoint(
        "GET", "/api/billing/history", history, "The caller's transactions, newest first", "jwt", query=HISTORY_QUERY
    ),
    Endpoint(
        "PUT", "/api/billing/settings", settings, "Change the caller's daily/monthly limits", "jwt", body=SETTINGS_BODY
    ),
    Endpoint(
        "POST",
        "/api/billing/topup",
        topup,
        "Start a top-up payment (users: answers the provider's checkout URL; the balance moves when the provider "
        "confirms the payment). Administrators naming user_id credit that account directly. Optional "
        "Idempotency-Key header: a replay returns the same payment.",
        "jwt",
        body=TOPUP_BODY,
        responses={
            201: "payment started: pay at payment.checkout_url",
            502: "the payment provider refused or could not be reached",
            503: "no payment provider is configured",
        },
    ),
    Endpoint(
        "GET",
        "/api/billing/payments/{intent_id}",
        payment_status,
        "One of the caller's payments: status, what was credited and reversed",
        "jwt",
    ),
    Endpoint(
        "POST",
        "/api/payments/{provider}/webhook",
        payment_webhook,
        "Payment provider webhook (Stripe, Fondy): signature verified over the raw body; each event applied once",
        "none",
        body={"type": "object", "description": "the provider's event, as it signs it"},
        responses={
            400: "signature or body not accepted: nothing stored",
            404: "no such provider configured",
            503: "the provider could not confirm the delivery now (Fondy's status API): nothing stored, retry",
        },
        tag="payments",
    ),
    Endpoint(
        "GET", "/api/admin/users/{user_id}/billing", admin_get_billing, "A user's billing account", "admin", tag="admin"
    ),
    Endpoint(
        "PUT",
        "/api/admin/users/{user_id}/billing",
        admin_put_billing,
        "Change a user's limits, active flag, billing flag or limit override",
        "admin",
        body=ADMIN_BILLING_BODY,
        tag="admin",
    ),
    Endpoint(
        "POST",
        "/api/admin/users/{user_id}/adjust",
        admin_adjust,
        "Signed, audited correction",
        "admin",
        body=ADJUST_BODY,
        tag="admin",
    ),
    Endpoint(
        "POST",
        "/api/admin/payments/{intent_id}/credit",
        admin_credit_payment,
        "Credit a payment in review (paid, not credited: not exactly what was asked), once, audited with the "
        "reason; amount and currency default to what was paid",
        "admin",
        body=CREDIT_PAYMENT_BODY,
        responses={409: "the payment is not in review, or was credited with other figures"},
        tag="admin",
    ),
    Endpoint(
        "POST",
        "/api/admin/transactions/{transaction_id}/refund",
        admin_refund,
        "Refund part or all of a charge",
        "admin",
        body=REFUND_BODY,
        tag="admin",
    ),
)


def routes(gateway: Gateway) -> list[Route]:
    def bind(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await endpoint.handler(gateway, request)

        handle.__name__ = endpoint.handler.__name__
        return handle

    return [Route(e.path, bind(e), methods=[e.method], name=e.handler.__name__) for e in ENDPOINTS]


# ---- OpenAPI --------------------------------------------------------------------------------------

ERROR_SCHEMA = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"const": False},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
SUCCESS_SCHEMA = {"type": "object", "properties": {"success": {"const": True}}}


def _mcp_operation(operation_id: str, summary: str, **extra: Any) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["mcp"],
        "security": [{"bearer": []}, {"apiKey": []}, {}],
        "responses": {"default": {"description": "per the MCP transport specification"}},
        **extra,
    }


_JSONRPC_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"type": "object", "description": "a JSON-RPC 2.0 message"}}},
}

# The MCP transports are served by the SDK; they are listed so that the document names every route.
MCP_PATHS: dict[str, Any] = {
    "/sse": {
        "get": _mcp_operation(
            "mcp_sse_stream",
            "MCP legacy SSE transport: an event stream; its first event names the message endpoint",
        )
    },
    "/messages/": {
        "post": _mcp_operation(
            "mcp_sse_message",
            "MCP legacy SSE transport: a client message for the session of `session_id` (202)",
            parameters=[{"name": "session_id", "in": "query", "required": True, "schema": {"type": "string"}}],
            requestBody=_JSONRPC_BODY,
        )
    },
    "/mcp": {
        "post": _mcp_operation(
            "mcp_streamable_post",
            "MCP streamable HTTP transport: client messages (initialize opens a session)",
            requestBody=_JSONRPC_BODY,
        ),
        "get": _mcp_operation("mcp_streamable_get", "MCP streamable HTTP transport: the session's event stream"),
        "delete": _mcp_operation("mcp_streamable_delete", "MCP streamable HTTP transport: end the session"),
    },
}


def build_openapi(version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "operationId": endpoint.handler.__name__,
            "tags": [endpoint.tag],
            "responses": {
                "200": {"description": "success", "content": {"application/json": {"schema": SUCCESS_SCHEMA}}},
                "default": {"description": "an error", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
            },
        }
        for status, text in endpoint.responses.items():
            operation["responses"][str(status)] = {
                "description": text,
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            }
        if endpoint.auth != "none":
            operation["security"] = (
                [{"bearer": []}, {"apiKey": []}] if endpoint.auth == "key_or_jwt" else [{"bearer": []}]
            )
        parameters: list[dict[str, Any]] = []
        for name in re.findall(r"{(\w+)}", endpoint.path):
            schema: dict[str, Any] = {"type": "string"}
            if name in ("user_id", "intent_id"):
                schema = {"type": "string", "format": "uuid"}
            elif name == "transaction_id":
                schema = {"type": "integer", "minimum": 1}
            parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
        for name, schema in endpoint.query:
            parameters.append({"name": name, "in": "query", "required": False, "schema": schema})
        if endpoint.path == "/api/tools/{name}":
            parameters.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 200},
                }
            )
        if parameters:
            operation["parameters"] = parameters
        if endpoint.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": endpoint.body}}}
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    paths.update(MCP_PATHS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tollgate",
            "version": version,
            "description": "Prepaid, usage-based billing gateway for MCP tools",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or tg_ API key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        },
    }
