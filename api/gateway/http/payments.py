"""Money in: a user's top-up (a provider checkout; administrators credit directly), a payment's status, and
the providers' webhooks (the signature authenticates them).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from api.gateway.auth import Identity
from api.gateway.http.envelope import ApiError, json_response, ok
from api.gateway.http.parsing import (
    MONEY_SCHEMA,
    TEXT,
    UAH_SCHEMA,
    idempotency_key,
    money,
    object_schema,
    path_uuid,
    read_body,
)
from api.jsonio import iso_utc
from api.ledger import aio as aledger
from api.payments.base import ProviderUnavailable, WebhookRejected
from api.payments.service import PaymentsUnavailable

if TYPE_CHECKING:
    from api.gateway.context import Gateway


webhook_log = logging.getLogger("tollgate.payments")

TOPUP_HINT = (
    "Crediting an account directly is for administrators; to top up your own balance, leave out user_id "
    "and pay at the checkout URL POST /api/billing/topup answers with."
)


# A payment provider's name, as the providers' modules are named: the top-up body's `provider` and the webhook
# path's `{provider}` (api.gateway.http.endpoints) both take it.
PROVIDER_NAME = "[a-z][a-z0-9_]{0,49}"

TOPUP_BODY = object_schema(
    {
        "amount_usd": {**MONEY_SCHEMA, "description": "USD to pay (users: whole cents) or credit (admins)"},
        "amount_uah": UAH_SCHEMA,
        "provider": {
            "type": "string",
            "pattern": f"^{PROVIDER_NAME}$",
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


async def topup(gateway: Gateway, request: Request, caller: Identity) -> Response:
    """Users start a payment (the balance moves when the provider confirms it); admins, naming a
    user_id, credit an account directly."""
    body = await read_body(request, TOPUP_BODY)
    if "user_id" in body:
        return await _admin_credit(gateway, caller, body)
    extra = [name for name in ADMIN_ONLY_TOPUP_FIELDS if name in body]
    if extra:
        raise ApiError(
            422, "invalid_request", f"{extra[0]} is for administrators' direct credits (with user_id)", field=extra[0]
        )
    amount, currency = _topup_amount(body, cents=True)
    key = idempotency_key(request)
    user_id = await gateway.accounts.user_id(caller)
    assert user_id is not None
    # PaymentsUnavailable (503) and AmountOutOfBounds (422) answer as they are; a provider's failure says more.
    # The per-network payment caps count the client's address (behind the configured trusted proxies).
    client_ip = gateway.client_ip(request.scope)
    # PaymentRefused (429, Retry-After: a payment fraud rule) answers as it is too, before any provider call.
    try:
        started = await gateway.payments.start_payment(
            user_id, amount, currency, body.get("provider"), key, client_ip=client_ip
        )
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


async def payment_status(gateway: Gateway, request: Request, caller: Identity) -> Response:
    user_id = await gateway.accounts.user_id(caller)
    assert user_id is not None
    intent_id = path_uuid(request, "intent_id")
    async with gateway.pool.connection() as conn:
        details = await aledger.payment_intent(conn, intent_id, user_id)
    payment = asdict(details)
    payment["intent_id"] = str(details.intent_id)
    for name in ("expires_at", "created_at", "updated_at"):
        payment[name] = iso_utc(payment[name])
    return ok(payment=payment)


async def payment_webhook(gateway: Gateway, request: Request, caller: Identity) -> Response:
    """A provider's event: verified over the raw body before anything is read or stored."""
    provider = request.path_params["provider"]
    body = await request.body()
    try:
        result = await gateway.payments.handle_webhook(provider, body, request.headers)
    except PaymentsUnavailable as exc:
        raise ApiError(404, "unknown_provider", str(exc)) from None
    except WebhookRejected as exc:
        webhook_log.warning("webhook rejected: %s", exc, extra={"provider": provider[:50], "bytes": len(body)})
        raise ApiError(400, "invalid_webhook", f"the delivery was not accepted: {exc}; nothing was stored") from None
    except ProviderUnavailable as exc:
        # The provider could not confirm the delivery now: nothing was stored; a 5xx makes it retry.
        webhook_log.warning("webhook not confirmed: %s", exc, extra={"provider": provider[:50]})
        error = ApiError(503, "payment_provider_unavailable", f"{exc}; nothing was stored, deliver it again later")
        error.headers["Retry-After"] = "60"
        raise error from None
    return ok(
        received=True,
        outcome=result.outcome,
        duplicate=result.duplicate,
        intent_id=None if result.intent_id is None else str(result.intent_id),
    )
