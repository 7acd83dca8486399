"""The endpoint table: every HTTP route with its method, path, handler, access kind, request schema and
answers. Starlette's routes, the public paths the anonymous guard lets through, and ``/openapi.json``
(``api.gateway.http.openapi``) are all built from it, so none of them can say what the others do not.

``routes(gateway)`` binds each endpoint with its access check (``api.gateway.http.access``): the handler
runs only for a caller of the endpoint's kind, and is given that caller. Handlers check nothing about who
calls, except where the answer depends on the body (an administrator's direct credit on POST /topup).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.gateway.auth import Identity
from api.gateway.config import Settings
from api.gateway.http.access import Access, authorize
from api.gateway.http.admin import (
    ABUSE_EVENTS_QUERY,
    ADJUST_BODY,
    ADMIN_BILLING_BODY,
    CREDIT_PAYMENT_BODY,
    REFUND_BODY,
    admin_abuse_events,
    admin_adjust,
    admin_credit_payment,
    admin_get_billing,
    admin_put_billing,
    admin_refund,
)
from api.gateway.http.billing import HISTORY_QUERY, SETTINGS_BODY, balance, history, settings
from api.gateway.http.flags import DECISION_BODY, FLAGS_QUERY, clear_flag, confirm_flag, list_flags
from api.gateway.http.ops import health, metrics, openapi
from api.gateway.http.payments import PROVIDER_NAME, TOPUP_BODY, payment_status, payment_webhook, topup
from api.gateway.http.tools import call_tool, list_tools

if TYPE_CHECKING:
    from api.gateway.context import Gateway

Handler = Callable[["Gateway", Request, Identity], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    access: Access
    body: dict[str, Any] | None = None
    query: tuple[tuple[str, dict[str, Any]], ...] = ()
    responses: dict[int, str] = field(default_factory=dict)
    tag: str = "billing"


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/health", health, "Liveness and database check", Access.PUBLIC, tag="operations"),
    Endpoint(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics (revenue included): an administrator's JWT or the metrics token "
        "([abuse.metrics] token); not served here when [abuse.metrics] port is set",
        Access.METRICS,
        responses={401: "no metrics token or administrator's JWT", 403: "not an administrator"},
        tag="operations",
    ),
    Endpoint("GET", "/openapi.json", openapi, "This document", Access.PUBLIC, tag="operations"),
    Endpoint("GET", "/api/tools", list_tools, "The tools this gateway serves", Access.PUBLIC, tag="tools"),
    Endpoint(
        "POST",
        "/api/tools/{name}",
        call_tool,
        "Call a tool (metered: tracked, pre-flight checked and charged). Body: the tool's arguments. "
        "Optional Idempotency-Key header, scoped to the caller: a replay is not run or charged again.",
        Access.CALLER,
        body={"type": "object", "description": "the tool's arguments (see its input schema)"},
        responses={402: "insufficient funds", 429: "spend limit reached", 502: "the tool failed (not charged)"},
        tag="tools",
    ),
    Endpoint("GET", "/api/billing/balance", balance, "The caller's balance, limits and usage", Access.USER),
    Endpoint(
        "GET",
        "/api/billing/history",
        history,
        "The caller's transactions, newest first",
        Access.USER,
        query=HISTORY_QUERY,
    ),
    Endpoint(
        "PUT",
        "/api/billing/settings",
        settings,
        "Change the caller's daily/monthly limits",
        Access.USER,
        body=SETTINGS_BODY,
    ),
    Endpoint(
        "POST",
        "/api/billing/topup",
        topup,
        "Start a top-up payment (users: answers the provider's checkout URL; the balance moves when the provider "
        "confirms the payment). Administrators naming user_id credit that account directly. Optional "
        "Idempotency-Key header: a replay returns the same payment.",
        Access.USER,
        body=TOPUP_BODY,
        responses={
            201: "payment started: pay at payment.checkout_url",
            429: "refused by a payment fraud rule (error.rule, error.retry_at, Retry-After): no payment started",
            502: "the payment provider refused or could not be reached",
            503: "no payment provider is configured",
        },
    ),
    Endpoint(
        "GET",
        "/api/billing/payments/{intent_id}",
        payment_status,
        "One of the caller's payments: status, what was credited and reversed",
        Access.USER,
    ),
    Endpoint(
        "POST",
        "/api/payments/{provider}/webhook",
        payment_webhook,
        "Payment provider webhook (Stripe, Fondy): signature verified over the raw body; each event applied once",
        Access.PROVIDER,
        body={"type": "object", "description": "the provider's event, as it signs it"},
        responses={
            400: "signature or body not accepted: nothing stored",
            404: "no such provider configured",
            503: "the provider could not confirm the delivery now (Fondy's status API): nothing stored, retry",
        },
        tag="payments",
    ),
    Endpoint(
        "GET",
        "/api/admin/users/{user_id}/billing",
        admin_get_billing,
        "A user's billing account",
        Access.ADMIN,
        tag="admin",
    ),
    Endpoint(
        "PUT",
        "/api/admin/users/{user_id}/billing",
        admin_put_billing,
        "Change a user's limits, active flag, billing flag or limit override",
        Access.ADMIN,
        body=ADMIN_BILLING_BODY,
        tag="admin",
    ),
    Endpoint(
        "POST",
        "/api/admin/users/{user_id}/adjust",
        admin_adjust,
        "Signed, audited correction",
        Access.ADMIN,
        body=ADJUST_BODY,
        tag="admin",
    ),
    Endpoint(
        "POST",
        "/api/admin/payments/{intent_id}/credit",
        admin_credit_payment,
        "Credit a payment in review (paid, not credited: not exactly what was asked), once, audited with the "
        "reason; amount and currency default to what was paid",
        Access.ADMIN,
        body=CREDIT_PAYMENT_BODY,
        responses={409: "the payment is not in review, or was credited with other figures"},
        tag="admin",
    ),
    Endpoint(
        "POST",
        "/api/admin/transactions/{transaction_id}/refund",
        admin_refund,
        "Refund part or all of a charge (capped per account and period: velocity.refund_cap_usd; the reason and "
        "the administrator are recorded)",
        Access.ADMIN,
        body=REFUND_BODY,
        responses={409: "past the refund cap (refund_cap_exceeded; the refusal is recorded), or past the charge"},
        tag="admin",
    ),
    Endpoint(
        "GET",
        "/api/admin/abuse/flags",
        list_flags,
        "Velocity flags raised on accounts (spend spikes, fan-out), newest first; open ones by default",
        Access.ADMIN,
        query=FLAGS_QUERY,
        tag="admin",
    ),
    Endpoint(
        "POST",
        "/api/admin/abuse/flags/{flag_id}/clear",
        clear_flag,
        "Clear a flag (a false alarm; audited with the reason): reactivates an account the flag paused",
        Access.ADMIN,
        body=DECISION_BODY,
        responses={404: "no such flag", 409: "the flag was confirmed already"},
        tag="admin",
    ),
    Endpoint(
        "POST",
        "/api/admin/abuse/flags/{flag_id}/confirm",
        confirm_flag,
        "Confirm a flag (audited with the reason): the account stays, or is now, deactivated",
        Access.ADMIN,
        body=DECISION_BODY,
        responses={404: "no such flag", 409: "the flag was cleared already"},
        tag="admin",
    ),
    Endpoint(
        "GET",
        "/api/admin/abuse/events",
        admin_abuse_events,
        "The audit trail of the abuse rules, newest first: every refusal, limit, flag and pause a rule caused, "
        "with its figures and the message the user got",
        Access.ADMIN,
        query=ABUSE_EVENTS_QUERY,
        tag="admin",
    ),
)


# What a path parameter of an open endpoint looks like, for is_public: a provider name (PROVIDER_NAME).
# Anything else on an open path is still routed (and answered 404 by the handler).
PATH_PARAMETERS = {"provider": PROVIDER_NAME}


def _path_pattern(path: str) -> re.Pattern[str]:
    parts = re.split(r"{(\w+)}", path)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?:{PATH_PARAMETERS.get(part, '[^/]+')})" for i, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


OPEN_PATHS: tuple[re.Pattern[str], ...] = tuple(_path_pattern(e.path) for e in ENDPOINTS if e.access.open)


def is_public(path: str) -> bool:
    """Whether ``path`` is an endpoint served without our credentials (PUBLIC or PROVIDER in the table)."""
    return any(pattern.match(path) for pattern in OPEN_PATHS)


def bind(gateway: Gateway, endpoint: Endpoint) -> Route:
    """The Starlette route of ``endpoint``: the access check, then the handler with the caller it let in."""

    async def handle(request: Request) -> Response:
        caller = authorize(endpoint.access, request)
        return await endpoint.handler(gateway, request, caller)

    handle.__name__ = endpoint.handler.__name__
    handle.__qualname__ = f"bind.<{endpoint.handler.__name__}>"
    return Route(endpoint.path, handle, methods=[endpoint.method], name=endpoint.handler.__name__)


def served_endpoints(settings: Settings) -> tuple[Endpoint, ...]:
    """The endpoints the main port serves: all of them, but /metrics when it has a port of its own."""
    if settings.abuse.metrics.port is None:
        return ENDPOINTS
    return tuple(endpoint for endpoint in ENDPOINTS if endpoint.path != "/metrics")


def routes(gateway: Gateway, endpoints: tuple[Endpoint, ...] = ENDPOINTS) -> list[Route]:
    return [bind(gateway, endpoint) for endpoint in endpoints]
