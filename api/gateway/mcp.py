"""MCP over the legacy HTTP+SSE transport (``/sse`` + ``/messages/``) and streamable HTTP (``/mcp``).

Both use the official SDK's low-level ``Server``; ``tools/list`` lists the registry and
``tools/call`` runs the metered flow (``Gateway.call_tool``). The caller's identity is taken from
the HTTP request that carries each message; the SDK binds every session to the principal that
opened it (``api.gateway.auth.GatewayUser`` is an SDK ``AuthenticatedUser``) and answers "session not
found" to a request with other credentials, so the identity is fixed for the session.

Refusals (funds, limits, inactive account), unknown tools and invalid arguments are MCP tool results
with ``isError`` and a message that says what to do; every result carries the billing outcome in
``_meta["tollgate/billing"]`` (amounts as decimal strings; ``written_off_usd`` only when part of the
price was written off).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import Response

from api.abuse.clientip import IPAddress, TrustedProxies
from api.gateway.auth import ANONYMOUS, Identity, identity_of
from api.gateway.metering import AlreadyCompleted, CallRefused, LedgerUnavailable, UnknownTool, refusal_result
from api.tools.registry import InvalidArguments

if TYPE_CHECKING:
    from api.gateway.context import Gateway

BILLING_META = "tollgate/billing"


def _identity(ctx: Any) -> tuple[Identity, str]:
    request = getattr(ctx, "request", None)
    if isinstance(request, Request):
        transport = "mcp-sse" if request.url.path.startswith("/messages") else "mcp-http"
        return identity_of(request), transport
    return ANONYMOUS, "mcp"


def _client_ip(gateway: Gateway, ctx: Any) -> IPAddress | None:
    """The address of the HTTP request carrying the message (behind trusted proxies: the forwarded client)."""
    request = getattr(ctx, "request", None)
    if isinstance(request, Request):
        return TrustedProxies(gateway.settings.abuse.trusted_proxies).client_ip(request.scope)
    return None


def _error(text: str, code: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content={"error": {"code": code, "message": text}},
        is_error=True,
    )


def build_server(gateway: Gateway) -> Server[Any]:
    async def on_list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=gateway.registry.definitions())

    async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        identity, transport = _identity(ctx)
        try:
            outcome = await gateway.call_tool(
                identity,
                params.name,
                dict(params.arguments or {}),
                transport=transport,
                client_ip=_client_ip(gateway, ctx),
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


class MCPTransports:
    """The SDK transports of one gateway, mounted by ``api.gateway.app``."""

    def __init__(self, gateway: Gateway, *, max_body_bytes: int, allowed_hosts: list[str] | None) -> None:
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
        self.sse = SseServerTransport("/messages/", security_settings=security, max_request_body_size=max_body_bytes)
        self.sessions = StreamableHTTPSessionManager(
            app=self.server, security_settings=security, max_request_body_size=max_body_bytes, max_sessions=None
        )

    async def handle_sse(self, request: Request) -> Response:
        async with self.sse.connect_sse(request.scope, request.receive, request._send) as (read, write):
            await self.server.run(read, write, self.server.create_initialization_options())
        return Response()
