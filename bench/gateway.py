"""Throughput and latency of metered tool calls over HTTP, against the same gateway unmetered.

Run on demand (`make bench-gateway`, or `python -m bench.gateway --help`), never in CI. In one run:

    1. a private embedded PostgreSQL 18 (fsync and synchronous_commit on), migrated by the real
       api.migrate; 10,000 users funded and with limits far above what a run can spend; one API key;
    2. two gateways (`tollgate run`, one uvicorn worker each) serving the same tool
       (bench/gateway_tools.py, $0.002 a call): one metered, one with TOLLGATE_METERING=false;
    3. a separate load-generator process (bench/loadgen.py): 32 keep-alive connections, each request
       with the JWT of a random one of the 10,000 users, for --duration seconds, in alternating
       rounds: billed (JWT, metered: begin_request + complete_request on every call), unmetered (the
       same JWTs, no tracking, no charge), key (an API key: tracked, not charged);
    4. medians per mode and the ratios billed/unmetered and key/unmetered; then billing.verify_ledger()
       and a count of charges against the billed 2xx answers;
    5. a table on stdout and JSON in bench/results/gateway-<timestamp>.json.

The gateways' caches of users are warmed first (one call per user), as in steady state.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from api import apikeys, db, embedded, ledger, migrate  # noqa: E402
from api.auth import mint_token  # noqa: E402
from tests.gateway.server import SECRET, start_gateway  # noqa: E402

TOOL = "bench_lookup"
PRICE = Decimal("0.002")
BODY = '{"query": "constitution"}'
RESULTS_DIR = ROOT / "bench" / "results"


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
    return result


def warm(port: str, tokens: Path) -> None:
    """One call per user, so that every user exists in the gateway's cache (steady state)."""
    load(port, "once", 16, tokens, "Authorization")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating (default 3)")
    parser.add_argument("--users", type=int, default=10_000, help="distinct JWT users (default 10000)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--pool-max", default="10", help="TOLLGATE_POOL_MAX of the gateways (default 10)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-gw-"))
    server = embedded.throwaway_server(workdir / "pgdata")
    gateways = []
    try:
        url = server.get_uri()
        migrate.upgrade(url, ROOT / "db")
        for setting in os.environ.get("BENCH_PG_SETTINGS", "").split(";"):  # experiments, e.g. "synchronous_commit=off"
            if setting.strip():
                name, _, value = setting.partition("=")
                with db.connect(url) as conn:
                    conn.execute(f"ALTER SYSTEM SET {name.strip()} = '{value.strip()}'")
                    conn.execute("SELECT pg_reload_conf()")
        started = time.perf_counter()
        jwts, key = seed(url, args.users, workdir)
        print(f"seeded {args.users} users in {time.perf_counter() - started:.1f} s", flush=True)
        env = {
            "TOLLGATE_LOG_LEVEL": "WARNING",
            "TOLLGATE_POOL_MAX": args.pool_max,
            "TOLLGATE_TOOLS_CONFIG": str(ROOT / "bench" / "gateway_tools.toml"),
        }
        metered = start_gateway(url, workdir / "metered", **env)
        gateways.append(metered)
        unmetered = start_gateway(url, workdir / "unmetered", **env, TOLLGATE_METERING="false")
        gateways.append(unmetered)
        ports = {"metered": metered.base_url.rsplit(":", 1)[1], "unmetered": unmetered.base_url.rsplit(":", 1)[1]}
        warm(ports["metered"], jwts)
        warm(ports["unmetered"], jwts)
        modes = {
            "billed": (ports["metered"], jwts, "Authorization"),
            "unmetered": (ports["unmetered"], jwts, "Authorization"),
            "key": (ports["metered"], key, "X-API-Key"),
        }
        with db.connect(url) as conn:
            charges_before = count_charges(conn)
        rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for number in range(args.rounds):
            for mode, (port, tokens, header) in modes.items():
                result = load(port, args.duration, args.connections, tokens, header)
                rounds[mode].append(result)
                print(
                    f"round {number + 1} {mode:9s} {result['rps']:8.0f} req/s  p50 {result['p50_ms']:6.1f} ms  "
                    f"p99 {result['p99_ms']:6.1f} ms  {result['statuses']}",
                    flush=True,
                )
        with db.connect(url) as conn:
            charges = count_charges(conn) - charges_before
            violations = ledger.verify_ledger(conn)
        billed_ok = sum(r["statuses"].get("200", 0) for r in rounds["billed"])
        summary = {
            mode: {
                "rps": statistics.median(r["rps"] for r in results),
                "p50_ms": statistics.median(r["p50_ms"] for r in results),
                "p99_ms": statistics.median(r["p99_ms"] for r in results),
                "non_2xx": sum(n for r in results for s, n in r["statuses"].items() if s != "200"),
            }
            for mode, results in rounds.items()
        }
        ratios = {
            "billed/unmetered": summary["billed"]["rps"] / summary["unmetered"]["rps"],
            "key/unmetered": summary["key"]["rps"] / summary["unmetered"]["rps"],
        }
        print()
        print(f"{'mode':10s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'non-2xx':>8s}")
        for mode, row in summary.items():
            print(f"{mode:10s} {row['rps']:8.0f} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {row['non_2xx']:8d}")
        for name, value in ratios.items():
            print(f"{name}: {value:.2f}" + ("   (target >= 0.70)" if name.startswith("billed") else ""))
        print(
            f"charges written: {charges}; billed 200 answers: {billed_ok}; verify_ledger: "
            f"{'clean' if not violations else f'{len(violations)} violations'}"
        )
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out = RESULTS_DIR / f"gateway-{stamp}.json"
        out.write_text(
            json.dumps(
                {
                    "when": stamp,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "settings": vars(args),
                    "rounds": rounds,
                    "summary": summary,
                    "ratios": ratios,
                    "charges": charges,
                    "billed_200": billed_ok,
                    "violations": len(violations),
                },
                indent=2,
            )
        )
        print(f"results: {out}")
        return 0 if not violations and charges == billed_ok else 1
    finally:
        for gateway in gateways:
            gateway.stop()
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
