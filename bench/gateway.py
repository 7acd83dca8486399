"""Throughput and latency of metered tool calls over HTTP, against the same gateway unmetered.

Run on demand (`make bench-gateway`, or `python -m bench.gateway --help`), never in CI. In one run:

    1. a private embedded PostgreSQL 18 (fsync and synchronous_commit on), migrated by the real
       api.ops.migrate; 10,000 users funded and with limits far above what a run can spend; one API key;
    2. two gateways (`tollgate run`, one uvicorn worker each) serving the same tool
       (bench/gateway_tools.py, $0.002 a call): one metered, one with TOLLGATE_METERING=false;
    3. a separate load-generator process: 32 keep-alive connections, each request with the JWT of a
       random one of the 10,000 users, for --duration seconds, in alternating rounds: billed (JWT,
       metered: begin_request + complete_request on every call), unmetered (the same JWTs, no
       tracking, no charge), key (an API key: tracked, not charged). The load generator is `wrk`
       (bench/wrk_tokens.lua) when it is installed, else bench/loadgen.py (raw asyncio sockets);
    4. medians per mode, the ratios billed/unmetered and key/unmetered, and the CPU the gateway and
       PostgreSQL used per request; then billing.verify_ledger(), no tracking row left pending, and
       the charges written against the billed 2xx answers;
    5. a table on stdout and JSON in bench/results/gateway-<timestamp>.json.

The gateways' caches of users are warmed first (one call per user, counted exactly: the charges of
the warm-up must equal its 200 answers), as in steady state. wrk abandons the requests in flight
when its time is up (the gateway still completes and charges them), so over the wrk rounds the
charges may exceed the counted 2xx answers by at most connections x rounds.

--profile SECONDS adds one billed run (not counted) under `py-spy record` of the metered gateway
and prints where its CPU went (py-spy must be installed: pip install py-spy).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from api.gateway import apikeys  # noqa: E402
from api.gateway.auth import mint_token  # noqa: E402
from api.ledger import db, roles  # noqa: E402
from api.ledger import sync as ledger  # noqa: E402
from api.ops import embedded, migrate  # noqa: E402
from tests.gateway.server import SECRET, start_gateway  # noqa: E402

TOOL = "bench_lookup"
PRICE = Decimal("0.002")
BODY = '{"query": "constitution"}'
RESULTS_DIR = ROOT / "bench" / "results"
BILLED_TARGET = 0.70  # billed/unmetered req/s, from the gateway issue


def count_charges(conn: Any) -> int:
    row = conn.execute("SELECT count(*) FROM billing.billing_transactions WHERE type = 'charge'").fetchone()
    return int(row[0])


def seed(url: str, users: int, directory: Path) -> tuple[Path, Path]:
    """Fund the users (one transaction), mint their tokens, create an API key; return the token files."""
    tokens = []
    with db.connect(url, autocommit=False) as conn:
        for number in range(users):
            subject = f"bench-user-{number}"
            user_id = ledger.ensure_account(conn, subject)
            ledger.top_up(conn, user_id, Decimal(1_000_000), "bench", f"fund-{number}")
            ledger.update_settings(
                conn, user_id, daily_limit_usd=Decimal(100_000_000), monthly_limit_usd=Decimal(100_000_000)
            )
            tokens.append(mint_token(SECRET, subject, lifetime_seconds=86400))
        key = apikeys.generate_key()
        ledger.create_api_key(conn, "bench-key", apikeys.hash_key(key), apikeys.key_prefix(key))
        conn.commit()
    jwt_file = directory / "jwts.txt"
    jwt_file.write_text("\n".join(tokens))
    key_file = directory / "key.txt"
    key_file.write_text(key)
    return jwt_file, key_file


def load(port: str, seconds: float | str, connections: int, tokens: Path, header: str) -> dict[str, Any]:
    """bench/loadgen.py: counts every answer exactly (it finishes the requests in flight)."""
    output = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "loadgen.py"),
            "127.0.0.1",
            port,
            f"/api/tools/{TOOL}",
            str(seconds),
            str(connections),
            str(tokens),
            header,
            BODY,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(output)
    result["ok"] = sum(n for status, n in result["statuses"].items() if status.startswith("2"))
    result["non_2xx"] = result["requests"] - result["ok"]
    result["errors"] = {}
    return result


def load_wrk(port: str, seconds: float, connections: int, threads: int, tokens: Path, header: str) -> dict[str, Any]:
    """wrk with bench/wrk_tokens.lua: a C load generator, far lighter on the shared CPUs."""
    proc = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(ROOT / "bench" / "wrk_tokens.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            str(tokens),
            header,
            BODY,
            f"/api/tools/{TOOL}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    match = re.search(r"^BENCH_JSON (\{.*\})$", proc.stdout, re.M)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{proc.stdout}\n{proc.stderr}")
    raw = json.loads(match.group(1))
    errors = raw["errors"]
    requests = raw["requests"]
    return {
        "requests": requests,
        "rps": requests / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p95_ms": raw["p95_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        # wrk counts an answer with a status above 399 as a "status" error; the gateway answers 200 or >= 400.
        "ok": requests - errors["status"],
        "non_2xx": errors["status"],
        "errors": {name: n for name, n in errors.items() if name != "status" and n},
        "statuses": {"2xx": requests - errors["status"], ">=400": errors["status"]},
    }


def warm(port: str, tokens: Path) -> dict[str, Any]:
    """One call per user, so that every user exists in the gateway's cache (steady state)."""
    return load(port, "once", 16, tokens, "Authorization")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (those that have exited count as 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _CLOCK_TICKS


def postgres_pids(pgdata: Path) -> list[int]:
    """The postmaster of pgdata and its children (the backends, including the gateways' pools)."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == postmaster:
                pids.append(int(entry.name))
    return pids


def pending_tracking_rows(conn: Any) -> int:
    row = conn.execute("SELECT count(*) FROM billing.cost_tracking WHERE status = 'pending'").fetchone()
    return int(row[0])


def profile(pid: int, seconds: int, out: Path, run_load: Any, native: bool = False) -> list[tuple[str, float, float]]:
    """py-spy record the gateway while run_load() runs; return (function, self %, total %), top first."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    recorder = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds + 1),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
            *(["--native"] if native else ["--nonblocking"]),  # --native must pause the process
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    run_load()
    _, err = recorder.communicate(timeout=seconds + 60)
    if recorder.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {err}")
    self_samples: dict[str, int] = {}
    total_samples: dict[str, int] = {}
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        samples += count
        self_samples[frames[-1]] = self_samples.get(frames[-1], 0) + count
        for frame in set(frames):
            total_samples[frame] = total_samples.get(frame, 0) + count
    rows = [(f, 100 * self_samples.get(f, 0) / samples, 100 * n / samples) for f, n in total_samples.items()]
    return sorted(rows, key=lambda row: -row[1])


@dataclass
class GatewayEnv:
    """The embedded server, the seeded users and the two warmed-up gateways of a gateway benchmark."""

    url: str
    pgdata: Path
    workdir: Path
    metered: Any
    unmetered: Any
    jwts: Path
    key: Path
    pg_settings: dict[str, str]
    warm_billed: dict[str, Any]
    warm_charges: int
    ports: dict[str, str] = field(default_factory=dict)


def raise_open_files_limit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the gateways and the clients
    return soft, hard


@contextlib.contextmanager
def gateway_env(users: int = 10_000, pool_max: str = "10") -> Iterator[GatewayEnv]:
    """A private embedded PostgreSQL, `users` funded JWT users and an API key, a metered and an unmetered
    gateway, both warmed up (one call per user); everything stopped and deleted at the end."""
    raise_open_files_limit()
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-gw-"))
    pgdata = workdir / "pgdata"
    server = embedded.throwaway_server(pgdata)
    gateways = []
    try:
        url = server.get_uri()
        migrate.upgrade(url, ROOT / "db")
        roles.provision_login_roles(url)  # the gateway logs in as tollgate_gw_*, never as the owner
        for setting in os.environ.get("BENCH_PG_SETTINGS", "").split(";"):  # experiments, e.g. "synchronous_commit=off"
            if setting.strip():
                name, _, value = setting.partition("=")
                with db.connect(url) as conn:
                    conn.execute(f"ALTER SYSTEM SET {name.strip()} = '{value.strip()}'")
                    conn.execute("SELECT pg_reload_conf()")
        with db.connect(url) as conn:
            pg_settings = {
                str(name): str(value)
                for name, value in conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                    (["server_version", "fsync", "synchronous_commit", "shared_buffers"],),
                ).fetchall()
            }
        started = time.perf_counter()
        jwts, key = seed(url, users, workdir)
        print(f"seeded {users} users in {time.perf_counter() - started:.1f} s; PostgreSQL {pg_settings}", flush=True)
        env = {
            "TOLLGATE_LOG_LEVEL": "WARNING",
            "TOLLGATE_POOL_MAX": pool_max,
            "TOLLGATE_TOOLS_CONFIG": str(ROOT / "bench" / "gateway_tools.toml"),
        }
        metered = start_gateway(url, workdir / "metered", **env)
        gateways.append(metered)
        unmetered = start_gateway(url, workdir / "unmetered", **env, TOLLGATE_METERING="false")
        gateways.append(unmetered)
        ports = {"metered": metered.base_url.rsplit(":", 1)[1], "unmetered": unmetered.base_url.rsplit(":", 1)[1]}
        ports["billed"] = ports["metered"]
        with db.connect(url) as conn:
            charges_before = count_charges(conn)
        warm_billed = warm(ports["metered"], jwts)
        with db.connect(url) as conn:
            warm_charges = count_charges(conn) - charges_before
        warm(ports["unmetered"], jwts)
        print(
            f"warm-up (bench/loadgen.py, exact count): {warm_billed['ok']} billed 200 answers,"
            f" {warm_charges} charges written",
            flush=True,
        )
        yield GatewayEnv(
            url, pgdata, workdir, metered, unmetered, jwts, key, pg_settings, warm_billed, warm_charges, ports
        )
    finally:
        for gateway in gateways:
            gateway.stop()
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def run(
    duration: float = 10.0,
    rounds: int = 3,
    users: int = 10_000,
    connections: int = 32,
    pool_max: str = "10",
    loadgen: str | None = None,
    wrk_threads: int = 2,
    profile_seconds: int = 0,
    native: bool = False,
    after: Callable[[GatewayEnv], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The alternating rounds of billed / unmetered / key, the checks, and (profile_seconds) a profiled
    billed run; returns the report (what the CLI writes as JSON; "ok" says whether the checks held).
    after(env), when given, runs on the same gateways once the checks are done (bench/harness.py's
    open-loop section); its result is the report's "after"."""
    loadgen = loadgen or ("wrk" if shutil.which("wrk") else "python")
    with gateway_env(users, pool_max) as gw:
        url, pgdata, metered, jwts = gw.url, gw.pgdata, gw.metered, gw.jwts
        modes = {
            "billed": (metered, jwts, "Authorization"),
            "unmetered": (gw.unmetered, jwts, "Authorization"),
            "key": (metered, gw.key, "X-API-Key"),
        }

        def run_round(gateway: Any, tokens: Path, header: str, seconds: float = duration) -> dict[str, Any]:
            port = gateway.base_url.rsplit(":", 1)[1]
            if loadgen == "wrk":
                return load_wrk(port, seconds, connections, wrk_threads, tokens, header)
            return load(port, seconds, connections, tokens, header)

        with db.connect(url) as conn:
            charges_before = count_charges(conn)
        results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        print(f"load: {loadgen}, {connections} connections, {duration:g} s per round", flush=True)
        for number in range(rounds):
            for mode, (gateway, tokens, header) in modes.items():
                pg_pids = postgres_pids(pgdata)
                cpu_before = (cpu_seconds([gateway.process.pid]), cpu_seconds(pg_pids))
                result = run_round(gateway, tokens, header)
                gateway_cpu = cpu_seconds([gateway.process.pid]) - cpu_before[0]
                # Backends the pool opened during the round count in full (they started within it).
                postgres_cpu = cpu_seconds(sorted(set(pg_pids) | set(postgres_pids(pgdata)))) - cpu_before[1]
                result["gateway_cpu_ms_per_request"] = 1000 * gateway_cpu / max(1, result["requests"])
                result["postgres_cpu_ms_per_request"] = 1000 * postgres_cpu / max(1, result["requests"])
                result["gateway_cores"] = gateway_cpu / duration
                result["postgres_cores"] = postgres_cpu / duration
                results[mode].append(result)
                print(
                    f"round {number + 1} {mode:9s} {result['rps']:8.0f} req/s  p50 {result['p50_ms']:6.1f} ms  "
                    f"p99 {result['p99_ms']:6.1f} ms  gateway {result['gateway_cores']:.2f} cores, "
                    f"PostgreSQL {result['postgres_cores']:.2f} cores  {result['statuses']}"
                    + (f" {result['errors']}" if result["errors"] else ""),
                    flush=True,
                )
        time.sleep(1)  # let the requests wrk abandoned at its deadline finish
        with db.connect(url) as conn:
            charges = count_charges(conn) - charges_before
            pending = pending_tracking_rows(conn)
            conn.execute("ANALYZE")
            violations = ledger.verify_ledger(conn)
        billed_ok = sum(r["ok"] for r in results["billed"])
        in_flight_bound = 0 if loadgen == "python" else connections * rounds
        charges_match = billed_ok <= charges <= billed_ok + in_flight_bound and gw.warm_charges == gw.warm_billed["ok"]
        summary = {
            mode: {
                "rps": statistics.median(r["rps"] for r in mode_results),
                "p50_ms": statistics.median(r["p50_ms"] for r in mode_results),
                # wrk reports p90 and p95 too; bench/loadgen.py only p50 and p99.
                "p90_ms": statistics.median(r["p90_ms"] for r in mode_results) if loadgen == "wrk" else None,
                "p95_ms": statistics.median(r["p95_ms"] for r in mode_results) if loadgen == "wrk" else None,
                "p99_ms": statistics.median(r["p99_ms"] for r in mode_results),
                "gateway_cpu_ms_per_request": statistics.median(r["gateway_cpu_ms_per_request"] for r in mode_results),
                "postgres_cpu_ms_per_request": statistics.median(
                    r["postgres_cpu_ms_per_request"] for r in mode_results
                ),
                "non_2xx": sum(r["non_2xx"] for r in mode_results),
                "socket_errors": sum(sum(r["errors"].values()) for r in mode_results),
            }
            for mode, mode_results in results.items()
        }
        ratios = {
            "billed/unmetered": summary["billed"]["rps"] / summary["unmetered"]["rps"],
            "key/unmetered": summary["key"]["rps"] / summary["unmetered"]["rps"],
        }
        paired = [round(b["rps"] / u["rps"], 3) for b, u in zip(results["billed"], results["unmetered"], strict=True)]
        hot: list[tuple[str, float, float]] = []
        functions: list[dict[str, Any]] = []
        if profile_seconds:
            with db.connect(url) as conn:  # PL/pgSQL call counts and times during the profiled run
                conn.execute("ALTER SYSTEM SET track_functions = 'pl'")
                conn.execute("SELECT pg_reload_conf()")
                conn.execute("SELECT pg_stat_reset()")
            flame = gw.workdir / "profile.txt"
            hot = profile(
                metered.process.pid,
                profile_seconds,
                flame,
                lambda: run_round(metered, jwts, "Authorization", profile_seconds),
                native,
            )
            time.sleep(1)  # statistics are flushed at the end of a transaction, at most once a second
            with db.connect(url) as conn:
                functions = [
                    {"function": name, "calls": calls, "total_ms": float(total), "self_ms": float(self_time)}
                    for name, calls, total, self_time in conn.execute(
                        "SELECT schemaname || '.' || funcname, calls, total_time, self_time"
                        " FROM pg_stat_user_functions ORDER BY self_time DESC LIMIT 15"
                    ).fetchall()
                ]
                conn.execute("ALTER SYSTEM RESET track_functions")
                conn.execute("SELECT pg_reload_conf()")
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copy(flame, RESULTS_DIR / f"gateway-profile-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.txt")
        report: dict[str, Any] = {
            "when": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "postgres": gw.pg_settings,
            "settings": {
                "duration": duration,
                "rounds": rounds,
                "users": users,
                "connections": connections,
                "pool_max": pool_max,
                "loadgen": loadgen,
                "wrk_threads": wrk_threads,
                "profile": profile_seconds,
                "native": native,
            },
            "rounds": results,
            "summary": summary,
            "ratios": ratios,
            "target_billed_unmetered": BILLED_TARGET,
            "paired_billed_unmetered": paired,
            "charges": charges,
            "billed_2xx": billed_ok,
            "in_flight_bound": in_flight_bound,
            "charges_match": charges_match,
            "warm_up": {"billed_200": gw.warm_billed["ok"], "charges": gw.warm_charges},
            "pending_tracking_rows": pending,
            "violations": len(violations),
            "profile_top": hot[:40],
            "profile_plpgsql_functions": functions,
            "ok": not violations and charges_match and not pending,
        }
        if after is not None:
            report["after"] = after(gw)
        return report


def print_report(report: dict[str, Any]) -> None:
    settings = report["settings"]
    summary = report["summary"]
    print()
    print(
        f"{settings['loadgen']}, {settings['connections']} connections, {settings['rounds']} x"
        f" {settings['duration']:g} s, {settings['users']} users, pool {settings['pool_max']};"
        f" {os.cpu_count()} CPUs shared by load, gateway and PostgreSQL"
    )
    print(
        f"{'mode':10s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'non-2xx':>8s}"
        f" {'gw cpu ms':>10s} {'pg cpu ms':>10s}"
    )
    for mode, row in summary.items():
        print(
            f"{mode:10s} {row['rps']:8.0f} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {row['non_2xx']:8d}"
            f" {row['gateway_cpu_ms_per_request']:10.3f} {row['postgres_cpu_ms_per_request']:10.3f}"
        )
    for name, value in report["ratios"].items():
        print(
            f"{name}: {value:.2f}"
            + (
                f"   (target >= {BILLED_TARGET:.2f}; per round {report['paired_billed_unmetered']})"
                if name.startswith("billed")
                else ""
            )
        )
    in_flight_bound = report["in_flight_bound"]
    print(
        f"billed rounds: {report['charges']} charges written, {report['billed_2xx']} billed 2xx answers counted"
        + (f" (+ at most {in_flight_bound} abandoned in flight by wrk)" if in_flight_bound else "")
        + f"; warm-up: {report['warm_up']['charges']} charges for {report['warm_up']['billed_200']} 200 answers;"
        f" tracking rows left pending: {report['pending_tracking_rows']};"
        f" verify_ledger: {'clean' if not report['violations'] else str(report['violations']) + ' violations'}"
        + ("" if report["charges_match"] else "   CHARGES DO NOT MATCH")
    )
    if report["profile_top"]:
        print("\nmetered gateway under billed load (py-spy): self % / total %")
        for frame, self_pct, total_pct in report["profile_top"][:25]:
            print(f"  {self_pct:5.1f} {total_pct:5.1f}  {frame}")
    if report["profile_plpgsql_functions"]:
        print("\nPL/pgSQL functions during the profiled run (track_functions = pl): calls, ms per call self / total")
        for row in report["profile_plpgsql_functions"]:
            calls = max(1, row["calls"])
            print(
                f"  {row['calls']:8d}  {row['self_ms'] / calls:7.3f} {row['total_ms'] / calls:7.3f}  {row['function']}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating (default 3)")
    parser.add_argument("--users", type=int, default=10_000, help="distinct JWT users (default 10000)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--pool-max", default="10", help="TOLLGATE_POOL_MAX of the gateways (default 10)")
    parser.add_argument(
        "--loadgen",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
        help="wrk (default when installed) or bench/loadgen.py",
    )
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk -t (default 2)")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="SECONDS", help="py-spy the metered gateway for an extra billed run"
    )
    parser.add_argument("--native", action="store_true", help="--profile with C frames too (py-spy --native)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1:
        parser.error("--duration must be positive and --rounds at least 1")
    report = run(
        duration=args.duration,
        rounds=args.rounds,
        users=args.users,
        connections=args.connections,
        pool_max=args.pool_max,
        loadgen=args.loadgen,
        wrk_threads=args.wrk_threads,
        profile_seconds=args.profile,
        native=args.native,
    )
    print_report(report)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"gateway-{report['when']}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"results: {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
