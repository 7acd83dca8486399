"""How many concurrent MCP sessions over the legacy SSE transport one gateway process holds.

Run on demand: `python -m bench.sse_sessions [--sessions 500 1000 2000 3000]`. For each N, against
one fresh metered gateway (one uvicorn worker) on an embedded PostgreSQL:

    1. N clients each open `GET /sse` (each as its own funded JWT user) and keep the stream open;
    2. each does the MCP handshake (initialize, notifications/initialized) and one `tools/call` of
       the priced benchmark tool, reading every answer from its own event stream;
    3. with all N sessions still open, the gateway's resident memory (VmRSS) is read and compared
       with its RSS before the first session: memory per session = delta / N;
    4. all sessions are closed; the ledger must hold exactly one charge per successful call.

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

from api import db, embedded, ledger, migrate  # noqa: E402
from api.auth import mint_token  # noqa: E402
from tests.gateway.server import SECRET, start_gateway  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def count_charges(conn: Any) -> int:
    row = conn.execute("SELECT count(*) FROM billing.billing_transactions WHERE type = 'charge'").fetchone()
    return int(row[0])


def run(sessions: int, url: str, workdir: Path) -> dict[str, Any]:
    tokens = [mint_token(SECRET, f"sse-user-{i}") for i in range(sessions)]
    token_file = workdir / f"tokens-{sessions}.txt"
    token_file.write_text("\n".join(tokens))
    gateway = start_gateway(
        url,
        workdir / f"gw-{sessions}",
        TOLLGATE_LOG_LEVEL="WARNING",
        TOLLGATE_TOOLS_CONFIG=str(ROOT / "bench" / "gateway_tools.toml"),
        TOLLGATE_POOL_MAX="10",
    )
    hold = workdir / f"hold-{sessions}"
    try:
        pid = gateway.process.pid
        time.sleep(1)
        before = rss_kib(pid)
        with db.connect(url) as conn:
            charges_before = count_charges(conn)
        client = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "sse_client.py"),
                gateway.base_url.rsplit(":", 1)[1],
                str(token_file),
                str(hold),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None
        report = json.loads(client.stdout.readline())
        during = rss_kib(pid)
        hold.write_text("done")
        client.wait(120)
        with db.connect(url) as conn:
            charges = count_charges(conn) - charges_before
            violations = len(ledger.verify_ledger(conn))
        return {
            "sessions": sessions,
            "calls_ok": report["ok"],
            "failed": report["failed"],
            "failures": report["other"],
            "seconds_to_all_called": round(report["seconds"], 2),
            "rss_before_mib": round(before / 1024, 1),
            "rss_with_sessions_mib": round(during / 1024, 1),
            "kib_per_session": round((during - before) / sessions, 1),
            "charges": charges,
            "ledger_violations": violations,
            "gateway_alive": gateway.process.poll() is None,
        }
    finally:
        gateway.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[500, 1000, 2000, 3000])
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the gateway and the client
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-sse-"))
    server = embedded.throwaway_server(workdir / "pgdata")
    try:
        url = server.get_uri()
        migrate.upgrade(url, ROOT / "db")
        with db.connect(url, autocommit=False) as conn:
            for i in range(max(args.sessions)):
                user_id = ledger.ensure_account(conn, f"sse-user-{i}")
                ledger.top_up(conn, user_id, Decimal(1000), "bench", f"sse-{i}")
            conn.commit()
        rows = []
        for sessions in args.sessions:
            row = run(sessions, url, workdir)
            rows.append(row)
            print(json.dumps(row), flush=True)
        print()
        print(
            f"{'sessions':>8s} {'calls ok':>9s} {'failed':>7s} {'seconds':>8s} {'RSS MiB':>8s} "
            f"{'KiB/session':>12s} {'charges':>8s}"
        )
        for row in rows:
            print(
                f"{row['sessions']:8d} {row['calls_ok']:9d} {row['failed']:7d} {row['seconds_to_all_called']:8.1f} "
                f"{row['rss_with_sessions_mib']:8.1f} {row['kib_per_session']:12.1f} {row['charges']:8d}"
            )
        out_dir = ROOT / "bench" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        (out_dir / f"sse-sessions-{stamp}.json").write_text(json.dumps(rows, indent=2))
        return 0 if all(r["failed"] == 0 and r["charges"] == r["calls_ok"] for r in rows) else 1
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
        os.environ.pop("_", None)


if __name__ == "__main__":
    sys.exit(main())
