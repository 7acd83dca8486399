"""The HTTP-level attacks of issue 14, replayed against a real gateway of any Tollgate checkout.

Run on demand, never in CI: ``python -m bench.attacks [--root DIR]``. DIR (default: this checkout) is a
Tollgate checkout with its own ``.venv``; the gateway is DIR's own code with DIR's default configuration
(its ``tollgate.toml``, no ``[abuse]`` knob set), so the same command measures the code before the abuse
controls and after them. This script only needs DIR's command line (``tollgate migrate``, ``tollgate run``)
and ``api.ledger.roles``, which every revision since the role split has, so it does not depend on knobs the
older revision lacks.

1. A throwaway embedded PostgreSQL (this checkout's ``api.ops.embedded``), migrated by DIR's
   ``tollgate migrate`` as the owner; DIR's ``api.ledger.roles`` makes the gateway's three logins.
2. ``DIR/.venv/bin/tollgate run --no-migrate`` (cwd DIR) over those logins, on a loopback port, serving
   DIR/tollgate.toml: the priced tool ``lookup_law`` (0.02 USD a call) of the example upstream stdio server.
3. The attacks, one after another (the 404s first, on the fresh process, for a clean RSS figure), each
   bounded in count and time, from 127.0.0.1:

   - **anonymous calls**: 2,000 MCP ``tools/call`` of lookup_law without credentials over one
     streamable-HTTP session (the MCP SDK client), 16 in flight: served (not ``isError``) and refused,
     elapsed, and the rows (and bytes) added to billing.cost_tracking and billing.anonymous_usage;
   - **session opens**: 1,500 ``POST /mcp`` initialize without a session id, 16 in flight: how many got an
     ``mcp-session-id``, the refusals by status, the gateway's RSS growth; then each session is probed (a
     ``ping``: still open?) and closed (``DELETE /mcp``);
   - **half-sent requests**: 300 sockets that send a request line and one header, then one more header
     byte every 5 s: how many the gateway still holds open after 30 s;
   - **random 404s**: 5,000 requests to random paths with random methods, 16 connections: the size of the
     ``/metrics`` body and the gateway's RSS before and after; whether ``/metrics`` answers without
     credentials (else it is read with an administrator's JWT) and whether it shows ``tollgate_charged_usd``.

   A paying user's latency during the anonymous flood is bench/abuse.py's figure, not repeated here.
4. A markdown table (attack | figure) on stdout; JSON in bench/results/attacks-<DIR name>-<UTC>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import psutil
import psycopg
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from api.gateway.auth import mint_token  # noqa: E402
from api.ops import embedded  # noqa: E402
from bench.gateway import raise_open_files_limit  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
SECRET = "attacks-secret-" + "x" * 60
ADMIN_SCOPE = "tollgate:admin"  # the default TOLLGATE_ADMIN_SCOPE of every revision
TOOL = "lookup_law"
TOOL_ARGUMENTS = {"query": "constitution"}
CONCURRENCY = 16
ANONYMOUS_CALLS = 2_000
SESSION_OPENS = 1_500
HALF_SENT = 300
HALF_SENT_SECONDS = 30.0
HALF_SENT_INTERVAL = 5.0
RANDOM_404S = 5_000
ATTACK_TIMEOUT = 300.0  # no attack may take longer than this
# Methods httptools (llhttp) parses, so that the request reaches the application (and its metrics); and a
# few it does not, which uvicorn answers 400 itself.
KNOWN_METHODS = (
    "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "COPY", "LOCK", "MKCOL", "MOVE",
    "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "NOTIFY",
    "SUBSCRIBE", "UNSUBSCRIBE", "PURGE", "MKCALENDAR", "LINK", "UNLINK",
)  # fmt: skip
MADE_UP_METHODS = ("FOO", "BREW", "XYZZY")


@dataclass
class Target:
    """A gateway of the checkout under test, and what the attacks need to reach and inspect it."""

    root: Path
    owner_url: str
    base_url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def admin_token(self) -> str:
        return mint_token(SECRET, "attacks-admin", admin_scope=ADMIN_SCOPE)


def target_python(root: Path) -> Path:
    return root / ".venv" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environment() -> dict[str, str]:
    """The inherited environment without Tollgate settings or another checkout's Python path."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("TOLLGATE_") and name not in ("PYTHONPATH", "VIRTUAL_ENV")
    }


def revision(root: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


PROVISION = """
import json, sys
from api.ledger import roles
owner = sys.argv[1]
problems = roles.provision_login_roles(owner)
if problems:
    sys.exit("\\n".join(problems))
print(json.dumps({a.url_variable: roles.derive_login_url(owner, a) for a in roles.Authority}))
"""


@contextlib.contextmanager
def gateway_of(root: Path) -> Iterator[Target]:
    """A throwaway PostgreSQL migrated by `root`'s code and a gateway of `root`; both gone at the end."""
    raise_open_files_limit()
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-attacks-"))
    server = embedded.throwaway_server(workdir / "pgdata")
    process: subprocess.Popen[bytes] | None = None
    try:
        owner_url = server.get_uri()
        environment = clean_environment()
        subprocess.run(
            [str(root / ".venv" / "bin" / "tollgate"), "migrate"],
            cwd=root,
            env={**environment, "TOLLGATE_DATABASE_URL": owner_url},
            check=True,
            capture_output=True,
        )
        logins = json.loads(
            subprocess.run(
                [str(target_python(root)), "-c", PROVISION, owner_url],
                cwd=root,
                env=environment,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        port = free_port()
        data_dir = workdir / "data"
        data_dir.mkdir()
        log_path = workdir / "gateway.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(root / ".venv" / "bin" / "tollgate"), "run", "--no-migrate"],
                cwd=root,
                env={
                    **environment,
                    **logins,
                    "TOLLGATE_DATA_DIR": str(data_dir),
                    "TOLLGATE_JWT_SECRET": SECRET,
                    "TOLLGATE_PORT": str(port),
                    "TOLLGATE_TOOLS_CONFIG": str(root / "tollgate.toml"),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        target = Target(root, owner_url, f"http://127.0.0.1:{port}", port, process, log_path)
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{target.base_url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not become healthy:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield target
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


# --- what the ledger holds -------------------------------------------------------------------------------


def tracking_figures(owner_url: str) -> dict[str, int | None]:
    """Rows and bytes (table + indexes + TOAST) of the two tables anonymous calls may write; None: no table."""
    figures: dict[str, int | None] = {}
    with psycopg.connect(owner_url, autocommit=True) as conn:
        for table in ("billing.cost_tracking", "billing.anonymous_usage"):
            name = table.split(".")[1]
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
            if not (exists and exists[0]):
                figures[f"{name}_rows"] = figures[f"{name}_bytes"] = None
                continue
            row = conn.execute(f"SELECT count(*), pg_total_relation_size('{table}') FROM {table}").fetchone()
            assert row is not None
            figures[f"{name}_rows"], figures[f"{name}_bytes"] = int(row[0]), int(row[1])
        exists = conn.execute("SELECT to_regclass('billing.anonymous_usage') IS NOT NULL").fetchone()
        if exists and exists[0]:
            row = conn.execute("SELECT coalesce(sum(calls), 0) FROM billing.anonymous_usage").fetchone()
            figures["anonymous_usage_calls"] = int(row[0]) if row else 0
    return figures


def difference(before: dict[str, int | None], after: dict[str, int | None]) -> dict[str, int | None]:
    added: dict[str, int | None] = {}
    for name, value in after.items():
        previous = before.get(name)
        added[name] = None if value is None or previous is None else value - previous
    return added


# --- 1. anonymous tool calls ------------------------------------------------------------------------------


def refusal_of(result: types.CallToolResult) -> str:
    """The error code of a refused call (structured, when the gateway gives one), else its first words."""
    structured = result.structured_content or {}
    error = structured.get("error") if isinstance(structured, dict) else None
    if isinstance(error, dict) and error.get("code"):
        return str(error["code"])
    text = " ".join(block.text for block in result.content if isinstance(block, types.TextContent))
    return text[:60] or "isError"


async def anonymous_calls(target: Target) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    in_flight = asyncio.Semaphore(CONCURRENCY)

    async def call(session: ClientSession) -> None:
        async with in_flight:
            try:
                result = await session.call_tool(TOOL, TOOL_ARGUMENTS)
            except Exception as error:  # a protocol error is a refusal too: counted by its kind
                outcomes[f"error: {type(error).__name__}: {str(error)[:60]}"] += 1
                return
            outcomes["served" if not result.is_error else f"refused: {refusal_of(result)}"] += 1

    before = tracking_figures(target.owner_url)
    async with (
        httpx2.AsyncClient(timeout=60) as http,
        streamable_http_client(f"{target.base_url}/mcp", http_client=http) as streams,
        ClientSession(streams[0], streams[1]) as session,
    ):
        await session.initialize()
        started = time.perf_counter()
        async with asyncio.timeout(ATTACK_TIMEOUT):
            await asyncio.gather(*(call(session) for _ in range(ANONYMOUS_CALLS)))
        elapsed = time.perf_counter() - started
    after = tracking_figures(target.owner_url)
    served = outcomes.pop("served", 0)
    return {
        "tool": TOOL,
        "calls": ANONYMOUS_CALLS,
        "served": served,
        "refused": ANONYMOUS_CALLS - served,
        "refusals": dict(outcomes),
        "elapsed_s": round(elapsed, 2),
        "calls_per_s": round(ANONYMOUS_CALLS / elapsed, 1),
        "ledger_before": before,
        "ledger_added": difference(before, after),
    }


# --- 2. session opens -------------------------------------------------------------------------------------

# The version an initialize answer without one is taken to have negotiated (the SDK's own fallback).
DEFAULT_VERSION = types.DEFAULT_NEGOTIATED_VERSION
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def initialize_body() -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": types.LATEST_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bench-attacks", "version": "0"},
        },
    }


async def session_opens(target: Target) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    probes: Counter[str] = Counter()
    sessions: list[tuple[str, str]] = []  # (session id, the protocol version the server negotiated)
    in_flight = asyncio.Semaphore(CONCURRENCY)
    url = f"{target.base_url}/mcp"
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)

    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def open_one() -> None:
            async with in_flight:
                try:
                    answer = await client.post(url, json=initialize_body(), headers=MCP_HEADERS)
                except httpx.HTTPError as error:
                    statuses[type(error).__name__] += 1
                    return
                session_id = answer.headers.get("mcp-session-id")
                if answer.status_code == 200 and session_id:
                    negotiated = re.search(r'"protocolVersion":\s*"([^"]+)"', answer.text)
                    sessions.append((session_id, negotiated.group(1) if negotiated else DEFAULT_VERSION))
                else:
                    statuses[str(answer.status_code)] += 1

        async def probe(session_id: str, version: str) -> None:
            """A ping in the session: 200 while the gateway keeps it, 404 once it is gone."""
            async with in_flight:
                ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
                headers = {**MCP_HEADERS, "mcp-session-id": session_id, "mcp-protocol-version": version}
                try:
                    probes[str((await client.post(url, json=ping, headers=headers)).status_code)] += 1
                except httpx.HTTPError as error:
                    probes[type(error).__name__] += 1

        async def close(session_id: str, version: str) -> int:
            async with in_flight:
                headers = {"mcp-session-id": session_id, "mcp-protocol-version": version}
                try:
                    return (await client.delete(url, headers=headers)).status_code
                except httpx.HTTPError:
                    return 0

        rss_before = rss_bytes(target.process.pid)
        started = time.perf_counter()
        async with asyncio.timeout(ATTACK_TIMEOUT):
            await asyncio.gather(*(open_one() for _ in range(SESSION_OPENS)))
        elapsed = time.perf_counter() - started
        rss_open = rss_bytes(target.process.pid)
        async with asyncio.timeout(ATTACK_TIMEOUT):
            await asyncio.gather(*(probe(*s) for s in sessions))
            closed = Counter(str(status) for status in await asyncio.gather(*(close(*s) for s in sessions)))
    return {
        "opens": SESSION_OPENS,
        "sessions": len(sessions),
        "refused": SESSION_OPENS - len(sessions),
        "refusals_by_status": dict(statuses),
        "elapsed_s": round(elapsed, 2),
        "rss_growth_bytes": rss_open - rss_before,
        "still_open_after": probes.get("200", 0),
        "probes_by_status": dict(probes),
        "closed_by_delete": dict(closed),
    }


# --- 3. half-sent requests --------------------------------------------------------------------------------


async def half_sent_requests(target: Target) -> dict[str, Any]:
    """Each socket sends a request line and a Host header, then one byte of another header every 5 s."""
    head = b"POST /api/billing/balance HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    trickle = b"X-Slow: " + b"a" * 64
    closed_after: list[float] = []
    answers: Counter[str] = Counter()
    started = time.monotonic()
    deadline = started + HALF_SENT_SECONDS

    async def hold(writer_reader: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
        """True when the socket is still open at the deadline."""
        reader, writer = writer_reader
        sent = 0
        try:
            writer.write(head)
            await writer.drain()
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    data = await asyncio.wait_for(reader.read(4096), timeout=min(HALF_SENT_INTERVAL, remaining))
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        break
                    writer.write(trickle[sent % len(trickle) : sent % len(trickle) + 1])
                    sent += 1
                    await writer.drain()
                    continue
                answers[data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed without an answer"] += 1
                closed_after.append(time.monotonic() - started)
                return False
            return True
        except (ConnectionError, OSError):
            answers["reset"] += 1
            closed_after.append(time.monotonic() - started)
            return False
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.open_connection("127.0.0.1", target.port)
        except OSError:
            return None

    connections = await asyncio.gather(*(connect() for _ in range(HALF_SENT)))
    opened = [c for c in connections if c is not None]
    async with asyncio.timeout(HALF_SENT_SECONDS + 30):
        held = await asyncio.gather(*(hold(c) for c in opened))
    closed_after.sort()
    return {
        "sockets": HALF_SENT,
        "connected": len(opened),
        "still_open_after_s": HALF_SENT_SECONDS,
        "still_open": sum(held),
        "closed_by_gateway": len(closed_after),
        "answers": dict(answers),
        "median_closed_after_s": round(closed_after[len(closed_after) // 2], 1) if closed_after else None,
    }


# --- 4. random 404s and /metrics --------------------------------------------------------------------------


def read_metrics(target: Target) -> dict[str, Any]:
    """/metrics without credentials; when refused, with an administrator's JWT."""
    public = httpx.get(f"{target.base_url}/metrics", timeout=30)
    answer = public
    if public.status_code != 200:
        headers = {"Authorization": f"Bearer {target.admin_token()}"}
        answer = httpx.get(f"{target.base_url}/metrics", headers=headers, timeout=30)
    body = answer.text if answer.status_code == 200 else ""
    return {
        "public_status": public.status_code,
        "public": public.status_code == 200,
        "read_as": "anonymous" if public.status_code == 200 else f"admin JWT ({answer.status_code})",
        "bytes": len(answer.content) if answer.status_code == 200 else None,
        "series": sum(1 for line in body.splitlines() if line and not line.startswith("#")),
        "shows_tollgate_charged_usd": "tollgate_charged_usd" in body,
        "revenue_public": public.status_code == 200 and "tollgate_charged_usd" in public.text,
    }


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


async def random_404s(target: Target) -> dict[str, Any]:
    rng = random.Random(14)
    statuses: Counter[str] = Counter()
    metrics_before = read_metrics(target)
    rss_before = rss_bytes(target.process.pid)
    in_flight = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)

    def request() -> tuple[str, str]:
        methods = MADE_UP_METHODS if rng.random() < 0.1 else KNOWN_METHODS
        path = "/" + "/".join("".join(rng.choices(string.ascii_lowercase + string.digits, k=8)) for _ in range(2))
        return rng.choice(methods), path

    async with httpx.AsyncClient(base_url=target.base_url, timeout=30, limits=limits) as client:

        async def send(method: str, path: str) -> None:
            async with in_flight:
                try:
                    statuses[str((await client.request(method, path)).status_code)] += 1
                except httpx.HTTPError as error:
                    statuses[type(error).__name__] += 1

        started = time.perf_counter()
        async with asyncio.timeout(ATTACK_TIMEOUT):
            await asyncio.gather(*(send(*request()) for _ in range(RANDOM_404S)))
        elapsed = time.perf_counter() - started
    metrics_after = read_metrics(target)
    rss_after = rss_bytes(target.process.pid)
    return {
        "requests": RANDOM_404S,
        "statuses": dict(statuses),
        "elapsed_s": round(elapsed, 2),
        "metrics_before": metrics_before,
        "metrics_after": metrics_after,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_growth_bytes": rss_after - rss_before,
    }


# --- the run ----------------------------------------------------------------------------------------------


def size(n: int | None) -> str:
    if n is None:
        return "n/a"
    if abs(n) >= 1_000_000:
        return f"{n / 1_000_000:.1f} MB"
    return f"{n / 1000:.0f} kB"


def counts(by_kind: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in by_kind.items()) or "none"


def table(results: dict[str, Any]) -> str:
    calls, opens = results["anonymous_calls"], results["session_opens"]
    half, flood = results["half_sent"], results["random_404s"]
    added = calls["ledger_added"]
    anonymous = (
        "no such table"
        if added["anonymous_usage_rows"] is None
        else f"anonymous_usage +{added['anonymous_usage_rows']} rows ({added.get('anonymous_usage_calls')} calls)"
    )
    before, after = flood["metrics_before"], flood["metrics_after"]
    rows = [
        (
            f"{calls['calls']:,} anonymous calls of {calls['tool']} (0.02 USD), one MCP session",
            f"{calls['served']} served, {calls['refused']} refused ({counts(calls['refusals'])})"
            f" in {calls['elapsed_s']} s;"
            f" cost_tracking +{added['cost_tracking_rows']} rows (+{size(added['cost_tracking_bytes'])}); {anonymous}",
        ),
        (
            f"{opens['opens']:,} anonymous streamable-HTTP session opens",
            f"{opens['sessions']} got a session, {opens['refused']} refused ({counts(opens['refusals_by_status'])})"
            f" in {opens['elapsed_s']} s, RSS +{size(opens['rss_growth_bytes'])};"
            f" {opens['still_open_after']} still open after the flood (ping:"
            f" {counts(opens['probes_by_status'])}), then closed by DELETE",
        ),
        (
            f"{half['sockets']} half-sent requests, a byte every {HALF_SENT_INTERVAL:.0f} s",
            f"{half['still_open']} of {half['connected']} still open after {half['still_open_after_s']:.0f} s"
            + (
                f" (closed after {half['median_closed_after_s']} s median: {counts(half['answers'])})"
                if half["answers"]
                else ""
            ),
        ),
        (
            f"{flood['requests']:,} random 404 paths and methods ({counts(flood['statuses'])})",
            f"/metrics {size(before['bytes'])} -> {size(after['bytes'])} ({before['series']} -> {after['series']}"
            f" series), RSS {size(flood['rss_before_bytes'])} -> {size(flood['rss_after_bytes'])};"
            f" /metrics public: {'yes' if after['public'] else 'no'}"
            f" ({after['public_status']}), revenue (tollgate_charged_usd) public:"
            f" {'yes' if after['revenue_public'] else 'no'}",
        ),
    ]
    lines = ["| attack | figure |", "| --- | --- |"]
    lines += [f"| {attack} | {figure} |" for attack, figure in rows]
    return "\n".join(lines)


async def attack(target: Target) -> dict[str, Any]:
    results: dict[str, Any] = {}
    # The 404s first, on a fresh process: the memory the other attacks allocate and free (1,500 sessions) would
    # otherwise be reused by the new metric series and hide their growth.
    for name, step in (
        ("random_404s", random_404s),
        ("anonymous_calls", anonymous_calls),
        ("session_opens", session_opens),
        ("half_sent", half_sent_requests),
    ):
        print(f"{name} ...", flush=True)
        results[name] = await step(target)
        print(f"  {json.dumps(results[name])}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=ROOT, help="a Tollgate checkout with its .venv")
    args = parser.parse_args()
    root: Path = args.root.resolve()
    if not (root / ".venv" / "bin" / "tollgate").exists():
        parser.error(f"{root}/.venv/bin/tollgate not found: run `make .venv` there first")
    started = dt.datetime.now(dt.UTC)
    with gateway_of(root) as target:
        results = asyncio.run(attack(target))
        gateway_alive = target.process.poll() is None
    report = {
        "root": str(root),
        "revision": revision(root),
        "started_utc": started.isoformat(timespec="seconds"),
        "tools_config": str(root / "tollgate.toml"),
        "gateway_alive_at_end": gateway_alive,
        "cpus": os.cpu_count(),
        **results,
    }
    print()
    print(f"{root.name} ({report['revision']}), {report['started_utc']}")
    print(table(results))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"attacks-{root.name}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
