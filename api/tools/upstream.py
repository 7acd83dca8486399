"""Upstream MCP servers whose tools the gateway resells, reached through the official SDK client.

An ``UpstreamServer`` is one configured server: a command run over stdio, or a streamable HTTP URL.
``start()`` connects, initializes and lists its tools (every page); one client session then stays
open for the gateway's lifetime and carries every call (the SDK multiplexes concurrent requests
on it). ``tools()`` gives an ``UpstreamTool`` (the ``api.tools.registry.Tool`` protocol) per upstream tool,
named ``prefix + upstream name``.

Why a task per connection: the SDK's client context managers open anyio task groups, which must
be exited by the task that entered them. Each connection is therefore owned by one background
task that enters the client, waits until told to stop (or until the transport ends), and exits
it; calls are made from any task. So ``start()`` and ``close()`` may run in different tasks (a
Starlette lifespan, a test, an ``AsyncExitStack`` callback), which anyio scoping would otherwise
forbid. Background tasks are asyncio tasks: the gateway runs on asyncio (uvicorn).

Failures: arguments are checked against the upstream's input schema before anything is sent
(``InvalidArguments``); an upstream ``isError`` result is returned as is (the call failed, the
tool said why); a timeout, a refused request or a lost connection raises ``ToolError`` naming
the upstream. A connection found dead (the stdio server exited, the HTTP transport failed, the
HTTP session expired) is re-opened once by the next call, which fails if that does not work.
A request that provably never reached the upstream (connection refused, session unknown) is
sent again on the new connection; one that may have run is never repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx2
import jsonschema
import mcp_types as types
from mcp import Client
from mcp.client._transport import TransportStreams
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from api.tools.registry import TOOL_NAME, ToolContext, ToolError, validate_arguments

log = logging.getLogger(__name__)

UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 30.0
# The SDK's stdio shutdown is bounded (about 6 s: stdin close, SIGTERM, SIGKILL); this bounds ours.
CLOSE_TIMEOUT_SECONDS = 15.0
# After a failed reconnect, calls fail fast with its error for this long instead of each retrying.
RECONNECT_BACKOFF_SECONDS = 1.0
MAX_LIST_PAGES = 1000
CLIENT_INFO = types.Implementation(name="tollgate", version="0.1.0")
# HTTP timeouts of the SDK's own default client: a response stream may stay open for minutes.
_HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)


class UpstreamError(RuntimeError):
    """An upstream server could not be started (connected, initialized, listed)."""


@dataclass(frozen=True)
class UpstreamConfig:
    """How to reach one upstream MCP server: ``command`` (stdio) or ``url`` (streamable HTTP)."""

    name: str
    command: tuple[str, ...] | None = None
    url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    prefix: str = ""
    tools: tuple[str, ...] | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        if not UPSTREAM_NAME.match(self.name):
            raise ValueError(f"upstream name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        if (self.command is None) == (self.url is None):
            raise ValueError(f"upstream {self.name!r} needs exactly one of command (stdio) and url (HTTP)")
        if self.command is not None and (not self.command or not all(self.command)):
            raise ValueError(f"upstream {self.name!r}: command must be a non-empty list of non-empty strings")
        if self.url is not None and not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(f"upstream {self.name!r}: url must be an http:// or https:// URL")
        if self.url is not None and (self.env or self.cwd is not None):
            raise ValueError(f"upstream {self.name!r}: env and cwd apply to a command, not to a url")
        if self.command is not None and self.headers:
            raise ValueError(f"upstream {self.name!r}: headers apply to a url, not to a command")
        if self.prefix and not re.match(r"^[A-Za-z0-9_.\-]{1,64}$", self.prefix):
            raise ValueError(f"upstream {self.name!r}: prefix must be up to 64 letters, digits, '_', '.' or '-'")
        timeouts = {"timeout_seconds": self.timeout_seconds, "connect_timeout_seconds": self.connect_timeout_seconds}
        for label, seconds in timeouts.items():
            if not math.isfinite(seconds) or seconds <= 0:
                raise ValueError(f"upstream {self.name!r}: {label} must be a positive number of seconds")

    @property
    def target(self) -> str:
        """Where the upstream is, for messages (never the headers: they may carry credentials)."""
        if self.command is not None:
            return "stdio: " + " ".join(self.command)
        assert self.url is not None
        return self.url.split("?", 1)[0]


class UpstreamTool:
    """One tool of an upstream server, as the gateway exposes it (``api.tools.registry.Tool``)."""

    def __init__(self, upstream: UpstreamServer, definition: types.Tool, prefix: str = "") -> None:
        name = prefix + definition.name
        if not TOOL_NAME.match(name):
            raise UpstreamError(
                f"upstream {upstream.name!r}: tool name {name!r} must be 1-128 characters of letters, digits, "
                "'_', '.', '-'"
            )
        schema = dict(definition.input_schema)
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.exceptions.SchemaError as exc:
            raise UpstreamError(
                f"upstream {upstream.name!r}: tool {definition.name!r} has an invalid input schema: {exc.message}"
            ) from None
        self._upstream = upstream
        self._upstream_name = definition.name
        self._definition = definition.model_copy(update={"name": name}, deep=True)
        self._validator = jsonschema.Draft202012Validator(schema)

    @property
    def name(self) -> str:
        return self._definition.name

    @property
    def definition(self) -> types.Tool:
        return self._definition

    @property
    def upstream(self) -> UpstreamServer:
        return self._upstream

    @property
    def upstream_tool_name(self) -> str:
        """The tool's name on the upstream server (without the prefix)."""
        return self._upstream_name

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> types.CallToolResult:
        validate_arguments(self._validator, arguments)
        return await self._upstream.call_tool(self._upstream_name, arguments)


class UpstreamServer:
    """One upstream MCP server and its long-lived client session. Also an async context manager."""

    def __init__(self, config: UpstreamConfig) -> None:
        self._config = config
        self._connection: _Connection | None = None
        self._tools: list[UpstreamTool] = []
        self._lock = anyio.Lock()
        self._started = False
        self._closed = False
        self._last_failure: tuple[float, str] | None = None

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def config(self) -> UpstreamConfig:
        return self._config

    @property
    def connected(self) -> bool:
        """Whether the current session is believed alive (False once its transport has ended)."""
        return self._connection is not None and not self._connection.lost

    async def start(self) -> None:
        """Connect, initialize, list the tools (every page). Raises ``UpstreamError``."""
        if self._started or self._closed:
            raise RuntimeError(f"upstream {self.name!r} was already started")
        async with self._lock:
            connection, listed = await self._connect()
            self._connection = connection
        try:
            self._tools = self._expose(listed)
        except BaseException:
            await self.close()
            raise
        self._started = True
        log.info("upstream connected", extra={"upstream": self.name, "tools": [t.name for t in self._tools]})

    def tools(self) -> list[UpstreamTool]:
        return list(self._tools)

    async def call_tool(self, tool_name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """Call ``tool_name`` (its upstream name) and return the upstream's result as is.

        Raises ``ToolError`` (naming this upstream) on a timeout, a refusal or a lost connection.
        """
        timeout = self._config.timeout_seconds
        for attempt in (1, 2):
            connection = await self._live_connection()
            try:
                with anyio.fail_after(timeout):
                    return await connection.client.call_tool(tool_name, arguments, read_timeout_seconds=timeout)
            except TimeoutError:
                raise ToolError(f"upstream {self.name!r}: {tool_name} did not answer within {timeout:g} s") from None
            except MCPError as exc:
                if exc.code == types.REQUEST_TIMEOUT:
                    raise ToolError(
                        f"upstream {self.name!r}: {tool_name} did not answer within {timeout:g} s"
                    ) from None
                if exc.code == types.CONNECTION_CLOSED:
                    undelivered = await connection.failed_before_delivery()
                    connection.mark_lost()
                    if undelivered and attempt == 1:
                        log.warning(
                            "upstream connection refused; reconnecting to send the call again",
                            extra={"upstream": self.name, "tool": tool_name},
                        )
                        continue
                    cause = connection.failure_text()
                    raise ToolError(
                        f"upstream {self.name!r}: the connection closed during the call to {tool_name}"
                        + (f": {cause}" if cause else "")
                    ) from None
                if exc.code == types.INVALID_REQUEST and "session" in exc.message.lower():
                    # The HTTP server no longer knows our session (it restarted): it refused the
                    # request without running it, so a new session may send it again.
                    connection.mark_lost()
                    if attempt == 1:
                        log.warning(
                            "upstream session expired; reconnecting",
                            extra={"upstream": self.name, "tool": tool_name, "error": exc.message},
                        )
                        continue
                raise ToolError(f"upstream {self.name!r} refused the call to {tool_name}: {exc.message}") from None
            except Exception as exc:
                log.warning(
                    "upstream call failed", exc_info=True, extra={"upstream": self.name, "tool": tool_name}
                )
                raise ToolError(f"upstream {self.name!r}: the call to {tool_name} failed: {_describe(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Close the session (and stop the stdio server). Idempotent; safe from any task."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            async with self._lock:
                connection, self._connection = self._connection, None
                if connection is not None:
                    await connection.close()

    async def __aenter__(self) -> UpstreamServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _expose(self, listed: list[types.Tool]) -> list[UpstreamTool]:
        wanted = self._config.tools
        if wanted is not None:
            missing = sorted(set(wanted) - {tool.name for tool in listed})
            if missing:
                raise UpstreamError(
                    f"upstream {self.name!r} ({self._config.target}) has no tool {', '.join(map(repr, missing))}; "
                    f"it lists {', '.join(repr(tool.name) for tool in listed) or 'none'}"
                )
            listed = [tool for tool in listed if tool.name in wanted]
        return [UpstreamTool(self, definition, self._config.prefix) for definition in listed]

    async def _connect(self) -> tuple[_Connection, list[types.Tool]]:
        """Open a session and list its tools; raises ``UpstreamError``."""
        try:
            with anyio.fail_after(self._config.connect_timeout_seconds):
                connection = await _Connection.open(self._config)
        except TimeoutError:
            raise UpstreamError(
                f"upstream {self.name!r} ({self._config.target}) did not initialize within "
                f"{self._config.connect_timeout_seconds:g} s"
            ) from None
        except Exception as exc:
            raise UpstreamError(
                f"upstream {self.name!r} ({self._config.target}) could not connect: {_describe(exc)}"
            ) from exc
        try:
            with anyio.fail_after(self._config.connect_timeout_seconds):
                listed = await _list_all_tools(connection.client)
        except BaseException as exc:
            await connection.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamError(f"upstream {self.name!r} did not list its tools in time") from None
            if isinstance(exc, Exception):
                raise UpstreamError(f"upstream {self.name!r}: listing tools failed: {_describe(exc)}") from exc
            raise
        return connection, listed

    async def _live_connection(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.lost:
            return connection
        async with self._lock:
            connection = self._connection
            if connection is not None and not connection.lost:
                return connection  # another call reconnected while this one waited
            if self._closed or not self._started:
                raise ToolError(f"upstream {self.name!r} is not running")
            if self._last_failure is not None and time.monotonic() - self._last_failure[0] < RECONNECT_BACKOFF_SECONDS:
                raise ToolError(self._last_failure[1])
            log.warning(
                "upstream session lost; reconnecting",
                extra={"upstream": self.name, "cause": connection.failure_text() if connection else None},
            )
            self._connection = None
            if connection is not None:
                await connection.close()
            try:
                connection, listed = await self._connect()
            except UpstreamError as exc:
                message = f"upstream {self.name!r} is unavailable (reconnecting failed): {exc}"
                self._last_failure = (time.monotonic(), message)
                log.error("upstream reconnect failed", extra={"upstream": self.name, "error": str(exc)})
                raise ToolError(message) from exc
            self._last_failure = None
            self._connection = connection
            before = {tool.upstream_tool_name for tool in self._tools}
            after = {tool.name for tool in listed}
            if not before <= after:
                log.warning(
                    "upstream reconnected without some of its tools; calls to them will fail",
                    extra={"upstream": self.name, "missing": sorted(before - after)},
                )
            log.info("upstream reconnected", extra={"upstream": self.name})
            return connection


async def start_upstreams(configs: Sequence[UpstreamConfig]) -> list[UpstreamServer]:
    """Start every upstream concurrently; if any fails, close those that started and raise
    ``UpstreamError`` naming every failure."""
    servers = [UpstreamServer(config) for config in configs]
    failures: list[str] = []

    async def start(server: UpstreamServer) -> None:
        try:
            await server.start()
        except UpstreamError as exc:
            failures.append(str(exc))

    async with anyio.create_task_group() as tasks:
        for server in servers:
            tasks.start_soon(start, server)
    if failures:
        await close_upstreams(servers)
        raise UpstreamError("; ".join(sorted(failures)))
    return servers


async def close_upstreams(servers: Sequence[UpstreamServer]) -> None:
    """Close every upstream concurrently (each close is bounded and never raises)."""
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tasks:
            for server in servers:
                tasks.start_soon(server.close)


@contextlib.asynccontextmanager
async def running_upstreams(configs: Sequence[UpstreamConfig]) -> AsyncIterator[list[UpstreamServer]]:
    """``async with running_upstreams(configs) as servers:``: started on entry, closed on exit."""
    servers = await start_upstreams(configs)
    try:
        yield servers
    finally:
        await close_upstreams(servers)


async def _list_all_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            names = [tool.name for tool in tools]
            duplicated = sorted({name for name in names if names.count(name) > 1})
            if duplicated:
                raise UpstreamError(f"the server lists tools more than once: {duplicated}")
            return tools
        if cursor in seen:
            raise UpstreamError(f"the server's tool listing repeats the cursor {cursor!r}")
        seen.add(cursor)
    raise UpstreamError(f"the server's tool listing has more than {MAX_LIST_PAGES} pages")


class _Connection:
    """One open client session and the background task that owns its context managers."""

    def __init__(self, config: UpstreamConfig) -> None:
        self._config = config
        self._stop = anyio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: Client | None = None
        self._failure: BaseException | None = None
        self.lost = False

    @classmethod
    async def open(cls, config: UpstreamConfig) -> _Connection:
        connection = cls(config)
        ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        connection._task = asyncio.create_task(connection._own(ready), name=f"tollgate-upstream-{config.name}")
        try:
            connection._client = await ready
        except BaseException:
            await connection.close()
            raise
        return connection

    @property
    def client(self) -> Client:
        assert self._client is not None
        return self._client

    def mark_lost(self) -> None:
        self.lost = True
        self._stop.set()

    def failure_text(self) -> str | None:
        return None if self._failure is None else _describe(self._failure)

    async def failed_before_delivery(self) -> bool:
        """After CONNECTION_CLOSED: did the transport fail only by being unable to connect at all?

        Then no request of this connection in flight can have reached the upstream.
        """
        if self._task is not None:
            await asyncio.wait([self._task], timeout=1.0)
        leaves = list(_leaf_exceptions(self._failure)) if self._failure is not None else []
        return bool(leaves) and all(isinstance(leaf, httpx2.ConnectError) for leaf in leaves)

    async def close(self) -> None:
        self._stop.set()
        task = self._task
        if task is None:
            return
        with anyio.CancelScope(shield=True):
            done, _ = await asyncio.wait([task], timeout=CLOSE_TIMEOUT_SECONDS)
            if not done:
                log.error("upstream did not close in time; cancelling it", extra={"upstream": self._config.name})
                task.cancel()
                await asyncio.wait([task], timeout=CLOSE_TIMEOUT_SECONDS)

    async def _own(self, ready: asyncio.Future[Client]) -> None:
        """The owning task: enter the client, wait for the stop signal, exit the client."""
        try:
            async with Client(self._transport(), cache=None, client_info=CLIENT_INFO) as client:
                if not ready.done():
                    ready.set_result(client)
                await self._stop.wait()
        except Exception as exc:
            self._failure = exc
            if not ready.done():
                ready.set_exception(exc)
            elif not self._stop.is_set():
                log.warning(
                    "upstream connection failed", extra={"upstream": self._config.name, "error": _describe(exc)}
                )
        finally:
            self.lost = True
            if not ready.done():
                ready.cancel()

    def _on_transport_end(self) -> None:
        if not self._stop.is_set():
            log.warning("upstream closed the connection", extra={"upstream": self._config.name})
        self.mark_lost()

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[TransportStreams]:
        config = self._config
        async with contextlib.AsyncExitStack() as stack:
            if config.command is not None:
                parameters = StdioServerParameters(
                    command=config.command[0],
                    args=list(config.command[1:]),
                    env=dict(config.env) or None,
                    cwd=config.cwd,
                )
                read_stream, write_stream = await stack.enter_async_context(stdio_client(parameters, errlog=sys.stderr))
            else:
                assert config.url is not None
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(headers=dict(config.headers), timeout=_HTTP_TIMEOUT)
                )
                read_stream, write_stream = await stack.enter_async_context(
                    streamable_http_client(config.url, http_client=http)
                )
            yield _EndWatchingStream(read_stream, self._on_transport_end), write_stream


class _EndWatchingStream:
    """The transport's read stream, reporting its end: how a dead stdio server is noticed early."""

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> Any:
        # The dispatcher restores the sender's contextvars from this, when the stream has it.
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        try:
            item: SessionMessage | Exception = await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise
        return item

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> _EndWatchingStream:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _EndWatchingStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        await self.aclose()
        return None


def _leaf_exceptions(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaf_exceptions(inner)]
    return [exc]


def _describe(exc: BaseException) -> str:
    """One line for an exception, looking inside exception groups (where the SDK's failures come)."""
    parts = []
    for leaf in _leaf_exceptions(exc):
        text = str(leaf) or type(leaf).__name__
        parts.append(text if isinstance(leaf, MCPError | UpstreamError) else f"{type(leaf).__name__}: {text}")
    return "; ".join(dict.fromkeys(parts))

