"""Connections to the ledger database, configured so that money never passes through float.

JSON and JSONB values (for example ``billing.summary``) are parsed with ``parse_float=Decimal``;
``numeric`` columns already arrive as ``Decimal``. Use ``connect`` for a single connection and
``make_pool`` for the gateway's pool; both apply the same configuration.
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import partial
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

_loads = partial(json.loads, parse_float=Decimal)


def configure(conn: psycopg.Connection[Any]) -> None:
    """Parse JSON numbers as Decimal, and run at READ COMMITTED whatever the server's default: the
    billing functions serialise on the account's row lock and read what committed before it was
    granted; at REPEATABLE READ racing calls would fail with serialization errors instead."""
    set_json_loads(_loads, conn)
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED


def connect(url: str, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
    """A configured connection. Autocommit by default: each billing function is its own transaction."""
    conn = psycopg.connect(url, autocommit=autocommit, **kwargs)
    configure(conn)
    return conn


def make_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, open: bool = True
) -> ConnectionPool[psycopg.Connection[Any]]:
    """A connection pool whose connections are configured like ``connect``'s (autocommit)."""

    def _configure(conn: psycopg.Connection[Any]) -> None:
        conn.autocommit = True
        configure(conn)

    return ConnectionPool(url, min_size=min_size, max_size=max_size, configure=_configure, open=open)


async def _configure_async(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)
    set_json_loads(_loads, conn)
    await conn.set_isolation_level(psycopg.IsolationLevel.READ_COMMITTED)


def make_async_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0, application_name: str | None = None
) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """The gateway's pool: async connections configured like ``connect``'s, opened by the app's lifespan.

    ``timeout``: how long a request waits for a connection before the ledger counts as unavailable.
    Connections are not checked when taken from the pool (a check is one more round trip on every
    request): one killed by a server restart or a network cut fails the request that takes it (503,
    nothing charged; the metering path resends begin_request on a new connection first) and is then
    discarded by the pool, which opens a new one.

    ``application_name`` names the pool's connections in pg_stat_activity, unless ``url`` names them itself.
    """
    named = application_name is not None and "application_name" not in psycopg.conninfo.conninfo_to_dict(url)
    return AsyncConnectionPool(
        url,
        kwargs={"application_name": application_name} if named else None,
        min_size=min_size,
        max_size=max_size,
        configure=_configure_async,
        timeout=timeout,
        open=False,
    )
