"""Operations: liveness with a database check and the OpenAPI document (public), Prometheus metrics (for
administrators and the metrics scraper: ``Access.METRICS``; or on a port of their own, ``api.gateway.metrics_port``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from api.gateway.auth import Identity
from api.gateway.http.envelope import json_response
from api.gateway.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from api.gateway.context import Gateway


async def health(gateway: Gateway, request: Request, caller: Identity) -> Response:
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


async def metrics(gateway: Gateway, request: Request, caller: Identity) -> Response:
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)


async def openapi(gateway: Gateway, request: Request, caller: Identity) -> Response:
    return json_response(gateway.openapi)
