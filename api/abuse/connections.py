"""Connection hygiene: what one socket, one slow client or one principal may hold of the gateway.

- **Header timeout and size** (``http_protocol``): uvicorn's HTTP protocol (httptools) has neither. Ours is a
  small subclass of it: a request's head must be complete within ``header_timeout_seconds`` of its first byte
  (for a new connection: of the connection, so a socket that sends nothing is closed too), and at most
  ``header_max_bytes`` long; otherwise the connection is closed (an oversized head is answered 431 first).
  Between keep-alive requests uvicorn's own ``timeout_keep_alive`` closes an idle connection.
- **Body timeout** (``BodyDeadline``): the ASGI ``receive`` of a request whose body has not all arrived
  ``body_timeout_seconds`` after its head answers 408 (``BodyTimeout``) and closes the connection; the
  protocol closes it ``BODY_GRACE_SECONDS`` later anyway if nothing was reading (a 404 whose body trickles on).
  A request whose body is complete (every GET, every stream; and, with our protocol, one whose body had
  all arrived when the application began: ``BODY_COMPLETE_KEY``) is never timed: no cancel scope per call.
- **Connections** (``server_options``): uvicorn's ``limit_concurrency``: past ``max_connections`` open
  connections a request is answered 503.
- **MCP sessions and SSE streams** (``ConnectionLimits``): open sessions in total (503) and per principal
  (429), idle sessions ended, open event streams per principal (429); over /mcp (``StreamableSessionManager``,
  ``StreamableGuard``) and the legacy /sse (``SseGuard``) alike. A refusal happens before the session exists,
  and a session that ends, however it ends, frees its slot.

A refusal here writes no audit row (a database write per refused socket would make the refusal cost more than
the attack); each is counted by ``on_refusal`` (the gateway's ``tollgate_connection_refusals`` metric).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import anyio
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.abuse.config import AbuseSettings, ConnectionSettings
from api.errors import TollgateError

# After the ASGI answer's 408 (which needs the application to be reading), the protocol closes the connection
# this much later on its own.
BODY_GRACE_SECONDS = 2.0
# Set in a request's ASGI scope by the protocol once its whole body has arrived: a body that is already here
# (the usual case: a small request in one read, before the application runs) needs no deadline.
BODY_COMPLETE_KEY = "tollgate.body_complete"
# How long a refused client is told to wait.
SESSION_RETRY_AFTER = 60
TOTAL_RETRY_AFTER = 30

RefusalHook = Callable[[str], None]


def effective(abuse: AbuseSettings) -> ConnectionSettings:
    """The connection settings in force: as configured, or relaxed when abuse.enabled is false."""
    return abuse.connections if abuse.enabled else abuse.connections.relaxed()


# --- the HTTP protocol: header timeout and size ----------------------------------------------------------------


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request head (and its size) and a backstop on the
    body. The class attributes are set by ``http_protocol``."""

    header_timeout: float = 0.0
    header_max_bytes: int = 0
    body_timeout: float = 0.0
    on_refusal: RefusalHook | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._in_head
            and self.header_max_bytes
            and self._head_bytes > self.header_max_bytes
            and not self.transport.is_closing()
        ):
            self._refused("header_too_large")
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: 31\r\nconnection: close\r\n\r\nthe request head is too large.\n"
            )
            self.transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:
            # A keep-alive request: the first byte of its head arrived just now.
            self._head_bytes = 0
            self._begin_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        upgrade = self.parser.should_upgrade() and self._should_upgrade()
        if self.body_timeout and not upgrade:
            self._body_timer = self.loop.call_later(self.body_timeout + BODY_GRACE_SECONDS, self._body_expired)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self.scope is not None:
            self.scope[BODY_COMPLETE_KEY] = True  # type: ignore[literal-required]
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._cancel_timers()
        super().handle_websocket_upgrade()

    # deadlines

    def _begin_head(self) -> None:
        self._in_head = True
        if self.header_timeout and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refused("header_timeout")
            self.transport.close()

    def _body_expired(self) -> None:
        self._body_timer = None
        if not self.transport.is_closing():
            self._refused("body_timeout")
            self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _refused(self, reason: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(reason)


def http_protocol(settings: ConnectionSettings, on_refusal: RefusalHook | None = None) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.run(http=...)`` that enforces ``settings``' header timeout and size and
    the body backstop; ``on_refusal(reason)`` is called for each connection it closes."""
    attributes = {
        "header_timeout": float(settings.header_timeout_seconds),
        "header_max_bytes": settings.header_max_bytes,
        "body_timeout": float(settings.body_timeout_seconds),
        "on_refusal": staticmethod(on_refusal) if on_refusal is not None else None,
    }
    return type("TollgateHttpProtocol", (_GuardedProtocol,), attributes)


def server_options(settings: ConnectionSettings, on_refusal: RefusalHook | None = None) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` that enforce ``settings``."""
    return {
        "http": http_protocol(settings, on_refusal),
        "limit_concurrency": settings.max_connections or None,
    }


# --- the body timeout --------------------------------------------------------------------------------------------


class BodyTimeout(TollgateError):
    status = 408
    code = "body_timeout"

    def __init__(self, seconds: int) -> None:
        super().__init__(
            f"the request body did not arrive within {seconds} seconds; send it at once (the connection is closed)",
            headers={"Connection": "close"},
        )


class BodyDeadline:
    """Times the body of one request: ``receive`` raises ``BodyTimeout`` once ``seconds`` have passed since
    the request began and its body is still incomplete. Once the body is complete, ``receive`` (which then
    waits for a disconnect: streams) is not timed."""

    __slots__ = ("_deadline", "_done", "_receive", "seconds")

    def __init__(self, receive: Receive, seconds: int) -> None:
        self._receive = receive
        self.seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._done = seconds == 0

    async def receive(self) -> Message:
        if self._done:
            return await self._receive()
        remaining = self._deadline - time.monotonic()
        try:
            with anyio.fail_after(max(remaining, 0.0)):
                message = await self._receive()
        except TimeoutError:
            raise BodyTimeout(self.seconds) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._done = True
        return message


# --- MCP sessions and SSE streams ------------------------------------------------------------------------------


class TooManySessions(TollgateError):
    status = 429
    code = "too_many_sessions"


class SessionsExhausted(TollgateError):
    status = 503
    code = "sessions_exhausted"


class TooManyStreams(TollgateError):
    status = 429
    code = "too_many_streams"


class Slot:
    """One held session or stream; ``release`` (idempotent) gives it back."""

    __slots__ = ("_pool", "principal", "released")

    def __init__(self, pool: Slots, principal: str) -> None:
        self._pool = pool
        self.principal = principal
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._pool._free(self.principal)


class Slots:
    """Held things of one kind (sessions, streams), counted per principal and in total. ``take`` checks and
    counts in one step with no await between, so concurrent requests cannot both pass a full cap."""

    def __init__(self, total: int, per_principal: int, refuse: Callable[[str, int], TollgateError]) -> None:
        self.total = total
        self.per_principal = per_principal
        self._refuse = refuse
        self._held: Counter[str] = Counter()
        self.count = 0

    def held_by(self, principal: str) -> int:
        return self._held.get(principal, 0)

    def take(self, principal: str) -> Slot:
        if self.total and self.count >= self.total:
            raise self._refuse("total", self.count)
        held = self._held.get(principal, 0)
        if self.per_principal and held >= self.per_principal:
            raise self._refuse("principal", held)
        self._held[principal] = held + 1
        self.count += 1
        return Slot(self, principal)

    def _free(self, principal: str) -> None:
        self.count -= 1
        left = self._held[principal] - 1
        if left > 0:
            self._held[principal] = left
        else:
            del self._held[principal]


class ConnectionLimits:
    """The session and stream caps of one gateway process (``settings`` as in force: ``effective``)."""

    def __init__(self, settings: ConnectionSettings, on_refusal: RefusalHook | None = None) -> None:
        self.settings = settings
        self._on_refusal = on_refusal
        self.sessions = Slots(settings.mcp_sessions_total, settings.mcp_sessions_per_principal, self._session_refusal)
        self.streams = Slots(0, settings.sse_streams_per_principal, self._stream_refusal)

    @property
    def idle_seconds(self) -> float | None:
        return float(self.settings.mcp_session_idle_seconds) or None

    def _count(self, reason: str) -> None:
        if self._on_refusal is not None:
            self._on_refusal(reason)

    def _session_refusal(self, scope: str, held: int) -> TollgateError:
        if scope == "total":
            self._count("sessions_total")
            return SessionsExhausted(
                f"the gateway has {held} MCP sessions open, as many as it serves; retry shortly",
                headers={"Retry-After": str(TOTAL_RETRY_AFTER)},
            )
        self._count("sessions_per_principal")
        idle = self.settings.mcp_session_idle_seconds
        expiry = f", or let an idle one expire ({idle} s without a request)" if idle else ""
        return TooManySessions(
            f"you have {held} MCP sessions open, the most allowed per client; end one (DELETE /mcp with its "
            f"Mcp-Session-Id, or close its /sse stream){expiry}, then retry",
            headers={"Retry-After": str(SESSION_RETRY_AFTER)},
            limit=held,
        )

    def _stream_refusal(self, scope: str, held: int) -> TollgateError:
        self._count("streams_per_principal")
        return TooManyStreams(
            f"you have {held} event streams open (GET /sse, GET /mcp), the most allowed per client; close one, "
            "then retry",
            headers={"Retry-After": str(SESSION_RETRY_AFTER)},
            limit=held,
        )


PrincipalOf = Callable[[Scope], str]

# The slot of the session a request without Mcp-Session-Id may open, from StreamableGuard to the manager's
# _admit_session (same task: the SDK admits in the request's own task, under its creation lock).
_OPENING: contextvars.ContextVar[Slot | None] = contextvars.ContextVar("tollgate_opening_session", default=None)


class StreamableSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, holding a slot of ``ConnectionLimits.sessions`` for each session's lifetime.

    It hooks the SDK's two places every session passes: ``_admit_session`` (a session is registered; it takes
    over the slot ``StreamableGuard`` reserved for the request) and ``_discard_session`` (however the session
    ended: DELETE, idle timeout, crash, a refused opening request, shutdown; the slot is freed). Pinned by
    tests/abuse/test_connections.py: the cap holds and frees over real sockets.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots: dict[str, Slot] = {}

    def _admit_session(self, requestor: Any) -> StreamableHTTPServerTransport | None:
        transport = super()._admit_session(requestor)
        slot = _OPENING.get()
        if transport is not None and slot is not None and transport.mcp_session_id is not None:
            self._slots[transport.mcp_session_id] = slot
            _OPENING.set(None)
        return transport

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        slot = self._slots.pop(session_id, None)
        if slot is not None:
            slot.release()
        await super()._discard_session(session_id, transport)

    @property
    def open_sessions(self) -> int:
        return len(self._slots)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class StreamableGuard:
    """The /mcp ASGI app: a request without a session id may open a session and must hold a session slot
    first; a GET with one opens the session's event stream and must hold a stream slot while it is open."""

    def __init__(
        self, manager: StreamableSessionManager, limits: ConnectionLimits, principal_of: PrincipalOf
    ) -> None:
        self.manager = manager
        self.limits = limits
        self.principal_of = principal_of
        self._session_header = MCP_SESSION_ID_HEADER.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        has_session = _header(scope, self._session_header) is not None
        if not has_session:
            slot = self.limits.sessions.take(self.principal_of(scope))
            token = _OPENING.set(slot)
            try:
                await self.manager.handle_request(scope, receive, send)
            finally:
                # Not admitted (refused, failed, or not an opening request at all): the slot was never the
                # session's. Admitted: the manager holds it until the session ends.
                if _OPENING.get() is slot:
                    slot.release()
                _OPENING.reset(token)
        elif scope["method"] == "GET":
            stream = self.limits.streams.take(self.principal_of(scope))
            try:
                await self.manager.handle_request(scope, receive, send)
            finally:
                stream.release()
        else:
            await self.manager.handle_request(scope, receive, send)


_SSE_SESSION = re.compile(rb"session_id=([0-9a-f]{32})")


@dataclasses.dataclass
class _SseSession:
    last_active: float = dataclasses.field(default_factory=time.monotonic)
    session_id: str | None = None
    started: bool = False
    complete: bool = False

    def touch(self) -> None:
        self.last_active = time.monotonic()


class SseGuard:
    """The legacy /sse transport: each GET /sse is a session and a stream, holding one slot of each while it is
    open; a session with no message posted (``messages``) or sent for the idle time is ended (its stream
    closed cleanly)."""

    def __init__(self, app: ASGIApp, limits: ConnectionLimits, principal_of: PrincipalOf) -> None:
        self.app = app
        self.limits = limits
        self.principal_of = principal_of
        self._open: dict[str, _SseSession] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = self.principal_of(scope)
        session_slot = self.limits.sessions.take(principal)
        try:
            stream_slot = self.limits.streams.take(principal)
        except BaseException:
            session_slot.release()
            raise
        state = _SseSession()

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.started = True
            elif message["type"] == "http.response.body":
                body: bytes = message.get("body", b"")
                if state.session_id is None:
                    found = _SSE_SESSION.search(body)
                    if found is not None:
                        state.session_id = found.group(1).decode("ascii")
                        self._open[state.session_id] = state
                elif body and not body.startswith(b":"):  # ": ping" comments are not activity
                    state.touch()
                if not message.get("more_body", False):
                    state.complete = True
            await send(message)

        try:
            idle = self.limits.idle_seconds
            if idle is None:
                await self.app(scope, receive, watched_send)
                return
            with anyio.CancelScope() as session_scope:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(_expire_when_idle, state, idle, session_scope)
                    await self.app(scope, receive, watched_send)
                    tasks.cancel_scope.cancel()
            if session_scope.cancelled_caught and state.started and not state.complete:
                # End the event stream properly: the client sees it close, the connection stays usable.
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if state.session_id is not None:
                self._open.pop(state.session_id, None)
            stream_slot.release()
            session_slot.release()

    def messages(self, app: ASGIApp) -> ASGIApp:
        """``app`` (the SDK's message endpoint) marking the session it posts to as active."""

        async def post_message(scope: Scope, receive: Receive, send: Send) -> None:
            values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_id")
            state = self._open.get(values[0]) if values else None
            if state is not None:
                state.touch()
            await app(scope, receive, send)

        return post_message


async def _expire_when_idle(state: _SseSession, idle: float, session_scope: anyio.CancelScope) -> None:
    while True:
        left = state.last_active + idle - time.monotonic()
        if left <= 0:
            session_scope.cancel()
            return
        await anyio.sleep(left)

