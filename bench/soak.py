"""Soak: the mixed workload through one metered gateway for a long time; memory and database size sampled.

Run on demand (`make soak DURATION=600`, or `python -m bench.soak --help`), never in CI. In one run:

    1. a private embedded PostgreSQL 18 (fsync and synchronous_commit on), migrated by the real
       api.ops.migrate, deleted at the end; --users users (default 1,000) in three groups:
         rich     (20 %): $1,000,000 and limits of $100,000,000: every call must succeed;
         modest   (60 %): $0.01 (5 calls): they run out, get 402 insufficient_funds, and an
                          administrator tops them up again (POST /api/billing/topup, $0.01);
         limited  (20 %): $1,000,000 but a daily limit of $0.01 (5 calls): they get 429
                          daily_limit_exceeded and raise their own limit by $0.01 (PUT /api/billing/settings);
       one API key (tracked, not charged);
    2. one gateway (`tollgate run --no-migrate`, metered, one uvicorn worker) serving bench_lookup
       (bench/gateway_tools.py, $0.002 a call);
    3. an open-loop mix at a steady --rate of operations a second (see MIX): tool calls over HTTP
       (JWT, API key, with an Idempotency-Key that is replayed later and must answer 409
       already_completed, and concurrent pairs with one key: one 200, one 409), short-lived MCP
       sessions over legacy SSE and over streamable HTTP (the official SDK client: initialize, two
       tools/call, close), balance and history reads, settings writes, admin top-ups;
    4. every --sample-every seconds: the gateway's VmRSS and open fds, pg_database_size, the size of
       every billing table, the rows of billing_transactions / cost_tracking / reservations, the
       operations done so far;
    5. at the end: billing.verify_ledger() empty, no tracking row pending, no hold open, charges written
       = charged answers counted, top-ups written = top-up answers counted, no error; the memory and
       the database-growth verdicts (below); a table on stdout, bench/results/soak-<UTC>.json with every
       sample, and soak-<UTC>.png.

Every answer is classified: expected (2xx; 402 for a modest user; 429 for a limited user; 409
already_completed for a replay) or an error (a 5xx, any other status, a connection error, a timeout,
a 2xx whose billing status is not what the caller must get). One error fails the run (exit 1).

Memory verdict: the least-squares slope of the gateway's RSS over the **second half** of the run must
stay below --rss-slope-kib-min (default 256 KiB/min) and the fitted growth over that half below
--rss-growth-kib (default 4,096 KiB). The first half is left out because it holds the warm-up:
pymalloc arenas, psycopg's prepared statements per pooled connection, the SDK's session objects and
the allocator's high-water mark reach their steady size there. A leak shows as a steady slope that
the warm-up does not explain: at 200 operations a second, 256 KiB/min is about 22 bytes per operation.
Runs shorter than 300 s report the memory figures but do not judge them (a slope over a couple of
minutes is allocator noise).

Database verdict: bytes of database growth per row written (pg_database_size delta / rows added to
billing_transactions + cost_tracking + reservations) in the second half must be at most
(1 + --bytes-per-row-tolerance) (default 0.25) times the first half's. The first half includes the
dead tuples that pile up before autovacuum first runs; after that, updated rows' old versions are
reused and the size per row written should stay flat or fall. Growing bytes per row means bloat
that vacuum does not reclaim (or rows written that the counts do not see).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402
import psycopg  # noqa: E402
from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.sse import sse_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from api.gateway import apikeys  # noqa: E402
from api.gateway.auth import mint_token  # noqa: E402
from api.ledger import db, roles  # noqa: E402
from api.ledger import sync as ledger  # noqa: E402
from api.ops import embedded, migrate  # noqa: E402
from bench.gateway import RESULTS_DIR, TOOL, cpu_seconds, pending_tracking_rows, postgres_pids  # noqa: E402
from tests.gateway.server import ADMIN_SCOPE, SECRET, Gateway, start_gateway  # noqa: E402

PRICE = Decimal("0.002")
BODY = b'{"query": "constitution"}'
RICH_FUNDS, RICH_LIMIT = Decimal(1_000_000), Decimal(100_000_000)
MODEST_FUNDS = Decimal("0.01")  # 5 calls, refilled by this much after a 402
LIMITED_DAILY = Decimal("0.01")  # 5 calls a day, raised by this much after a 429
MEMORY_JUDGED_FROM = 300.0  # seconds: a shorter run's second half is too short for a slope to mean anything
GROUPS = (("rich", 0.2), ("modest", 0.6), ("limited", 0.2))
COUNTED_TABLES = ("billing_transactions", "cost_tracking", "reservations")

# Share of --rate per operation kind (normalised). Replays, refills and limit raises come on top:
# they are caused by answers (a 200 with an Idempotency-Key, a 402, a 429).
MIX: dict[str, float] = {
    "tool_jwt": 0.50,  # POST /api/tools/bench_lookup, random user of any group
    "tool_key": 0.08,  # the same with the API key: tracked, not charged
    "tool_idem": 0.06,  # a rich user with an Idempotency-Key; half are replayed 0.5-5 s later
    "idem_race": 0.01,  # two concurrent requests with one key: one 200, one 409
    "balance": 0.12,  # GET /api/billing/balance
    "history": 0.08,  # GET /api/billing/history?limit=20
    "settings": 0.03,  # PUT /api/billing/settings (rich/modest users: limits rewritten unchanged)
    "topup": 0.02,  # admin POST /api/billing/topup to a random rich or modest user
    "mcp_sse": 0.01,  # an MCP session over /sse: initialize, 2 x tools/call, close
    "mcp_http": 0.01,  # the same over streamable HTTP (/mcp)
}
CHARGED_KINDS = ("tool_jwt", "tool_idem", "idem_race", "mcp_sse", "mcp_http")


@dataclass
class User:
    number: int
    subject: str
    user_id: uuid.UUID
    token: str
    group: str
    daily_limit: Decimal
    refilling: bool = False
    raising: bool = False
    refills: int = 0


@dataclass
class Stats:
    """What every operation answered: (kind, outcome) counts, latencies, errors, side effects."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    charged: int = 0  # answers that say the call was charged (HTTP billing.status / MCP _meta)
    topups: int = 0  # admin top-ups answered 200
    mcp_calls: Counter[str] = field(default_factory=Counter)
    done: int = 0

    def record(self, kind: str, outcome: str, seconds: float) -> None:
        self.outcomes[(kind, outcome)] += 1
        self.latencies.setdefault(kind, []).append(seconds)
        self.done += 1

    def error(self, kind: str, what: str) -> None:
        self.error_count += 1
        if len(self.errors) < 200:
            self.errors.append({"at": time.time(), "kind": kind, "what": what[:500]})


class Unexpected(Exception):
    """An answer the scenario does not allow."""


# ---- a lean keep-alive HTTP/1.1 client (as bench/loadgen.py: no HTTP library on the shared CPUs) ----


class RawHttp:
    """Keep-alive connections to one host, reused LIFO; a connection idle longer than ``idle_limit``
    (below uvicorn's 5 s keep-alive timeout) is closed instead of reused, so the server never closes
    one under a request."""

    def __init__(self, host: str, port: int, idle_limit: float = 2.0) -> None:
        self.host, self.port, self.idle_limit = host, port, idle_limit
        self._idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, bytes]:
        reader, writer = None, None
        now = time.monotonic()
        while self._idle:
            last, r, w = self._idle.pop()
            if now - last < self.idle_limit and not r.at_eof():
                reader, writer = r, w
                break
            w.close()
        if reader is None or writer is None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("connection closed before the status line")
            length, close = 0, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
                elif name == "transfer-encoding":
                    raise ConnectionError(f"unexpected transfer-encoding {value.strip()}")
            payload = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            self._idle.append((time.monotonic(), reader, writer))
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        for _, _, writer in self._idle:
            writer.close()
        self._idle.clear()


# ---- the workload --------------------------------------------------------------------------------


class Workload:
    def __init__(self, base_url: str, users: list[User], api_key: str, admin_token: str, timeout: float) -> None:
        host, _, port = base_url.removeprefix("http://").partition(":")
        self.base_url = base_url
        self.http = RawHttp(host, int(port))
        self.users = users
        self.by_group = {name: [u for u in users if u.group == name] for name, _ in GROUPS}
        self.api_key = api_key
        self.admin_token = admin_token
        self.timeout = timeout
        self.stats = Stats()
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self.peak_in_flight = 0  # since the last sample
        self.refill_serial = 0
        self.ops: dict[str, Callable[[], Awaitable[str]]] = {
            "tool_jwt": self.tool_jwt,
            "tool_key": self.tool_key,
            "tool_idem": self.tool_idem,
            "idem_race": self.idem_race,
            "balance": self.balance,
            "history": self.history,
            "settings": self.settings,
            "topup": self.topup,
            "mcp_sse": lambda: self.mcp_session("sse"),
            "mcp_http": lambda: self.mcp_session("http"),
        }

    # -- plumbing --

    def spawn(self, kind: str, op: Callable[[], Awaitable[str]], delay: float = 0.0) -> None:
        if not delay:  # counted from now, so that the scheduler's cap sees it before it starts
            self.enter()
        task = asyncio.create_task(self.run(kind, op, delay))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def enter(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    async def run(self, kind: str, op: Callable[[], Awaitable[str]], delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
            self.enter()
        started = time.perf_counter()
        try:
            outcome = await asyncio.wait_for(op(), self.timeout)
        except Unexpected as exc:
            outcome = "error"
            self.stats.error(kind, str(exc))
        except TimeoutError:
            outcome = "timeout"
            self.stats.error(kind, f"no answer within {self.timeout:g} s")
        except Exception as exc:
            outcome = "error"
            self.stats.error(kind, f"{type(exc).__name__}: {exc!r}")
        finally:
            self.in_flight -= 1
        self.stats.record(kind, outcome, time.perf_counter() - started)

    async def call(
        self, method: str, path: str, token: str | None, body: Any = None, extra: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(extra or {})
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        status, raw = await self.http.request(method, path, headers, payload)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            raise Unexpected(f"{method} {path}: {status} with a body that is not JSON: {raw[:200]!r}") from None
        return status, answer

    def pick(self, *groups: str) -> User:
        pool = [u for g in groups for u in self.by_group[g]] if len(groups) > 1 else self.by_group[groups[0]]
        return random.choice(pool)

    def refused(self, user: User, code: str) -> str:
        """A refusal is expected only for the group built to hit it; it triggers the cure."""
        if code == "insufficient_funds" and user.group == "modest":
            if not user.refilling:
                user.refilling = True
                self.spawn("refill", lambda: self.refill(user))
            return "402"
        if code == "daily_limit_exceeded" and user.group == "limited":
            if not user.raising:
                user.raising = True
                self.spawn("raise_limit", lambda: self.raise_limit(user))
            return "429"
        raise Unexpected(f"{user.group} user {user.number} refused with {code}")

    # -- HTTP tool calls --

    async def tool(self, user: User | None, request_id: str | None = None) -> tuple[int, dict[str, Any]]:
        extra = {"Idempotency-Key": request_id} if request_id else {}
        if user is None:
            extra["X-API-Key"] = self.api_key
        return await self.call("POST", f"/api/tools/{TOOL}", user.token if user else None, BODY, extra)

    def billed(self, status: int, answer: dict[str, Any], user: User, what: str) -> str:
        if status == 200:
            billing_status = (answer.get("billing") or {}).get("status")
            if billing_status != "charged":
                raise Unexpected(f"{what}: 200 with billing status {billing_status!r}")
            self.stats.charged += 1
            return "200"
        code = (answer.get("error") or {}).get("code", "")
        if status in (402, 429):
            expected = {402: "insufficient_funds", 429: "daily_limit_exceeded"}[status]
            if code != expected:
                raise Unexpected(f"{what}: {status} {code}")
            return self.refused(user, code)
        raise Unexpected(f"{what}: {status} {json.dumps(answer)[:300]}")

    async def tool_jwt(self) -> str:
        user = random.choice(self.users)
        status, answer = await self.tool(user)
        return self.billed(status, answer, user, f"tool call of {user.group} user {user.number}")

    async def tool_key(self) -> str:
        status, answer = await self.tool(None)
        billing_status = (answer.get("billing") or {}).get("status")
        if status != 200 or billing_status != "not_charged":
            raise Unexpected(f"API-key tool call: {status}, billing status {billing_status!r}: {str(answer)[:300]}")
        return "200"

    async def tool_idem(self) -> str:
        user = self.pick("rich")
        key = f"soak-{uuid.uuid4().hex}"
        status, answer = await self.tool(user, key)
        outcome = self.billed(status, answer, user, "tool call with an Idempotency-Key")
        if random.random() < 0.5:
            self.spawn("replay", lambda: self.replay(user, key), delay=random.uniform(0.5, 5.0))
        return outcome

    async def replay(self, user: User, key: str) -> str:
        status, answer = await self.tool(user, key)
        code = (answer.get("error") or {}).get("code")
        if status != 409 or code != "already_completed":
            raise Unexpected(f"replay of {key}: {status} {code} (must be 409 already_completed)")
        return "409"

    async def idem_race(self) -> str:
        user = self.pick("rich")
        key = f"soak-race-{uuid.uuid4().hex}"
        answers = await asyncio.gather(self.tool(user, key), self.tool(user, key))
        statuses = sorted(status for status, _ in answers)
        if statuses != [200, 409]:
            raise Unexpected(f"two concurrent calls with key {key}: {statuses} (must be one 200, one 409)")
        for status, answer in answers:
            if status == 200:
                self.billed(status, answer, user, "idempotency race")
            elif (answer.get("error") or {}).get("code") != "already_completed":
                raise Unexpected(f"idempotency race {key}: 409 {answer}")
        return "200+409"

    # -- billing endpoints --

    async def expect_200(self, what: str, method: str, path: str, token: str, body: Any = None) -> dict[str, Any]:
        status, answer = await self.call(method, path, token, body)
        if status != 200 or answer.get("success") is not True:
            raise Unexpected(f"{what}: {status} {json.dumps(answer)[:300]}")
        return answer

    async def balance(self) -> str:
        user = random.choice(self.users)
        answer = await self.expect_200("balance", "GET", "/api/billing/balance", user.token)
        if "balance_usd" not in answer.get("billing", {}):
            raise Unexpected(f"balance without balance_usd: {answer}")
        return "200"

    async def history(self) -> str:
        user = random.choice(self.users)
        await self.expect_200("history", "GET", "/api/billing/history?limit=20", user.token)
        return "200"

    async def settings(self) -> str:
        user = self.pick("rich", "modest")
        body = {"daily_limit_usd": str(RICH_LIMIT), "monthly_limit_usd": str(RICH_LIMIT)}
        await self.expect_200("settings", "PUT", "/api/billing/settings", user.token, body)
        return "200"

    async def credit(self, user: User, amount: Decimal, payment_id: str) -> None:
        body = {"user_id": str(user.user_id), "amount_usd": str(amount), "payment_provider": "soak"}
        await self.expect_200(
            "admin top-up", "POST", "/api/billing/topup", self.admin_token, {**body, "payment_id": payment_id}
        )
        self.stats.topups += 1

    async def topup(self) -> str:
        user = self.pick("rich", "modest")
        await self.credit(user, MODEST_FUNDS, f"soak-topup-{uuid.uuid4().hex}")
        return "200"

    async def refill(self, user: User) -> str:
        try:
            user.refills += 1
            await self.credit(user, MODEST_FUNDS, f"soak-refill-{user.number}-{user.refills}")
        finally:
            user.refilling = False
        return "200"

    async def raise_limit(self, user: User) -> str:
        try:
            limit = user.daily_limit + LIMITED_DAILY
            body = {"daily_limit_usd": str(limit)}
            await self.expect_200("limit raise", "PUT", "/api/billing/settings", user.token, body)
            user.daily_limit = limit
        finally:
            user.raising = False
        return "200"

    # -- MCP: short-lived sessions through the official SDK client --

    async def mcp_session(self, transport: str) -> str:
        user = random.choice(self.users) if random.random() < 0.8 else None  # 20 % anonymous
        headers = {"Authorization": f"Bearer {user.token}"} if user else {}
        if transport == "sse":
            async with (
                sse_client(f"{self.base_url}/sse", headers=headers, timeout=self.timeout) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                outcomes = [await self.mcp_call(session, user, transport) for _ in range(2)]
        else:
            async with (
                httpx2.AsyncClient(headers=headers, timeout=self.timeout) as client,
                streamable_http_client(f"{self.base_url}/mcp", http_client=client) as streams,
                ClientSession(streams[0], streams[1]) as session,
            ):
                await session.initialize()
                outcomes = [await self.mcp_call(session, user, transport) for _ in range(2)]
        return "ok" if user is None else "+".join(outcomes)

    async def mcp_call(self, session: ClientSession, user: User | None, transport: str) -> str:
        result = await session.call_tool(TOOL, {"query": "constitution"})
        billing = (result.meta or {}).get("tollgate/billing") or {}
        if result.is_error:
            error = (result.structured_content or {}).get("error") or {}
            if user is None:
                raise Unexpected(f"anonymous MCP call ({transport}) failed: {error or result.content}")
            outcome = self.refused(user, str(error.get("code")))
        else:
            expected = "not_charged" if user is None else "charged"
            if billing.get("status") != expected:
                raise Unexpected(f"MCP call ({transport}): billing status {billing.get('status')!r}, not {expected}")
            if user is not None:
                self.stats.charged += 1
            outcome = expected
        self.stats.mcp_calls[f"{transport}:{outcome}"] += 1
        return outcome

    # -- the open-loop scheduler --

    async def drive(self, seconds: float, rate: float, max_in_flight: int, lag: list[float]) -> int:
        """Issue the mix for ``seconds``; return how many scheduled operations were never issued.

        Back-pressure: never more than max_in_flight at once, so a stall of the machine becomes scheduler
        lag (reported) instead of a burst of connections. What is still due at the deadline is dropped,
        not issued late: the run lasts ``seconds`` whatever the machine managed.
        """
        kinds = list(MIX)
        weights = [MIX[k] for k in kinds]
        started = time.monotonic()
        issued = 0
        while (now := time.monotonic()) - started < seconds:
            for _ in range(int((now - started) * rate) - issued):
                while self.in_flight >= max_in_flight:
                    await asyncio.sleep(0.005)
                if time.monotonic() - started >= seconds:
                    break
                kind = random.choices(kinds, weights)[0]
                self.spawn(kind, self.ops[kind])
                issued += 1
            lag.append(max(0.0, (time.monotonic() - started) * rate - issued) / rate)
            await asyncio.sleep(0.01)
        return max(0, int(seconds * rate) - issued)

    async def drain(self, timeout: float) -> int:
        """Wait for the operations in flight (and the replays still sleeping); return how many were left."""
        deadline = time.monotonic() + timeout
        while self.tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self.tasks), timeout=1)
        left = len(self.tasks)
        for task in list(self.tasks):
            task.cancel()
        self.http.close()
        return left


# ---- sampling ------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            values[name] = int(value.split()[0])
    values["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return values


async def sample(
    conn: psycopg.AsyncConnection[Any], gateway: Gateway, pgdata: Path, started: float, work: Workload
) -> dict[str, Any]:
    status = proc_status(gateway.process.pid)
    cur = await conn.execute("SELECT pg_database_size(current_database())")
    row = await cur.fetchone()
    assert row is not None
    db_size = int(row[0])
    cur = await conn.execute(
        "SELECT c.relname, pg_total_relation_size(c.oid), coalesce(s.n_dead_tup, 0)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
        " WHERE n.nspname = 'billing' AND c.relkind = 'r' ORDER BY 1"
    )
    tables = {str(name): {"bytes": int(size), "dead": int(dead)} for name, size, dead in await cur.fetchall()}
    rows = {}
    for table in COUNTED_TABLES:
        cur = await conn.execute(f"SELECT count(*) FROM billing.{table}")
        count = await cur.fetchone()
        assert count is not None
        rows[table] = int(count[0])
    pg_pids = postgres_pids(pgdata)
    peak, work.peak_in_flight = work.peak_in_flight, work.in_flight
    return {
        "t": round(time.monotonic() - started, 2),
        "gateway_rss_kib": status["VmRSS"],
        "gateway_hwm_kib": status["VmHWM"],
        "gateway_threads": status["Threads"],
        "gateway_fds": status["fds"],
        "gateway_cpu_s": cpu_seconds([gateway.process.pid]),
        "postgres_cpu_s": cpu_seconds(pg_pids),
        "postgres_processes": len(pg_pids),
        "db_bytes": db_size,
        "tables": tables,
        "rows": rows,
        "rows_total": sum(rows.values()),
        "ops_done": work.stats.done,
        "errors": work.stats.error_count,
        "in_flight": work.in_flight,
        "in_flight_peak": peak,
        "loadavg": os.getloadavg(),
        "driver_cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
    }


async def sampler(
    url: str,
    gateway: Gateway,
    pgdata: Path,
    started: float,
    work: Workload,
    every: float,
    samples: list[dict[str, Any]],
    stop: asyncio.Event,
) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            samples.append(await sample(conn, gateway, pgdata, started, work))
            last = samples[-1]
            print(
                f"t {last['t']:6.0f} s  ops {last['ops_done']:8d}"
                f"  in flight {last['in_flight']:3d} (peak {last['in_flight_peak']:3d})"
                f"  gateway RSS {last['gateway_rss_kib'] / 1024:6.1f} MiB  fds {last['gateway_fds']:3d}"
                f"  db {last['db_bytes'] / 2**20:7.1f} MiB  rows {last['rows_total']:8d}"
                f"  errors {last['errors']}  load {last['loadavg'][0]:.2f}",
                flush=True,
            )
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            # once stopped: one last sample, at rest (the load drained)


# ---- verdicts ------------------------------------------------------------------------------------


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var


def memory_verdict(
    samples: list[dict[str, Any]], seconds: float, slope_limit: float, growth_limit: float
) -> dict[str, Any]:
    half = [s for s in samples if s["t"] >= seconds / 2]
    points = [(float(s["t"]), float(s["gateway_rss_kib"])) for s in half]
    slope = slope_per_minute(points)
    span_min = (points[-1][0] - points[0][0]) / 60 if len(points) > 1 else 0.0
    fitted_growth = slope * span_min
    ops = half[-1]["ops_done"] - half[0]["ops_done"] if len(half) > 1 else 0
    judged = seconds >= MEMORY_JUDGED_FROM
    within = len(points) >= 3 and slope <= slope_limit and fitted_growth <= growth_limit
    return {
        "rss_start_kib": samples[0]["gateway_rss_kib"],
        "rss_mid_kib": half[0]["gateway_rss_kib"] if half else None,
        "rss_end_kib": samples[-1]["gateway_rss_kib"],
        "rss_max_kib": max(s["gateway_rss_kib"] for s in samples),
        "second_half_samples": len(points),
        "second_half_slope_kib_per_min": round(slope, 1),
        "second_half_fitted_growth_kib": round(fitted_growth, 1),
        "second_half_bytes_per_op": round(1024 * fitted_growth / ops, 2) if ops else None,
        "fds_start": samples[0]["gateway_fds"],
        "fds_max": max(s["gateway_fds"] for s in samples),
        "fds_end": samples[-1]["gateway_fds"],
        "slope_limit_kib_per_min": slope_limit,
        "growth_limit_kib": growth_limit,
        "judged": judged,
        "within_limits": within,
        "ok": within or not judged,
    }


def db_verdict(samples: list[dict[str, Any]], seconds: float, tolerance: float) -> dict[str, Any]:
    first = samples[0]
    mid = min(samples, key=lambda s: abs(s["t"] - seconds / 2))
    last = samples[-1]

    def per_row(a: dict[str, Any], b: dict[str, Any]) -> float | None:
        rows = b["rows_total"] - a["rows_total"]
        return (b["db_bytes"] - a["db_bytes"]) / rows if rows > 0 else None

    first_half, second_half = per_row(first, mid), per_row(mid, last)
    growth = {
        name: last["tables"][name]["bytes"] - first["tables"].get(name, {"bytes": 0})["bytes"]
        for name in last["tables"]
    }
    return {
        "db_start_bytes": first["db_bytes"],
        "db_end_bytes": last["db_bytes"],
        "db_growth_bytes": last["db_bytes"] - first["db_bytes"],
        "rows_written": {t: last["rows"][t] - first["rows"][t] for t in COUNTED_TABLES},
        "rows_written_total": last["rows_total"] - first["rows_total"],
        "bytes_per_row_whole": per_row(first, last),
        "bytes_per_row_first_half": first_half,
        "bytes_per_row_second_half": second_half,
        "table_growth_bytes": growth,
        "tolerance": tolerance,
        "ok": first_half is not None and second_half is not None and second_half <= first_half * (1 + tolerance),
    }


# ---- output --------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def plot(samples: list[dict[str, Any]], memory: dict[str, Any], seconds: float, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t"] / 60 for s in samples]
    fig, (ax_rss, ax_db, ax_ops) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    ax_rss.plot(minutes, [s["gateway_rss_kib"] / 1024 for s in samples], marker=".", label="gateway VmRSS")
    half = [s for s in samples if s["t"] >= seconds / 2]
    if len(half) >= 2:
        t0, v0 = half[0]["t"], sum(s["gateway_rss_kib"] for s in half) / len(half)
        mean_t = sum(s["t"] for s in half) / len(half)
        slope = memory["second_half_slope_kib_per_min"] / 60
        ax_rss.plot(
            [t0 / 60, half[-1]["t"] / 60],
            [(v0 + slope * (t0 - mean_t)) / 1024, (v0 + slope * (half[-1]["t"] - mean_t)) / 1024],
            "r--",
            label=f"second-half fit: {memory['second_half_slope_kib_per_min']:+.0f} KiB/min",
        )
    ax_rss.set_ylabel("MiB")
    ax_rss.set_title(title)
    ax_rss.legend(loc="lower right")
    ax_db.plot(minutes, [s["db_bytes"] / 2**20 for s in samples], marker=".", color="tab:green", label="database size")
    ax_db.set_ylabel("database MiB")
    ax_rows = ax_db.twinx()
    ax_rows.plot(minutes, [s["rows_total"] for s in samples], color="tab:gray", linestyle=":", label="ledger rows")
    ax_rows.set_ylabel("rows (transactions + tracking + reservations)")
    ax_db.legend(loc="upper left")
    ax_rows.legend(loc="lower right")
    ax_ops.plot(minutes, [s["ops_done"] for s in samples], marker=".", color="tab:purple", label="operations done")
    ax_ops.set_ylabel("operations")
    ax_ops.set_xlabel("minutes")
    ax_ops.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# ---- setup ---------------------------------------------------------------------------------------


def seed(url: str, count: int) -> tuple[list[User], str]:
    """Create and fund the users (one transaction, through the ledger functions) and one API key."""
    users: list[User] = []
    names = [name for name, _ in GROUPS]
    shares = [share for _, share in GROUPS]
    bounds = [round(count * sum(shares[: i + 1])) for i in range(len(shares))]
    with db.connect(url, autocommit=False) as conn:
        for number in range(count):
            group = names[next(i for i, bound in enumerate(bounds) if number < bound)]
            subject = f"soak-user-{number}"
            user_id = ledger.ensure_account(conn, subject)
            funds = MODEST_FUNDS if group == "modest" else RICH_FUNDS
            ledger.top_up(conn, user_id, funds, "soak", f"fund-{number}")
            daily = LIMITED_DAILY if group == "limited" else RICH_LIMIT
            ledger.update_settings(conn, user_id, daily_limit_usd=daily, monthly_limit_usd=RICH_LIMIT)
            token = mint_token(SECRET, subject, lifetime_seconds=7 * 86400)
            users.append(User(number, subject, user_id, token, group, daily))
        key = apikeys.generate_key()
        ledger.create_api_key(conn, "soak-key", apikeys.hash_key(key), apikeys.key_prefix(key))
        conn.commit()
    return users, key


def log_error(line: str) -> bool:
    """A gateway log line at level error or critical (JSON lines; plain text such as a traceback otherwise)."""
    try:
        record = json.loads(line)
    except ValueError:
        return "Traceback" in line or "ERROR" in line or "CRITICAL" in line
    return isinstance(record, dict) and str(record.get("level", "")).lower() in ("error", "critical")


def scalar(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0])


async def soak(
    args: argparse.Namespace, url: str, gateway: Gateway, pgdata: Path, users: list[User], key: str
) -> dict[str, Any]:
    admin = mint_token(SECRET, "soak-admin", admin_scope=ADMIN_SCOPE, lifetime_seconds=7 * 86400)
    work = Workload(gateway.base_url, users, key, admin, args.timeout)
    # Warm-up, not counted: every user seen once (the gateway's subject cache is then warm, as in steady state).
    for start in range(0, len(users), 50):
        await asyncio.gather(*(work.call("GET", "/api/billing/balance", u.token) for u in users[start : start + 50]))
    work.stats = Stats()
    samples: list[dict[str, Any]] = []
    lag: list[float] = []
    stop = asyncio.Event()
    started = time.monotonic()
    sampling = asyncio.create_task(sampler(url, gateway, pgdata, started, work, args.sample_every, samples, stop))
    not_issued = await work.drive(args.duration, args.rate, args.max_in_flight, lag)
    driven = time.monotonic() - started
    left = await work.drain(args.timeout + 10)
    await asyncio.sleep(1)  # completions that were spooled would show as pending; none should be
    stop.set()
    await sampling
    return {
        "work": work,
        "samples": samples,
        "lag": lag,
        "driven_seconds": driven,
        "left_in_flight": left,
        "not_issued": not_issued,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="operations a second, open loop (default 200; see bench/README.md)"
    )
    parser.add_argument("--users", type=int, default=1000, help="JWT users: 20%% rich, 60%% modest, 20%% limited")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="cap on operations in flight (default 64)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds an operation may take (default 30)")
    parser.add_argument("--pool-max", default="10", help="TOLLGATE_POOL_MAX of the gateway (default 10)")
    parser.add_argument("--rss-slope-kib-min", type=float, default=256.0, help="memory verdict (default 256)")
    parser.add_argument("--rss-growth-kib", type=float, default=4096.0, help="memory verdict (default 4096)")
    parser.add_argument("--bytes-per-row-tolerance", type=float, default=0.25, help="database verdict (default 0.25)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the workload")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.duration < 4 * args.sample_every or args.rate <= 0 or args.users < 10:
        parser.error("--duration must be at least 4 samples long, --rate positive, --users at least 10")
    random.seed(args.seed)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    workdir = Path(tempfile.mkdtemp(prefix="tollgate-soak-"))
    pgdata = workdir / "pgdata"
    server = embedded.throwaway_server(pgdata)
    gateway: Gateway | None = None
    try:
        url = server.get_uri()
        migrate.upgrade(url, ROOT / "db")
        roles.provision_login_roles(url)  # the gateway logs in as tollgate_gw_*, never as the owner
        with db.connect(url) as conn:
            pg_settings = {
                str(name): str(value)
                for name, value in conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                    (["server_version", "fsync", "synchronous_commit", "shared_buffers", "autovacuum"],),
                ).fetchall()
            }
        users, key = seed(url, args.users)
        gateway = start_gateway(
            url,
            workdir / "gateway",
            TOLLGATE_LOG_LEVEL="WARNING",
            TOLLGATE_POOL_MAX=args.pool_max,
            TOLLGATE_TOOLS_CONFIG=str(ROOT / "bench" / "gateway_tools.toml"),
        )
        print(
            f"soak: {args.duration:g} s at {args.rate:g} operations/s, {args.users} users, gateway pid"
            f" {gateway.process.pid}; PostgreSQL {pg_settings}",
            flush=True,
        )
        with db.connect(url) as conn:
            last_tx = scalar(conn, "SELECT coalesce(max(id), 0) FROM billing.billing_transactions")
        run = asyncio.run(soak(args, url, gateway, pgdata, users, key))
        work: Workload = run["work"]
        stats = work.stats
        samples: list[dict[str, Any]] = run["samples"]
        with db.connect(url) as conn:
            charges = scalar(
                conn, "SELECT count(*) FROM billing.billing_transactions WHERE type = 'charge' AND id > %s", (last_tx,)
            )
            topups = scalar(
                conn, "SELECT count(*) FROM billing.billing_transactions WHERE type = 'topup' AND id > %s", (last_tx,)
            )
            pending = pending_tracking_rows(conn)
            holds = scalar(conn, "SELECT count(*) FROM billing.reservations WHERE status = 'held'")
            violations = ledger.verify_ledger(conn)
        gateway_alive = gateway.process.poll() is None
        log_errors = [line for line in gateway.logs().splitlines() if log_error(line)]
        driven = run["driven_seconds"]
        memory = memory_verdict(samples, driven, args.rss_slope_kib_min, args.rss_growth_kib)
        database = db_verdict(samples, driven, args.bytes_per_row_tolerance)
        checks = {
            "no_errors": stats.error_count == 0,
            "nothing_left_in_flight": run["left_in_flight"] == 0,
            "verify_ledger_empty": not violations,
            "no_pending_tracking_row": pending == 0,
            "no_open_hold": holds == 0,
            "charges_equal_charged_answers": charges == stats.charged,
            "topups_equal_topup_answers": topups == stats.topups,
            "gateway_alive": gateway_alive,
            "gateway_log_clean": not log_errors,
            "memory": memory["ok"],
            "database_growth": database["ok"],
        }
        passed = all(checks.values())

        # ---- the report ----
        by_kind: dict[str, Counter[str]] = {}
        for (kind, outcome), n in stats.outcomes.items():
            by_kind.setdefault(kind, Counter())[outcome] += n
        achieved = stats.done / run["driven_seconds"]
        asked = int(args.rate * args.duration)
        load = [s["loadavg"][0] for s in samples]
        print()
        print(
            f"soak: {run['driven_seconds']:.0f} s, {stats.done} operations ({achieved:.0f}/s achieved,"
            f" {args.rate:g}/s asked; scheduler lag max {max(run['lag'], default=0):.2f} s;"
            f" {run['not_issued']} of {asked} scheduled operations not issued: the machine did not keep up),"
            f" {args.users} users; load average (1 min) {min(load):.2f}-{max(load):.2f}, mean"
            f" {sum(load) / len(load):.2f} on {os.cpu_count()} CPUs"
        )
        span = samples[-1]["t"] - samples[0]["t"]
        cores = {
            name: round((samples[-1][f"{name}_cpu_s"] - samples[0][f"{name}_cpu_s"]) / span, 2)
            for name in ("driver", "gateway", "postgres")
        }
        print(
            f"CPU used (cores, averaged over the run): load driver {cores['driver']}, gateway {cores['gateway']},"
            f" PostgreSQL {cores['postgres']}"
        )
        print(f"{'operation':12s} {'count':>8s} {'p50 ms':>8s} {'p99 ms':>8s}  outcomes")
        for kind in sorted(by_kind, key=lambda k: -sum(by_kind[k].values())):
            lat = stats.latencies.get(kind, [])
            outcomes = ", ".join(f"{o} {n}" for o, n in by_kind[kind].most_common())
            print(
                f"{kind:12s} {sum(by_kind[kind].values()):8d} {percentile(lat, 0.5) * 1000:8.1f}"
                f" {percentile(lat, 0.99) * 1000:8.1f}  {outcomes}"
            )
        print(f"MCP tools/call results: {dict(stats.mcp_calls)}")
        print()
        step = max(1, len(samples) // 12)
        shown = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
        print(
            f"{'t s':>6s} {'ops':>8s} {'RSS MiB':>8s} {'fds':>4s} {'db MiB':>8s} {'tx rows':>8s} {'tracking':>9s}"
            f" {'reserv.':>8s} {'load':>5s}"
        )
        for s in shown:
            print(
                f"{s['t']:6.0f} {s['ops_done']:8d} {s['gateway_rss_kib'] / 1024:8.1f} {s['gateway_fds']:4d}"
                f" {s['db_bytes'] / 2**20:8.1f} {s['rows']['billing_transactions']:8d} {s['rows']['cost_tracking']:9d}"
                f" {s['rows']['reservations']:8d} {s['loadavg'][0]:5.2f}"
            )
        print()
        print(
            f"memory: RSS {memory['rss_start_kib'] / 1024:.1f} MiB at the start, {memory['rss_mid_kib'] / 1024:.1f}"
            f" at half time, {memory['rss_end_kib'] / 1024:.1f} at the end (max {memory['rss_max_kib'] / 1024:.1f});"
            f" second half: slope {memory['second_half_slope_kib_per_min']:+.1f} KiB/min (limit"
            f" {args.rss_slope_kib_min:g}), fitted growth {memory['second_half_fitted_growth_kib']:+.0f} KiB (limit"
            f" {args.rss_growth_kib:g}), {memory['second_half_bytes_per_op']} bytes per operation;"
            f" fds {memory['fds_start']} -> {memory['fds_end']} (max {memory['fds_max']}): "
            + ("OK" if memory["within_limits"] else "FAIL" if memory["judged"] else "above the limits")
            + ("" if memory["judged"] else f" (not judged: the run is shorter than {MEMORY_JUDGED_FROM:g} s)")
        )

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.0f}"

        print(
            f"database: {database['db_start_bytes'] / 2**20:.1f} -> {database['db_end_bytes'] / 2**20:.1f} MiB"
            f" (+{database['db_growth_bytes'] / 2**20:.1f} MiB) for {database['rows_written_total']} rows written"
            f" {database['rows_written']}; bytes per row: whole {fmt(database['bytes_per_row_whole'])}, first half"
            f" {fmt(database['bytes_per_row_first_half'])}, second half {fmt(database['bytes_per_row_second_half'])}"
            f" (tolerance +{args.bytes_per_row_tolerance:.0%}): {'OK' if database['ok'] else 'FAIL'}"
        )
        print(
            f"ledger: {charges} charges written, {stats.charged} charged answers counted; {topups} top-ups written,"
            f" {stats.topups} top-up answers; pending tracking rows {pending}; open holds {holds};"
            f" verify_ledger {'clean' if not violations else f'{len(violations)} violations'}"
        )
        if stats.errors:
            print(f"errors: {stats.error_count}; the first ones:")
            for error in stats.errors[:20]:
                print(f"  {error['kind']}: {error['what']}")
        if log_errors:
            print(f"gateway log: {len(log_errors)} error lines; the first ones:")
            for line in log_errors[:5]:
                print(f"  {line[:400]}")
        failed = [name for name, ok in checks.items() if not ok]
        print("PASS" if passed else f"FAIL: {', '.join(failed)}")

        args.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out = args.results_dir / f"soak-{stamp}.json"
        png = args.results_dir / f"soak-{stamp}.png"
        title = (
            f"soak {stamp}: {args.duration:g} s at {args.rate:g} ops/s, {stats.done} operations,"
            f" {stats.error_count} errors"
        )
        plot(samples, memory, driven, png, title)
        out.write_text(
            json.dumps(
                {
                    "when": stamp,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "postgres": pg_settings,
                    "settings": {**vars(args), "results_dir": str(args.results_dir)},
                    "mix": MIX,
                    "groups": dict(GROUPS),
                    "driven_seconds": run["driven_seconds"],
                    "scheduled_not_issued": run["not_issued"],
                    "achieved_rate": achieved,
                    "cpu_cores": cores,
                    "loadavg_1min": {"min": min(load), "max": max(load), "mean": sum(load) / len(load)},
                    "scheduler_lag_max_s": max(run["lag"], default=0),
                    "outcomes": {kind: dict(counter) for kind, counter in by_kind.items()},
                    "latency_ms": {
                        kind: {
                            "p50": percentile(v, 0.5) * 1000,
                            "p99": percentile(v, 0.99) * 1000,
                            "max": max(v) * 1000,
                        }
                        for kind, v in stats.latencies.items()
                    },
                    "mcp_calls": dict(stats.mcp_calls),
                    "ledger": {
                        "charges": charges,
                        "charged_answers": stats.charged,
                        "topups": topups,
                        "topup_answers": stats.topups,
                        "pending_tracking_rows": pending,
                        "open_holds": holds,
                        "violations": [str(v) for v in violations],
                    },
                    "errors": stats.errors,
                    "error_count": stats.error_count,
                    "gateway_log_errors": log_errors[:50],
                    "memory": memory,
                    "database": database,
                    "checks": checks,
                    "passed": passed,
                    "samples": samples,
                },
                indent=2,
                default=str,
            )
        )
        print(f"results: {out}\nplot: {png}")
        return 0 if passed else 1
    finally:
        if gateway is not None:
            gateway.stop()
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
