"""Connections to the ledger database, configured so that money never passes through float.

JSON and JSONB values (for example ``billing.summary``) are parsed with ``parse_float=Decimal``, and
``Json`` / ``Jsonb`` arguments rendered with ``api.jsonio.dumps`` (a Decimal as its exact digits, a float
refused), so no wrapper passes ``dumps=``; ``numeric`` columns already arrive as ``Decimal``. Use ``connect``
/ ``aconnect`` for a single connection, ``make_pool`` / ``make_async_pool`` for pools; all apply the same
configuration (``configure`` / ``aconfigure``).
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import partial
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from api.jsonio import dumps

_loads = partial(json.loads, parse_float=Decimal)


def _set_json(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """JSON both ways on this connection only: numbers parsed as Decimal, values rendered by ``api.jsonio``."""
    set_json_loads(_loads, conn)
    set_json_dumps(dumps, conn)


def configure(conn: psycopg.Connection[Any]) -> None:
    """JSON with Decimal numbers both ways (``_set_json``), and READ COMMITTED whatever the server's default:
    the billing functions serialise on the account's row lock and read what committed before it was
    granted; at REPEATABLE READ racing calls would fail with serialization errors instead."""
    _set_json(conn)
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


async def aconfigure(conn: psycopg.AsyncConnection[Any]) -> None:
    """``configure`` for an async connection."""
    _set_json(conn)
    await conn.set_isolation_level(psycopg.IsolationLevel.READ_COMMITTED)


async def aconnect(url: str, *, autocommit: bool = True, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """``connect`` for async code: a configured async connection, autocommit by default."""
    conn = await psycopg.AsyncConnection.connect(url, autocommit=autocommit, **kwargs)
    await aconfigure(conn)
    return conn


async def _configure_async(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)
    await aconfigure(conn)


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
