"""The gateway application: Starlette routes, MCP transports, authentication and the lifespan.

``create_app(settings, logins)`` returns the ASGI app. ``logins`` holds one URL per authority
(``api.ledger.roles``): the app keeps a connection pool for each, logged in as that authority's role —
metering (tool calls, balance, history, own limits, payment status, authentication: the hot path),
payments (a user's top-up start, provider webhooks, the intent expiry loop) and operator (the admin
endpoints, the initial prices of the tool configuration). Its lifespan first checks each login and
refuses to serve over one that is a superuser, owns schema billing or holds more than its authority;
then it opens the pools, loads the tools (``TOLLGATE_TOOLS_CONFIG``, by default ``./tollgate.toml``),
applies configured initial prices, starts the MCP session manager and the spool retry loop (and, with
``[abuse.metrics] port``, the metrics listener); at shutdown it closes them in reverse order after uvicorn has
let in-flight calls finish (and settle).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import Any

import anyio
import psycopg
import psycopg_pool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.abuse import connections
from api.abuse.connections import BODY_COMPLETE_KEY, BodyDeadline, BodyTimeout, ConnectionLimits
from api.errors import TollgateError
from api.gateway.auth import GatewayAuthBackend, InvalidCredentials, JWTVerifier, load_jwt_key
from api.gateway.config import Settings
from api.gateway.context import VERSION, Gateway
from api.gateway.http.endpoints import is_public, routes, served_endpoints
from api.gateway.http.envelope import error_body, error_response, json_response
from api.gateway.http.openapi import build_openapi
from api.gateway.mcp import MCPTransports
from api.gateway.metrics import STREAM_ROUTES, method_label, route_label
from api.gateway.metrics_port import metrics_listener
from api.gateway.ratelimits import ClientRateLimitMiddleware, PrincipalRateLimitMiddleware
from api.ledger import aio as aledger
from api.ledger import db, roles
from api.ledger.roles import Authority
from api.logs import request_id_var
from api.tools.registry import ToolRegistry

log = logging.getLogger("tollgate.gateway")
access_log = logging.getLogger("tollgate.access")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class BodyTooLarge(TollgateError):
    status = 413
    code = "body_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


class RequestContextMiddleware:
    """Request id, body size cap and body timeout, access log and HTTP metrics, as plain ASGI (no buffering of
    streams). Metric labels are route templates and a fixed set of methods (``api.gateway.metrics``)."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self.max_body = gateway.settings.gateway.max_body_bytes
        self.body_timeout = connections.effective(gateway.settings.abuse).body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        # For the 500 handler, which Starlette runs outside this middleware (the context var is reset by then).
        scope["tollgate.request_id"] = request_id
        started = time.perf_counter()
        status = 500
        path: str = scope["path"]

        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await error_response(BodyTooLarge(self.max_body))(scope, receive, send)
            request_id_var.reset(token)
            return
        received = 0
        # Only a request whose body is still arriving is timed (GET streams have none; a small body is usually
        # all here already, as our protocol marks in the scope).
        has_body = (length is not None and length != b"0") or b"transfer-encoding" in headers
        timed = has_body and self.body_timeout and not scope.get(BODY_COMPLETE_KEY)
        body_receive = BodyDeadline(receive, self.body_timeout).receive if timed else receive
        response_started = False
        # Set once this middleware has answered on its own (a body timeout): what the app sends is dropped.
        answered = False

        async def limited_receive() -> Message:
            nonlocal received, answered
            try:
                message = await body_receive()
            except BodyTimeout as exc:
                # Answer here: the application (the MCP SDK, say) may swallow the exception.
                if not response_started and not answered:
                    await error_response(exc)(scope, receive, send_with_id)
                    answered = True
                raise
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if answered:
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except BodyTimeout:
            if not answered:
                raise
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope)
            self.gateway.metrics.http_requests.labels(method_label(scope["method"]), route, str(status)).inc()
            if route not in STREAM_ROUTES:
                self.gateway.metrics.http_latency.labels(route).observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    path,
                    status,
                    extra={"status": status, "ms": round(elapsed * 1000, 2), "path": path, "method": scope["method"]},
                )
            request_id_var.reset(token)


def _auth_error(conn: HTTPConnection, exc: Exception) -> Response:
    code = exc.code if isinstance(exc, InvalidCredentials) else "invalid_credentials"
    return json_response(
        error_body(code, str(exc)),
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="tollgate", error="invalid_token"'},
    )


class AnonymousGuard(GatewayAuthBackend):
    """The backend with anonymous callers refused (TOLLGATE_ALLOW_ANONYMOUS=false), except on the endpoint
    table's open paths (PUBLIC, and PROVIDER: a webhook's signature authenticates it)."""

    async def authenticate(self, conn: HTTPConnection) -> Any:
        result = await super().authenticate(conn)
        if result is not None and not result[1].is_authenticated and not is_public(conn.url.path):
            raise InvalidCredentials("credentials_required", "this gateway does not serve anonymous callers")
        return result


async def _tollgate_error(request: Request, exc: Exception) -> Response:
    """Every error Tollgate answers: its status, code, message and headers (api.errors.TollgateError)."""
    assert isinstance(exc, TollgateError)
    return error_response(exc)


async def _ledger_unreachable(request: Request, exc: Exception) -> Response:
    """A connection or pool failure that escaped a handler: the ledger is unavailable, not the gateway broken."""
    log.error("ledger unreachable on %s %s: %s", request.method, request.url.path, exc)
    message = "the billing ledger is temporarily unavailable; nothing was charged; retry shortly"
    return error_response(TollgateError(message, status=503, code="ledger_unavailable", headers={"Retry-After": "5"}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    request_id = request.scope.get("tollgate.request_id")
    log.error(
        "unhandled error on %s %s", request.method, request.url.path, exc_info=exc, extra={"request_id": request_id}
    )
    return json_response(
        error_body(
            "internal_error",
            "the gateway failed to answer; the request id identifies it in the logs",
            request_id=request_id,
        ),
        500,
    )


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return json_response(error_body(code, message.get(status, str(getattr(exc, "detail", "")))), status)


def create_app(
    settings: Settings, logins: Mapping[Authority, str], *, registry: ToolRegistry | None = None
) -> Starlette:
    """The gateway ASGI app, one pool per authority of ``logins`` (api.ops.logins.login_urls). ``registry``
    replaces the configured tools (tests, embedding)."""
    missing = [authority.url_variable for authority in Authority if authority not in logins]
    if missing:
        raise ValueError(f"create_app needs a URL for every authority; missing: {', '.join(missing)}")
    # Metering carries every call; payments and the operator see a request now and then: at most one
    # idle connection each.
    pools = {
        authority: db.make_async_pool(
            logins[authority],
            min_size=settings.pool_min if authority is Authority.METERING else min(settings.pool_min, 1),
            max_size=settings.pool_max,
            timeout=settings.gateway.pool_timeout_seconds,
            application_name=f"tollgate {authority.value}",
        )
        for authority in Authority
    }
    tools = registry if registry is not None else ToolRegistry()
    endpoints = served_endpoints(settings)
    gateway = Gateway(settings, pools, tools, build_openapi(VERSION, endpoints))
    host = settings.gateway.host
    loopback = host in ("127.0.0.1", "localhost", "::1")
    allowed_hosts = [f"{name}:*" for name in ("127.0.0.1", "localhost", "[::1]")] if loopback else None
    limits = ConnectionLimits(connections.effective(settings.abuse), on_refusal=gateway.metrics.count_refusal)
    gateway.metrics.watch_connections(limits)
    mcp = MCPTransports(
        gateway,
        max_body_bytes=settings.gateway.max_body_bytes,
        allowed_hosts=allowed_hosts,
        limits=limits,
        proxies=gateway.trusted_proxies,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await _check_logins(logins)
        async with contextlib.AsyncExitStack() as stack:
            for pool in pools.values():
                await pool.open(wait=True, timeout=30)
                stack.push_async_callback(pool.close)
            stack.push_async_callback(gateway.payments.aclose)
            await stack.enter_async_context(gateway.rate_limits.running(embedded_ledger=settings.embedded))
            await _write_abuse_policy(settings, gateway)
            if registry is None:
                await _load_tools(settings, gateway, stack)
            await stack.enter_async_context(mcp.sessions.run())
            if settings.abuse.metrics.port is not None:
                # Bound here, before the gateway is ready: a port in use fails the start-up, not later.
                await stack.enter_async_context(metrics_listener(gateway, host, settings.abuse.metrics.port))
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_spool_loop, gateway)
                if gateway.payments.providers:
                    tasks.start_soon(_expiry_loop, gateway)
                tasks.start_soon(_velocity_loop, gateway)
                log.info(
                    "gateway ready",
                    extra={
                        "tools": len(gateway.registry),
                        "metering": settings.gateway.metering,
                        "payment_providers": ",".join(sorted(gateway.payments.providers)) or "none",
                    },
                )
                try:
                    yield {"gateway": gateway}
                finally:
                    tasks.cancel_scope.cancel()

    jwt_key = load_jwt_key(settings.gateway, settings.data_dir)
    backend_type = GatewayAuthBackend if settings.gateway.allow_anonymous else AnonymousGuard
    backend = backend_type(
        settings.gateway,
        JWTVerifier(settings.gateway, jwt_key),
        gateway.pool,
        metrics_token=settings.abuse.metrics.token,
    )

    app = Starlette(
        routes=[
            *routes(gateway, endpoints),
            Route("/sse", mcp.sse, methods=["GET"]),
            Mount("/messages/", app=mcp.messages),
            # A Route, not a Mount: /mcp answers as is (a Mount would redirect it to /mcp/).
            Route("/mcp", mcp.streamable, methods=["GET", "POST", "DELETE"]),
        ],
        middleware=[
            Middleware(RequestContextMiddleware, gateway=gateway),
            Middleware(ClientRateLimitMiddleware, limits=gateway.rate_limits),
            Middleware(AuthenticationMiddleware, backend=backend, on_error=_auth_error),
            Middleware(PrincipalRateLimitMiddleware, limits=gateway.rate_limits),
        ],
        exception_handlers={
            TollgateError: _tollgate_error,
            psycopg.OperationalError: _ledger_unreachable,
            psycopg.InterfaceError: _ledger_unreachable,
            psycopg_pool.PoolTimeout: _ledger_unreachable,
            404: _not_found,
            405: _not_found,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app


async def _check_logins(logins: Mapping[Authority, str]) -> None:
    """Refuse to serve over a login that is more than its authority (api.ledger.roles.check_login), each on a
    connection of its own, before any pool opens: a login that cannot connect fails here with the
    server's reason rather than as a pool timeout."""
    for authority, url in logins.items():
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await roles.acheck_login(conn, authority)
        except psycopg.OperationalError as exc:
            log.error("cannot connect as the %s login: %s", authority.value, exc)
            raise
        except roles.UnsafeLogin as exc:
            log.error("%s", exc)
            raise
        log.info("%s connection logged in", authority.value, extra={"role": _login_name(url)})


def _login_name(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url).get("user") or "(default user)")


async def _load_tools(settings: Settings, gateway: Gateway, stack: contextlib.AsyncExitStack) -> None:
    from api.tools.config import build_registry, load_tool_config

    path = settings.gateway.tools_config
    if path is None:
        log.warning("no tool configuration (TOLLGATE_TOOLS_CONFIG or ./tollgate.toml): serving no tools")
        return
    config = load_tool_config(path)
    registry, closer = await build_registry(config)
    stack.push_async_callback(closer)
    for definition in registry.definitions():
        tool = registry.get(definition.name)
        assert tool is not None
        gateway.registry.add(tool)
    if config.pricing:
        # An initial price is an operator's act, applied through the operator's login.
        async with gateway.operator_pool.connection() as conn:
            priced = {row.tool_name: row for row in await aledger.list_tool_pricing(conn)}
            for name, price in config.pricing.items():
                stored = priced.get(name)
                if stored is not None:
                    # A price set by an operator is never overwritten by the file; only an anonymous policy
                    # that was never set (a ledger priced before there was one) is filled in from it.
                    if price.anonymous is not None and stored.anonymous_policy is None:
                        await _apply_anonymous_policy(conn, stored, price.anonymous)
                    continue
                await aledger.set_tool_pricing(
                    conn,
                    name,
                    price.base_price_usd,
                    markup_percent=price.markup_percent,
                    estimate_usd=price.estimate_usd,
                    variable_cost=price.variable_cost,
                    description=price.description,
                    max_price_usd=price.max_price_usd,
                    per_input_char_usd=price.per_input_char_usd,
                    anonymous=price.anonymous,
                )
                log.info("initial price applied", extra={"tool": name, "base_price_usd": str(price.base_price_usd)})


async def _apply_anonymous_policy(conn: Any, stored: aledger.ToolPricingRow, anonymous: str) -> None:
    """The file's anonymous policy on a tool priced without one: its stored price kept as it is."""
    await aledger.set_tool_pricing(
        conn,
        stored.tool_name,
        stored.base_price_usd,
        markup_percent=stored.markup_percent,
        estimate_usd=stored.estimate_usd,
        variable_cost=stored.variable_cost,
        description=stored.description,
        max_price_usd=stored.max_price_usd,
        per_input_char_usd=stored.per_input_char_usd,
        anonymous=anonymous,
    )
    log.info("initial anonymous policy applied", extra={"tool": stored.tool_name, "anonymous": anonymous})


async def _write_abuse_policy(settings: Settings, gateway: Gateway) -> None:
    """Write the figures of the ledger-enforced abuse rules ([abuse.payments], [abuse.velocity]) to
    billing.abuse_policy through the operator's login (actor 'config'), so the ledger enforces this
    configuration; with ``abuse.enabled = false`` every figure is 0 (the rules are off). Several gateways on
    one ledger each write theirs at start: give them the same configuration. Logs what changed."""
    policy = settings.abuse.ledger_policy()
    if not settings.abuse.enabled:
        policy = dict.fromkeys(policy, Decimal(0))
    changed: list[str] = []
    async with gateway.operator_pool.connection() as conn:
        for name, value in policy.items():
            stored = await aledger.set_abuse_policy(conn, name, value, "config")
            if stored.changed:
                changed.append(f"{name}={stored.value}")
    if changed:
        log.info(
            "abuse policy written: %s", ", ".join(changed),
            extra={"changed": len(changed), "enabled": settings.abuse.enabled},
        )
    else:
        log.info("abuse policy unchanged", extra={"figures": len(policy), "enabled": settings.abuse.enabled})


async def _expiry_loop(gateway: Gateway, interval: float = 300.0) -> None:
    """Expire payment intents an hour past their expiry (a success reported later is still credited);
    `tollgate payments reconcile` does the same after asking the providers."""
    while True:
        await anyio.sleep(interval)
        try:
            async with gateway.payments_pool.connection() as conn:
                expired = await aledger.expire_payment_intents(conn, dt.timedelta(hours=1))
            if expired:
                log.info("payment intents expired", extra={"expired": expired})
        except Exception:
            log.exception("expiring payment intents failed; will retry")


async def _velocity_loop(gateway: Gateway) -> None:
    """Run the velocity detector (billing.detect_velocity: spend spikes, fan-out) every
    ``[abuse.velocity] check_interval_seconds``, through the operator's login. Every gateway runs it; the ledger
    lets one run at a time and skips a run within half the interval of another, so several gateways cost what
    one does. Off when the abuse controls are off, or the interval or the window is 0."""
    rules = gateway.settings.abuse.velocity
    if not gateway.settings.abuse.enabled or rules.check_interval_seconds <= 0 or rules.window_minutes <= 0:
        return
    while True:
        await anyio.sleep(rules.check_interval_seconds)
        try:
            async with gateway.operator_pool.connection() as conn:
                run = await aledger.detect_velocity(conn)
            if run.flags_raised:
                log.warning(
                    "velocity flags raised",
                    extra={"flags_raised": run.flags_raised, "accounts_paused": run.accounts_paused},
                )
        except Exception:
            log.exception("the velocity detector failed; will retry")


async def _spool_loop(gateway: Gateway) -> None:
    interval = gateway.settings.gateway.spool_retry_seconds
    while True:
        await anyio.sleep(interval)
        if not gateway.spool.path.exists() or gateway.spool.path.stat().st_size == 0:
            continue
        try:
            await gateway.meter.replay_spool()
        except Exception:
            log.exception("spool replay failed; will retry")
