"""MCP over the legacy HTTP+SSE transport (``/sse`` + ``/messages/``) and streamable HTTP (``/mcp``).

Both use the official SDK's low-level ``Server``; ``tools/list`` lists the registry and
``tools/call`` runs the metered flow (``Gateway.call_tool``). The caller's identity is taken from
the HTTP request that carries each message; the SDK binds every session to the principal that
opened it (``api.gateway.auth.GatewayUser`` is an SDK ``AuthenticatedUser``) and answers "session not
found" to a request with other credentials, so the identity is fixed for the session.

Refusals (funds, limits, inactive account; for callers without credentials the tool's anonymous policy:
sign in, or its free calls of the day are used), unknown tools and invalid arguments are MCP tool results
with ``isError`` and a message that says what to do; every result carries the billing outcome in
``_meta["tollgate/billing"]`` (amounts as decimal strings; ``written_off_usd`` only when part of the
price was written off).

A ``tools/call`` over a rate limit (``api.gateway.ratelimits``) is such a tool error too, with the limit's name
and ``retry_after`` (seconds) in its structured content; nothing is tracked or held, and the session goes on.

Sessions and event streams are capped per principal and in total, and idle sessions end
(``api.abuse.connections``: ``StreamableGuard`` serves /mcp, ``SseGuard`` /sse). A principal is the
session's JWT user or API key, or for anonymous callers the client address (``api.abuse.clientip``).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.abuse.clientip import TrustedProxies
from api.abuse.connections import ConnectionLimits, SseGuard, StreamableGuard, StreamableSessionManager
from api.abuse.ratelimit import Refusal
from api.gateway.auth import ANONYMOUS, Identity, identity_of
from api.gateway.metering import AlreadyCompleted, CallRefused, LedgerUnavailable, UnknownTool, refusal_result
from api.tools.registry import InvalidArguments

if TYPE_CHECKING:
    from api.gateway.context import Gateway

BILLING_META = "tollgate/billing"


def _identity(ctx: Any) -> tuple[Identity, str, Request | None]:
    request = getattr(ctx, "request", None)
    if isinstance(request, Request):
        transport = "mcp-sse" if request.url.path.startswith("/messages") else "mcp-http"
        return identity_of(request), transport, request
    return ANONYMOUS, "mcp", None


def _error(text: str, code: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content={"error": {"code": code, "message": text}},
        is_error=True,
    )


def _rate_limited(refusal: Refusal) -> types.CallToolResult:
    """A tool call refused by a rate limit: a tool error naming the limit and the wait; the session goes on."""
    text = refusal.message()
    error = {"code": "rate_limited", "message": text, "limit": refusal.limit.name, "retry_after": refusal.retry_after}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content={"error": error}, is_error=True
    )


def build_server(gateway: Gateway) -> Server[Any]:
    async def on_list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=gateway.registry.definitions())

    async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        identity, transport, request = _identity(ctx)
        if request is not None:
            refusal = await gateway.rate_limits.tool_call(identity, request.scope)
            if refusal is not None:
                return _rate_limited(refusal)
        try:
            outcome = await gateway.call_tool(
                identity,
                params.name,
                dict(params.arguments or {}),
                transport=transport,
                client_ip=None if request is None else gateway.client_ip(request.scope),
            )
        except CallRefused as refused:
            return refusal_result(refused)
        except UnknownTool as exc:
            return _error(str(exc), "unknown_tool")
        except InvalidArguments as exc:
            return _error(str(exc), "invalid_arguments")
        except AlreadyCompleted as exc:
            return _error(str(exc), "already_completed")
        except LedgerUnavailable as exc:
            return _error(str(exc), "ledger_unavailable")
        result = outcome.result.model_copy()
        meta = dict(result.meta or {})
        billing = outcome.billing_json()
        meta[BILLING_META] = {k: (str(v) if isinstance(v, Decimal) else v) for k, v in billing.items()}
        result.meta = meta
        return result

    return Server("tollgate", version=gateway.version, on_list_tools=on_list_tools, on_call_tool=on_call_tool)


def principal_of(proxies: TrustedProxies) -> Callable[[Scope], str]:
    """The key MCP sessions and streams are counted under: the caller's label (``user:<sub>``, ``key:<name>``),
    or ``ip:<address>`` for an anonymous caller."""

    def key(scope: Scope) -> str:
        caller = getattr(scope.get("user"), "caller", None)
        if isinstance(caller, Identity) and caller.kind != "anonymous":
            return caller.label
        address = proxies.client_ip(scope)
        return f"ip:{address}" if address is not None else "ip:unknown"

    return key


class MCPTransports:
    """The SDK transports of one gateway, mounted by ``api.gateway.app``: ``streamable`` at /mcp, ``sse`` at
    /sse and ``messages`` at /messages/, each behind the session and stream caps of ``limits``."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        max_body_bytes: int,
        allowed_hosts: list[str] | None,
        limits: ConnectionLimits,
        proxies: TrustedProxies,
    ) -> None:
        self.server = build_server(gateway)
        # DNS-rebinding protection (Host/Origin checks) when the gateway listens on loopback only.
        security = (
            TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=allowed_hosts,
                allowed_origins=[f"http://{host}" for host in allowed_hosts],
            )
            if allowed_hosts
            else TransportSecuritySettings(enable_dns_rebinding_protection=False)
        )
        self.transport = SseServerTransport(
            "/messages/", security_settings=security, max_request_body_size=max_body_bytes
        )
        self.sessions = StreamableSessionManager(
            app=self.server,
            security_settings=security,
            max_request_body_size=max_body_bytes,
            # Our own caps (StreamableGuard) come first, with a clear answer; the SDK's is the same figure.
            max_sessions=limits.settings.mcp_sessions_total or None,
            session_idle_timeout=limits.idle_seconds,
        )
        key = principal_of(proxies)
        self.streamable: ASGIApp = StreamableGuard(self.sessions, limits, key)
        sse = SseGuard(self._serve_sse, limits, key)
        self.sse: ASGIApp = sse
        self.messages: ASGIApp = sse.messages(self.transport.handle_post_message)

    async def _serve_sse(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.transport.connect_sse(scope, receive, send) as (read, write):
            await self.server.run(read, write, self.server.create_initialization_options())
