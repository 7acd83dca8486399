"""The metrics listener: ``GET /metrics`` on a port of its own (``[abuse.metrics] port``), on the gateway's
host, served by a second uvicorn server in the gateway's event loop; the main port then does not serve
/metrics at all (``api.gateway.http.endpoints.served_endpoints``).

The port is for a scraper on a network the operator controls: it answers without credentials unless
``[abuse.metrics] token`` is set, which it then requires (``Authorization: Bearer <token>``). It has the same
header timeout and size cap as the main port, and answers nothing but ``GET /metrics``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.abuse import connections
from api.gateway.auth import is_metrics_token
from api.gateway.http.envelope import ApiError, error_response
from api.gateway.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from api.gateway.context import Gateway


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the signals to the main one (which stops the gateway and, through its
    lifespan, this)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def metrics_app(gateway: Gateway) -> Starlette:
    """The metrics port's app: ``GET /metrics``, behind the token when one is set."""
    token = gateway.settings.abuse.metrics.token

    async def scrape(request: Request) -> Response:
        if token is not None:
            scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not is_metrics_token(credentials.strip(), token):
                refusal = ApiError(401, "metrics_token_required", "/metrics needs the metrics token")
                return error_response(refusal.with_auth_header())
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", scrape, methods=["GET"])])


@contextlib.asynccontextmanager
async def metrics_listener(gateway: Gateway, host: str, port: int) -> AsyncIterator[None]:
    """Serve ``metrics_app`` on ``host:port`` while the context is open. The socket is bound on entry, so a
    port already in use fails the gateway's start-up with the reason."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=128)
    settings = connections.effective(gateway.settings.abuse)
    config = uvicorn.Config(
        metrics_app(gateway),
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
        **connections.server_options(settings, gateway.metrics.count_refusal),
    )
    server = _QuietServer(config)
    stopped = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            stopped.set()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(serve)
            try:
                yield
            finally:
                server.should_exit = True
                with anyio.move_on_after(5):
                    await stopped.wait()
                tasks.cancel_scope.cancel()
    finally:
        sock.close()
