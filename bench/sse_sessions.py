"""How many concurrent MCP sessions over the legacy SSE transport one gateway process holds.

Run on demand: `python -m bench.sse_sessions [--sessions 500 1000 2000 3000] [--mode billed]`. For
each mode (billed: every session its own funded JWT user; anonymous: no credentials, counted but not
charged: the benchmark tool is `anonymous = "free"` in bench/gateway_tools.toml)
and each N, against one fresh metered gateway (one uvicorn worker) on an embedded PostgreSQL:

    1. N clients each open `GET /sse` and keep the stream open;
    2. each does the MCP handshake (initialize, notifications/initialized) and one `tools/call` of
       the priced benchmark tool, reading every answer from its own event stream;
    3. with all N sessions still open, the gateway's resident memory (VmRSS) is read and compared
       with its RSS before the first session: memory per session = delta / N;
    4. all sessions are closed (the RSS is read again); billed: the ledger must hold exactly one
       charge per successful call, each result saying "charged"; anonymous: every call counted in
       billing.anonymous_usage (aggregated, never a row per call) and no charge; billing.verify_ledger() empty.

The open-files limit is raised to the hard limit (`ulimit -Hn`) for the client and the gateway.

The clients are a hand-rolled minimal SSE/JSON-RPC client (load generation, not product code),
run in a separate process so that the gateway's figures are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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

from mcp_types.version import LATEST_HANDSHAKE_VERSION  # noqa: E402

from api.gateway.auth import mint_token  # noqa: E402
from api.ledger import db, roles  # noqa: E402
from api.ledger import sync as ledger  # noqa: E402
from api.ops import embedded, migrate  # noqa: E402
from tests.gateway.server import SECRET, start_gateway  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def count_tracked(conn: Any, anonymous: bool) -> tuple[int, int]:
    """(charges, anonymous calls counted): anonymous calls are aggregated in billing.anonymous_usage (one row
    per day, tool and client address), never tracked one by one."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM billing.billing_transactions WHERE type = 'charge'),"
        " (SELECT coalesce(sum(calls), 0) FROM billing.anonymous_usage)"
    ).fetchone()
    return int(row[0]), int(row[1])


def batch(gateway: Any, token_file: Path, hold: Path) -> tuple[dict[str, Any], int, int]:
    """One client process: N sessions, each one call; returns (its report, RSS KiB and open fds with all open)."""
    pid = gateway.process.pid
    client = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "sse_client.py"),
            gateway.base_url.rsplit(":", 1)[1],
            str(token_file),
            str(hold),
            LATEST_HANDSHAKE_VERSION,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    line = client.stdout.readline()
    if not line:
        raise RuntimeError(f"the SSE client exited with {client.wait()} before reporting")
    report: dict[str, Any] = json.loads(line)
    during = rss_kib(pid)
    open_fds = len(os.listdir(f"/proc/{pid}/fd"))
    hold.write_text("done")
    client.wait(120)
    hold.unlink()
    return report, during, open_fds


def measure(sessions: int, url: str, workdir: Path, anonymous: bool, batches: int) -> dict[str, Any]:
    """One mode and one N on a fresh gateway: the row of the table."""
    mode = "anonymous" if anonymous else "billed"
    tokens = ["-" if anonymous else mint_token(SECRET, f"sse-user-{i}") for i in range(sessions)]
    token_file = workdir / f"tokens-{mode}-{sessions}.txt"
    token_file.write_text("\n".join(tokens))
    gateway = start_gateway(
        url,
        workdir / f"gw-{mode}-{sessions}",
        TOLLGATE_LOG_LEVEL="WARNING",
        TOLLGATE_TOOLS_CONFIG=str(ROOT / "bench" / "gateway_tools.toml"),
        TOLLGATE_POOL_MAX="10",
        # A capacity measurement: the session, stream and connection caps (docs/abuse.md) would stop it at
        # their figures, so they are off here; the header timeout stays.
        TOLLGATE_ABUSE_CONNECTIONS_MCP_SESSIONS_TOTAL="0",
        TOLLGATE_ABUSE_CONNECTIONS_MCP_SESSIONS_PER_PRINCIPAL="0",
        TOLLGATE_ABUSE_CONNECTIONS_SSE_STREAMS_PER_PRINCIPAL="0",
        TOLLGATE_ABUSE_CONNECTIONS_MAX_CONNECTIONS="0",
    )
    hold = workdir / f"hold-{mode}-{sessions}"
    try:
        pid = gateway.process.pid
        time.sleep(1)
        before = rss_kib(pid)
        fds_before = len(os.listdir(f"/proc/{pid}/fd"))
        with db.connect(url) as conn:
            charges_before, anonymous_before = count_tracked(conn, anonymous)
        reports = []
        rss_open = []
        rss_closed = []
        fds_open = []
        fds_closed = []
        for _ in range(batches):
            report, during, open_fds = batch(gateway, token_file, hold)
            reports.append(report)
            rss_open.append(during)
            fds_open.append(open_fds)
            time.sleep(2)  # the gateway notices the closed streams and drops the sessions
            rss_closed.append(rss_kib(pid))
            fds_closed.append(len(os.listdir(f"/proc/{pid}/fd")))
        with db.connect(url) as conn:
            charges, anonymous_tracked = count_tracked(conn, anonymous)
            charges -= charges_before
            anonymous_tracked -= anonymous_before
            conn.execute("ANALYZE")
            violations = len(ledger.verify_ledger(conn))
        first = reports[0]
        billing: dict[str, int] = {}
        for report in reports:
            for status, count in report["billing"].items():
                billing[status] = billing.get(status, 0) + count
        return {
            "mode": mode,
            "sessions": sessions,
            "batches": batches,
            "calls_ok": first["ok"],
            "calls_ok_all_batches": sum(r["ok"] for r in reports),
            "billing_all_batches": billing,
            "failed": sum(r["failed"] for r in reports),
            "failures": [f for r in reports for f in r["other"]][:20],
            "seconds_to_all_called": round(first["seconds"], 2),
            "seconds_per_batch": [round(r["seconds"], 2) for r in reports],
            "gateway_fds": {"before": fds_before, "with_sessions": fds_open, "after_close": fds_closed},
            "rss_before_mib": round(before / 1024, 1),
            "rss_with_sessions_mib": round(rss_open[0] / 1024, 1),
            "rss_after_close_mib": round(rss_closed[0] / 1024, 1),
            "rss_per_batch_mib": {
                "with_sessions": [round(r / 1024, 1) for r in rss_open],
                "after_close": [round(r / 1024, 1) for r in rss_closed],
            },
            "kib_per_session": round((rss_open[0] - before) / sessions, 1),
            "charges": charges,
            "anonymous_tracked": anonymous_tracked,
            "ledger_violations": violations,
            "gateway_alive": gateway.process.poll() is None,
        }
    finally:
        gateway.stop()


def passed(row: dict[str, Any]) -> bool:
    if row["failed"] or row["ledger_violations"] or not row["gateway_alive"]:
        return False
    if row["mode"] == "billed":
        calls = row["calls_ok_all_batches"]
        return bool(row["charges"] == calls and row["billing_all_batches"] == {"charged": calls})
    return bool(row["charges"] == 0 and row["anonymous_tracked"] == row["calls_ok_all_batches"])


def run(sessions: tuple[int, ...] = (500, 1000, 2000, 3000), mode: str = "both", batches: int = 2) -> dict[str, Any]:
    """Every mode ("billed", "anonymous" or "both") and N on its own embedded server; returns
    {"rows": one per mode and N, "ok": every row passed, "open_files": (soft, hard)}."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the gateway and the client
    print(f"open files limit: {soft} -> {hard} (hard limit), for the client and the gateway", flush=True)
    if hard < 2 * max(sessions) + 100:
        print(f"warning: {hard} open files may not hold {max(sessions)} sessions (raise ulimit -Hn)")
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-sse-"))
    server = embedded.throwaway_server(workdir / "pgdata")
    modes = ["billed", "anonymous"] if mode == "both" else [mode]
    try:
        url = server.get_uri()
        migrate.upgrade(url, ROOT / "db")
        roles.provision_login_roles(url)  # the gateway logs in as tollgate_gw_*, never as the owner
        if "billed" in modes:
            with db.connect(url, autocommit=False) as conn:
                for i in range(max(sessions)):
                    user_id = ledger.ensure_account(conn, f"sse-user-{i}")
                    ledger.top_up(conn, user_id, Decimal(1000), "bench", f"sse-{i}")
                conn.commit()
        rows = []
        for current in modes:
            for n in sessions:
                row = measure(n, url, workdir, current == "anonymous", batches)
                rows.append(row)
                print(json.dumps(row), flush=True)
        return {
            "rows": rows,
            "ok": all(passed(row) for row in rows),
            "open_files": [soft, hard],
            "protocol_version": LATEST_HANDSHAKE_VERSION,
        }
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"one gateway process (one uvicorn worker) per N; MCP {LATEST_HANDSHAKE_VERSION} over legacy SSE;"
        f" {os.cpu_count()} CPUs shared by client, gateway and PostgreSQL"
    )
    print(
        f"{'mode':10s} {'sessions':>8s} {'calls ok':>9s} {'failed':>7s} {'seconds':>8s} {'RSS MiB':>8s} "
        f"{'KiB/session':>12s} {'RSS after each batch closed, MiB':>32s} {'fds open/closed':>16s}"
        f" {'charges':>8s} {'tracked':>8s}"
    )
    for row in rows:
        print(
            f"{row['mode']:10s} {row['sessions']:8d} {row['calls_ok']:9d} {row['failed']:7d}"
            f" {row['seconds_to_all_called']:8.1f} {row['rss_with_sessions_mib']:8.1f}"
            f" {row['kib_per_session']:12.1f}"
            f" {' '.join(f'{r:.0f}' for r in row['rss_per_batch_mib']['after_close']):>32s}"
            f" {row['gateway_fds']['with_sessions'][0]:>8d}/{row['gateway_fds']['after_close'][-1]:<7d}"
            f" {row['charges']:8d}"
            f" {row['anonymous_tracked']:8d}" + ("" if passed(row) else "   FAILED")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[500, 1000, 2000, 3000])
    parser.add_argument(
        "--mode",
        choices=("billed", "anonymous", "both"),
        default="both",
        help="JWT users (charged), anonymous sessions (tracked, not charged), or both (default)",
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=2,
        help="N sessions this many times, one after the other, on the same gateway: does closing them free"
        " their memory? (default 2; the figures per session are the first batch's)",
    )
    args = parser.parse_args(argv)
    report = run(tuple(args.sessions), args.mode, args.batches)
    rows = report["rows"]
    print()
    print_table(rows)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = out_dir / f"sse-sessions-{stamp}.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"results: {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
