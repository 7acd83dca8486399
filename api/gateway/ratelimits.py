"""Where the gateway applies the rate limits (api.abuse.ratelimit; docs/abuse.md "Rate limits").

Each request belongs to zero or more classes of route, and each class has a limit per client address and
limits per principal:

    class       requests                                        per address        per principal
    tool_calls  POST /api/tools/{name}; MCP tools/call              tool_calls_per_ip  tool_calls_per_user,
                (over /mcp and /messages/)                                             _per_api_key, _per_anonymous
    billing     /api/billing/*                                  billing_per_ip     billing_per_user
    topups      POST /api/billing/topup (a billing request too) topups_per_ip      topups_per_user
    webhooks    /api/payments/{provider}/webhook                webhooks_per_ip    -
    sessions    a new MCP session: GET /sse, or POST /mcp       sessions_per_ip    -
                without an Mcp-Session-Id header
    mcp_messages a message on an open MCP session: POST /mcp   mcp_messages_per_ip -
                with an Mcp-Session-Id header, POST /messages/

The address is ``api.abuse.clientip`` (the peer, or X-Forwarded-For past trusted proxies); an IPv6 client is
keyed by its /64, the block one subscriber is given, so rotating addresses within it gains nothing. The
principal is the JWT user or the user an API key is bound to (``per_user``, by billing user id, so a user's
JWT and bound keys share one budget), the API key itself (``per_api_key``), or, for anonymous MCP callers,
their address (``per_anonymous``). Every limit of a request applies, all or nothing (a refusal spends none).

Two middlewares: ``ClientRateLimitMiddleware`` runs before authentication and spends the per-address units
(so a flood of bad credentials costs no database lookups past its budget); ``PrincipalRateLimitMiddleware``
runs after it and spends the per-principal ones, giving the address's units back when it refuses. A refusal
is a 429 with Retry-After and the limit's name (``RateLimited``). MCP ``tools/call`` is checked in the MCP
handler (``RateLimits.tool_call``), where it becomes a tool error and the session goes on.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
from collections.abc import AsyncIterator

import psycopg
import psycopg_pool
from prometheus_client import CollectorRegistry
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from api.abuse.clientip import TrustedProxies
from api.abuse.config import AbuseSettings
from api.abuse.ratelimit import Check, RateLimiter, Refusal
from api.gateway.auth import Accounts, Identity, identity_of
from api.gateway.http.envelope import error_response
from api.gateway.http.payments import PROVIDER_NAME

log = logging.getLogger("tollgate.gateway.ratelimits")

# The scope keys under which the per-address middleware leaves, for the principal's, the checks it spent and
# the request's classes of route (worked out once a request).
SPENT_KEY = "tollgate.rate_limit.spent"
CLASSES_KEY = "tollgate.rate_limit.classes"

PER_IP = {
    "tool_calls": "tool_calls_per_ip",
    "billing": "billing_per_ip",
    "topups": "topups_per_ip",
    "webhooks": "webhooks_per_ip",
    "sessions": "sessions_per_ip",
    "mcp_messages": "mcp_messages_per_ip",
}
PER_USER = {"tool_calls": "tool_calls_per_user", "billing": "billing_per_user", "topups": "topups_per_user"}
PER_API_KEY = {"tool_calls": "tool_calls_per_api_key"}
PER_ANONYMOUS = {"tool_calls": "tool_calls_per_anonymous"}


def route_classes(scope: Scope) -> tuple[str, ...]:
    """The classes of route a request belongs to (none: no limit applies)."""
    method: str = scope["method"]
    path: str = scope["path"]
    if path.startswith("/api/tools/") and method == "POST":
        return ("tool_calls",)
    if path.startswith("/api/billing/"):
        return ("billing", "topups") if path == "/api/billing/topup" and method == "POST" else ("billing",)
    if PROVIDER_NAME_PATH.match(path):
        return ("webhooks",)
    if path == "/sse" and method == "GET":
        return ("sessions",)
    if path == "/mcp" and method == "POST":
        with_session = any(name == b"mcp-session-id" for name, _ in scope["headers"])
        return ("mcp_messages",) if with_session else ("sessions",)
    if path.startswith("/messages") and method == "POST":
        return ("mcp_messages",)
    return ()


PROVIDER_NAME_PATH = re.compile(rf"^/api/payments/(?:{PROVIDER_NAME})/webhook$")


def address_key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The subject of a per-address limit: the IPv4 address, or the /64 of an IPv6 one."""
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


class RateLimits:
    """The gateway's limiter with what it keys on: trusted proxies for addresses, accounts for user ids."""

    def __init__(
        self, settings: AbuseSettings, proxies: TrustedProxies, accounts: Accounts, registry: CollectorRegistry
    ) -> None:
        self.limiter = RateLimiter(settings.rate_limits, enabled=settings.enabled, registry=registry)
        self.proxies = proxies
        self.accounts = accounts

    @property
    def enabled(self) -> bool:
        return self.limiter.enabled

    @contextlib.asynccontextmanager
    async def running(self, *, embedded_ledger: bool) -> AsyncIterator[RateLimits]:
        """The limiter's store for the app's lifetime (Redis must answer at start when configured)."""
        if self.enabled and not self.limiter.shared and not embedded_ledger:
            log.warning(
                "rate limits are kept per process (abuse.rate_limits.storage = memory://): with several gateways "
                "on this ledger, each allows the full limit; set storage = redis://host:port/db to share them"
            )
        async with self.limiter.running():
            yield self

    def address_checks(self, classes: tuple[str, ...], scope: Scope) -> list[Check]:
        address = self.proxies.client_ip(scope)
        if address is None:
            return []
        subject = address_key(address)
        return [Check(PER_IP[name], subject) for name in classes]

    async def principal_checks(self, classes: tuple[str, ...], identity: Identity, scope: Scope) -> list[Check]:
        checks: list[Check] = []
        user_id = await self._user_id(identity)
        for name in classes:
            if user_id is not None and name in PER_USER:
                checks.append(Check(PER_USER[name], user_id))
            if identity.kind == "api_key" and identity.client_key is not None and name in PER_API_KEY:
                checks.append(Check(PER_API_KEY[name], identity.client_key))
            if identity.kind == "anonymous" and name in PER_ANONYMOUS:
                address = self.proxies.client_ip(scope)
                if address is not None:
                    checks.append(Check(PER_ANONYMOUS[name], address_key(address)))
        return checks

    async def _user_id(self, identity: Identity) -> str | None:
        try:
            user_id = await self.accounts.user_id(identity)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            # The ledger cannot say who this is; the request will meet the same fault in its handler and
            # answer it (503). The per-address limit has already been applied.
            log.warning("per-user rate limit skipped: the ledger did not answer (%s)", exc)
            return None
        return None if user_id is None else str(user_id)

    async def tool_call(self, identity: Identity, scope: Scope) -> Refusal | None:
        """An MCP tools/call: the per-address and per-principal tool-call limits, all or nothing."""
        if not self.enabled:
            return None
        classes = ("tool_calls",)
        checks = self.address_checks(classes, scope) + await self.principal_checks(classes, identity, scope)
        return await self.limiter.hit(checks)


class ClientRateLimitMiddleware:
    """The per-address limits, before authentication (module docstring)."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.limits.enabled:
            classes = scope[CLASSES_KEY] = route_classes(scope)
            if classes:
                checks = self.limits.address_checks(classes, scope)
                refusal = await self.limits.limiter.hit(checks)
                if refusal is not None:
                    await error_response(refusal.error())(scope, receive, send)
                    return
                scope[SPENT_KEY] = checks
        await self.app(scope, receive, send)


class PrincipalRateLimitMiddleware:
    """The per-principal limits, after authentication; a refusal gives back the address's units."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.limits.enabled:
            classes = scope[CLASSES_KEY] if CLASSES_KEY in scope else route_classes(scope)
            checks = await self.limits.principal_checks(classes, identity_of_scope(scope), scope) if classes else []
            if checks:
                refusal = await self.limits.limiter.hit(checks)
                if refusal is not None:
                    await self.limits.limiter.give_back(scope.get(SPENT_KEY, []))
                    await error_response(refusal.error())(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def identity_of_scope(scope: Scope) -> Identity:
    return identity_of(HTTPConnection(scope))
