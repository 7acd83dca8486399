"""A fault-injecting TCP proxy in front of the test PostgreSQL server, framing the wire protocol.

`FaultProxy(upstream_url)` listens on 127.0.0.1 (an ephemeral port) and forwards each connection to
the server of `upstream_url` — a unix-socket directory (the embedded default) or a TCP host. It
runs its own asyncio loop in a daemon thread; tests arm faults from any thread.

It reads the protocol enough to act on message boundaries. After the startup packet (SSL and
GSS encryption requests are answered "no" by the server when `proxy_url` sets sslmode/gssencmode
=disable; an accepted one turns the connection into opaque bytes, never faulted), every message is
1 type byte + an int32 length. Client messages are grouped into *batches*: Parse/Bind/Describe/
Execute/Close are held until the message that ends them (a Sync 'S', a Flush 'H'; a simple Query 'Q'
or any other message is a batch of its own) — what libpq writes in one go for one call. A batch
*commits* when it ends a transaction on the server:

* a simple Query whose text is COMMIT / END, or any simple Query sent outside a transaction block
  (an autocommit statement);
* an extended-protocol batch (Parse/Bind/Execute/Sync, as psycopg sends every `execute`, prepared
  or not) that executes a statement while the session is idle (autocommit: the implicit
  transaction commits at the Sync), or that executes COMMIT / END inside a block.

The session's transaction state is the status byte of the server's last ReadyForQuery ('Z').
Prepared statements are followed (Parse name -> text), so a fault can target batches by the SQL
they run (`match="complete_request"`) even once psycopg has prepared them.

Faults (`Fault.kind`), each armed for the next batch that qualifies:

    delay         hold the batch `delay` seconds, then forward it
    reset         close both sides abruptly (RST) instead of forwarding the batch
    drop_before   a committing batch is never forwarded; both sides are cut (the commit did not land)
    drop_after    a committing batch is forwarded; the server's answers are swallowed up to its
                  ReadyForQuery (so the commit landed, or failed, on the server), then both sides are
                  cut: the client cannot know whether it committed

`refuse(True)` makes new connections fail at once (the ledger "down"); `cut_all()` resets every open
connection. `stats` counts what was done (by kind; `landed` counts drop_after commits the server
confirmed with no error).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from psycopg.conninfo import conninfo_to_dict

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
# Extended-protocol messages libpq writes ahead of the Sync that ends them; any other message ends a batch
# (Sync, Query, Flush, a password answer during authentication, COPY data, ...).
BUFFERED = frozenset(b"PBDEC")
COMMIT_TEXT = re.compile(r"^\s*(COMMIT|END)\b", re.IGNORECASE)
KINDS = ("delay", "reset", "drop_before", "drop_after")
COMMIT_KINDS = frozenset({"drop_before", "drop_after"})


@dataclass
class Fault:
    """One fault, taken by the first batch that qualifies.

    kind: one of KINDS. drop_before/drop_after only take committing batches.
    match: a substring of the batch's SQL (None: any batch).
    application_name: only connections that sent this application_name at startup (None: any).
    delay: seconds, for kind "delay".
    """

    kind: str
    match: str | None = None
    application_name: str | None = None
    delay: float = 0.2
    # Filled in by the proxy when the fault is taken:
    taken: threading.Event = field(default_factory=threading.Event, repr=False)
    sql: str | None = None
    landed: bool | None = None  # drop_after: the server answered ReadyForQuery with no error

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}: one of {KINDS}")


@dataclass
class Batch:
    messages: list[tuple[int, bytes]]  # (type byte, payload) in order
    sql: list[str]
    executes: bool
    commits: bool

    def raw(self) -> bytes:
        return b"".join(bytes([kind]) + struct.pack("!I", len(body) + 4) + body for kind, body in self.messages)


def _cstring(body: bytes, offset: int) -> tuple[str, int]:
    end = body.index(b"\0", offset)
    return body[offset:end].decode("utf-8", "replace"), end + 1


class _Connection:
    def __init__(
        self,
        proxy: FaultProxy,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.server_reader: asyncio.StreamReader | None = None
        self.server_writer: asyncio.StreamWriter | None = None
        self.application_name: str | None = None
        self.status = b"I"  # from the last ReadyForQuery
        self.statements: dict[str, str] = {}  # prepared statement name -> SQL
        self.swallow: Fault | None = None  # drop_after in progress: answers are not forwarded
        self.swallow_error = False
        self.swallow_done = asyncio.Event()
        self.closed = False

    # --- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if self.proxy.refusing:
                self.proxy.count("refused")
                self.abort()
                return
            self.server_reader, self.server_writer = await self.proxy.open_upstream()
            opaque = await self._startup()
            assert self.server_reader is not None and self.server_writer is not None
            if opaque:
                pumps = [
                    self._copy(self.client_reader, self.server_writer),
                    self._copy(self.server_reader, self.client_writer),
                ]
            else:
                pumps = [self._client_to_server(), self._server_to_client()]
            await asyncio.gather(*(self._guarded(pump) for pump in pumps))
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.abort()

    async def _guarded(self, pump: Coroutine[Any, Any, None]) -> None:
        """Run one direction; when it ends by a broken side, close the other direction too."""
        try:
            await pump
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            self.abort()

    def abort(self) -> None:
        """Close both sides abruptly: RST on TCP, so neither side reads a clean end."""
        if self.closed:
            return
        self.closed = True
        self.proxy.connections.discard(self)
        for writer in (self.client_writer, self.server_writer):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self.swallow_done.set()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        self.abort()

    async def _startup(self) -> bool:
        """Forward the untyped startup exchange; True when the connection went encrypted (opaque)."""
        assert self.server_reader is not None and self.server_writer is not None
        while True:
            header = await self.client_reader.readexactly(8)
            length, code = struct.unpack("!II", header)
            body = await self.client_reader.readexactly(length - 8)
            self.server_writer.write(header + body)
            await self.server_writer.drain()
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                answer = await self.server_reader.readexactly(1)
                self.client_writer.write(answer)
                await self.client_writer.drain()
                if answer in (b"S", b"G"):
                    return True
                continue
            if code == CANCEL_REQUEST:
                return True  # the server closes it; nothing to frame
            parts = body.split(b"\0")
            params = dict(zip(parts[0::2], parts[1::2], strict=False))
            name = params.get(b"application_name")
            self.application_name = name.decode("utf-8", "replace") if name is not None else None
            return False

    # --- client -> server --------------------------------------------------------------------------

    async def _read_message(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        header = await reader.readexactly(5)
        length = struct.unpack("!I", header[1:])[0]
        return header[0], await reader.readexactly(length - 4)

    def _batch(self, messages: list[tuple[int, bytes]]) -> Batch:
        sql: list[str] = []
        executes = False
        in_block = self.status in (b"T", b"E")
        commit_text = False
        simple_autocommit = False
        for kind, body in messages:
            if kind == ord("P"):
                name, offset = _cstring(body, 0)
                text, _ = _cstring(body, offset)
                self.statements[name] = text
                sql.append(text)
            elif kind == ord("B"):
                _, offset = _cstring(body, 0)
                statement, _ = _cstring(body, offset)
                text = self.statements.get(statement, "")
                if statement:  # a prepared statement; the unnamed one's text came with this batch's Parse
                    sql.append(text)
                executes = True
                if COMMIT_TEXT.match(text):
                    commit_text = True
            elif kind == ord("Q"):
                text, _ = _cstring(body, 0)
                sql.append(text)
                executes = True
                if COMMIT_TEXT.match(text):
                    commit_text = True
                elif not in_block and text.strip() and not re.match(r"^\s*(BEGIN|START)\b", text, re.IGNORECASE):
                    simple_autocommit = True
        last = messages[-1][0]
        ends_statement = last in (ord("S"), ord("Q"))
        autocommit = not in_block and last == ord("S")
        commits = ends_statement and executes and (commit_text or simple_autocommit or autocommit)
        return Batch(messages, sql, executes, commits)

    async def _client_to_server(self) -> None:
        assert self.server_writer is not None
        pending: list[tuple[int, bytes]] = []
        while True:
            kind, body = await self._read_message(self.client_reader)
            if kind == ord("X"):  # Terminate
                self.server_writer.write(b"X\0\0\0\4")
                await self.server_writer.drain()
                self.abort()
                return
            pending.append((kind, body))
            if kind in BUFFERED:
                continue
            batch = self._batch(pending)
            pending = []
            fault = self.proxy.take(self, batch)
            if fault is None:
                self.server_writer.write(batch.raw())
                await self.server_writer.drain()
                continue
            self.proxy.count(fault.kind)
            if fault.kind == "delay":
                await asyncio.sleep(fault.delay)
                self.server_writer.write(batch.raw())
                await self.server_writer.drain()
                fault.taken.set()
            elif fault.kind in ("reset", "drop_before"):
                self.abort()
                fault.taken.set()
                return
            else:  # drop_after: the commit goes out, its answer never comes back
                self.swallow = fault
                self.server_writer.write(batch.raw())
                await self.server_writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.swallow_done.wait(), 10)
                fault.landed = self.swallow_done.is_set() and not self.swallow_error and not self.closed
                if fault.landed:
                    self.proxy.count("landed")
                self.abort()
                fault.taken.set()
                return

    # --- server -> client --------------------------------------------------------------------------

    async def _server_to_client(self) -> None:
        assert self.server_reader is not None
        while True:
            kind, body = await self._read_message(self.server_reader)
            if kind == ord("Z"):
                self.status = body[:1]
            if self.swallow is not None:
                if kind == ord("E"):
                    self.swallow_error = True
                if kind == ord("Z"):
                    self.swallow_done.set()
                    # Leave the abort to the client pump, which records whether the commit landed.
                    return
                continue
            self.client_writer.write(bytes([kind]) + struct.pack("!I", len(body) + 4) + body)
            await self.client_writer.drain()


class FaultProxy:
    """A proxy on 127.0.0.1:`port` in front of the server of `upstream_url`; see the module docstring."""

    def __init__(self, upstream_url: str) -> None:
        params = {k: str(v) for k, v in conninfo_to_dict(upstream_url).items()}
        host = params.get("host", "").split(",")[0]
        if not host:
            raise ValueError(f"the upstream URL names no host (a TCP host or a unix-socket directory): {upstream_url}")
        port = int(params.get("port", "").split(",")[0] or 5432)
        self._unix_path = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._tcp = (host, port)
        self.refusing = False
        self.connections: set[_Connection] = set()
        self.stats: Counter[str] = Counter()
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    # --- control (any thread) ----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for connection in list(self.connections):
                connection.abort()

        if self._server is not None:
            self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def proxy_url(self, url: str) -> str:
        """`url` (any libpq URL of the upstream server) pointed at this proxy, unencrypted."""
        params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
        params.update(host="127.0.0.1", port=str(self.port), sslmode="disable", gssencmode="disable")
        dbname = params.pop("dbname", "")
        userinfo = ""
        if "user" in params:
            userinfo = quote(params.pop("user"), safe="")
            if "password" in params:
                userinfo += ":" + quote(params.pop("password"), safe="")
            userinfo += "@"
        return f"postgresql://{userinfo}/{quote(dbname, safe='')}?{urlencode(params)}"

    def arm(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def disarm(self) -> list[Fault]:
        with self._lock:
            left, self._faults = self._faults, []
        return left

    def refuse(self, refusing: bool) -> None:
        self.refusing = refusing

    def cut_all(self) -> int:
        """Reset every open connection; returns how many."""

        async def cut() -> int:
            connections = list(self.connections)
            for connection in connections:
                connection.abort()
            return len(connections)

        count: int = self._call(cut())
        self.count("cut", count)
        return count

    def count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.stats[kind] += n

    # --- inside the loop ---------------------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(30)

    async def open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._unix_path is not None:
            return await asyncio.open_unix_connection(self._unix_path)
        return await asyncio.open_connection(*self._tcp)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(self, reader, writer)
        self.connections.add(connection)
        self.count("connections")
        await connection.run()

    def take(self, connection: _Connection, batch: Batch) -> Fault | None:
        """The first armed fault this batch qualifies for, removed from the queue."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.application_name is not None and fault.application_name != connection.application_name:
                    continue
                if fault.kind in COMMIT_KINDS and not batch.commits:
                    continue
                if fault.match is not None and not any(fault.match in text for text in batch.sql):
                    continue
                del self._faults[index]
                fault.sql = " | ".join(batch.sql)[:200]
                return fault
        return None


ProxyFactory = Callable[[str], FaultProxy]
