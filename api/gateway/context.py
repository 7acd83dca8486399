"""The `Gateway` context: everything a request handler needs, built once per app by ``api.gateway.app``.

Route modules (``api.gateway.http``) and the MCP transports (``api.gateway.mcp``) take a ``Gateway``;
they never import the composition root, which imports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.types import Scope

from api.abuse.clientip import IPAddress, TrustedProxies
from api.gateway.auth import Accounts, Identity
from api.gateway.config import Settings
from api.gateway.metering import CallOutcome, Meter, sign_in_advice
from api.gateway.metrics import Metrics
from api.gateway.ratelimits import RateLimits
from api.gateway.spool import Spool
from api.ledger.roles import Authority
from api.payments.service import Payments
from api.tools.registry import ToolRegistry

try:
    VERSION = package_version("tollgate")
except PackageNotFoundError:  # pragma: no cover - running from a tree without metadata
    VERSION = "0.0.0"


class Gateway:
    """Everything a request handler needs, built once per app.

    ``pool`` is the metering pool (the hot path); ``payments_pool`` and ``operator_pool`` serve money in
    and the admin operations, each logged in as its own role.
    """

    def __init__(
        self, settings: Settings, pools: Mapping[Authority, AsyncConnectionPool[Any]], registry: ToolRegistry,
        openapi: dict[str, Any],
    ) -> None:
        self.settings = settings
        self.version = VERSION
        self.pools = dict(pools)
        self.pool = pools[Authority.METERING]
        self.payments_pool = pools[Authority.PAYMENTS]
        self.operator_pool = pools[Authority.OPERATOR]
        self.registry = registry
        self.metrics = Metrics()
        for authority, pool in self.pools.items():
            self.metrics.watch_pool(authority.value, pool)
        self.accounts = Accounts(self.pool)
        self.trusted_proxies = TrustedProxies(settings.abuse.trusted_proxies)
        self.rate_limits = RateLimits(settings.abuse, self.trusted_proxies, self.accounts, self.metrics.registry)
        self.spool = Spool(settings.data_dir / "spool")
        self.meter = Meter(
            self.pool,
            registry,
            self.accounts,
            self.metrics,
            self.spool,
            metering=settings.gateway.metering,
            tool_timeout_seconds=settings.gateway.tool_timeout_seconds,
            sign_in=sign_in_advice(settings.abuse.anonymous.sign_in_url),
            review_contact=settings.abuse.velocity.review_contact,
        )
        self.payments = Payments.from_env(self.payments_pool, settings.payment_env)
        self.openapi = openapi

    def client_ip(self, scope: Scope) -> IPAddress | None:
        """The client's address of a request (the peer, or X-Forwarded-For past the trusted proxies)."""
        return self.trusted_proxies.client_ip(scope)

    async def call_tool(
        self,
        identity: Identity,
        name: str,
        arguments: dict[str, Any],
        *,
        transport: str,
        request_id: str | None = None,
        client_ip: IPAddress | None = None,
    ) -> CallOutcome:
        """One metered call; ``client_ip`` is the caller's address (``client_ip(scope)`` of the request that
        carried it), which an anonymous caller's daily quota counts by."""
        return await self.meter.call(
            identity, name, arguments, transport=transport, request_id=request_id, client_ip=client_ip
        )
