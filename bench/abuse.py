"""What the abuse controls cost, and what they buy (issue 14). Run on demand: `make bench-abuse`.

In one run, on a private embedded PostgreSQL with `--users` funded JWT users:

1. **Cost.** Two metered gateways serve the same priced tool: ``on`` with every control on
   (TOLLGATE_ABUSE_ENABLED=true, the per-IP and per-user tool-call limits raised so that none fires under
   the load: every check still runs, none refuses) and ``off`` (TOLLGATE_ABUSE_ENABLED=false). Alternating
   rounds of billed calls (bench/loadgen.py, 32 keep-alive connections, random users); the figure is the
   median req/s of ``on`` over ``off``. Target: >= 0.95.
2. **Flood.** A gateway with the *default* controls, and the same with the controls off (the "before"). A
   paying user (127.0.0.1) makes a billed call every 1/`--paced-rate` seconds; its p50 is measured quiet,
   then while an anonymous MCP client from another address (127.0.0.2) floods the same priced tool
   open-loop with `tools/call` at `--flood-rate` calls a second over 16 sessions (bench/abuse_load.py).
   The tool is free for anonymous callers here
   (bench/abuse_tools.toml: the worst case: a flood the anonymous policy does not refuse by itself), so
   the rate limits are what stands between the flood and the ledger. The figure is p50 during the flood
   over p50 quiet, for each gateway. Target with the controls on: <= 1.5.

Afterwards billing.verify_ledger() must be empty. Prints a table; writes bench/results/abuse-<UTC>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from api.abuse.config import RateLimitSettings  # noqa: E402
from api.ledger import db, roles  # noqa: E402
from api.ops import embedded, migrate  # noqa: E402
from bench.gateway import BODY, TOOL, load, raise_open_files_limit, seed, warm  # noqa: E402
from tests.gateway.server import Gateway, start_gateway  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
TOOLS = ROOT / "bench" / "abuse_tools.toml"
COST_TARGET = 0.95
FLOOD_TARGET = 1.5
# Limits no benchmark load reaches: the "on" gateway of the cost figure checks them all and refuses none.
UNREACHED = "100000000/minute burst 1000000"


def abuse_load(*args: str) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, "-m", "bench.abuse_load", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(output)
    return result


def paced_and_flood(
    gateway: Gateway, token: str, seconds: float, paced_rate: float, flood_rate: float | None, connections: int
) -> dict[str, Any]:
    """The paying user's latencies for `seconds`, with (or without) the anonymous flood running meanwhile."""
    host, port = "127.0.0.1", gateway.base_url.rsplit(":", 1)[1]
    path = f"/api/tools/{TOOL}"
    paced_args = ["paced", host, port, path, str(seconds), str(paced_rate), token, BODY]
    if flood_rate is None:
        return {"paced": abuse_load(*paced_args)}
    flood_args = ["mcp-flood", host, port, TOOL, str(seconds + 1), str(flood_rate), str(connections), "127.0.0.2", BODY]
    flood = subprocess.Popen(
        [sys.executable, "-m", "bench.abuse_load", *flood_args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    time.sleep(0.5)  # the flood is under way before the first measured call
    paced = abuse_load(*paced_args)
    out, _ = flood.communicate(timeout=seconds + 60)
    return {"paced": paced, "flood": json.loads(out)}


@contextlib.contextmanager
def ledger_with_users(users: int) -> Iterator[tuple[str, Path, Path]]:
    raise_open_files_limit()
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-abuse-"))
    server = embedded.throwaway_server(workdir / "pgdata")
    try:
        url = server.get_uri()
        migrate.upgrade(url, ROOT / "db")
        roles.provision_login_roles(url)
        jwts, _key = seed(url, users, workdir)
        yield url, jwts, workdir
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def cost(url: str, jwts: Path, workdir: Path, duration: float, rounds: int, connections: int) -> dict[str, Any]:
    common = {"TOLLGATE_LOG_LEVEL": "WARNING", "TOLLGATE_POOL_MAX": "10", "TOLLGATE_TOOLS_CONFIG": str(TOOLS)}
    raised = {
        f"TOLLGATE_ABUSE_RATE_LIMITS_{name}": UNREACHED
        for name in ("TOOL_CALLS_PER_IP", "TOOL_CALLS_PER_USER", "TOOL_CALLS_PER_API_KEY", "TOOL_CALLS_PER_ANONYMOUS")
    }
    gateways = {
        "on": start_gateway(url, workdir / "on", **common, **raised, TOLLGATE_ABUSE_ENABLED="true"),
        "off": start_gateway(url, workdir / "off", **common, TOLLGATE_ABUSE_ENABLED="false"),
    }
    try:
        ports = {mode: gw.base_url.rsplit(":", 1)[1] for mode, gw in gateways.items()}
        for port in ports.values():
            warm(port, jwts)
        runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for number in range(rounds):
            order = ["on", "off"] if number % 2 == 0 else ["off", "on"]
            for mode in order:
                result = load(ports[mode], duration, connections, jwts, "Authorization")
                runs[mode].append(result)
                rps, statuses = result["rps"], result["statuses"]
                print(f"  cost round {number + 1} {mode:>3}: {rps:8.1f} req/s {statuses}", flush=True)
        medians = {mode: statistics.median(r["rps"] for r in results) for mode, results in runs.items()}
        refused = sum(r["non_2xx"] for results in runs.values() for r in results)
        return {
            "rps": medians,
            "ratio": medians["on"] / medians["off"],
            "non_2xx": refused,
            "rounds": runs,
        }
    finally:
        for gw in gateways.values():
            gw.stop()


def flood(
    url: str, jwts: Path, workdir: Path, seconds: float, paced_rate: float, flood_rate: float, connections: int
) -> dict[str, Any]:
    token = jwts.read_text().split()[0]
    common = {"TOLLGATE_LOG_LEVEL": "WARNING", "TOLLGATE_POOL_MAX": "10", "TOLLGATE_TOOLS_CONFIG": str(TOOLS)}
    report: dict[str, Any] = {}
    # start_gateway gives test gateways generous rate limits: the flood meets the defaults here.
    defaults = RateLimitSettings()
    default_limits = {
        f"TOLLGATE_ABUSE_RATE_LIMITS_{knob.upper()}": str(getattr(defaults, knob)) for knob in defaults.limits()
    }
    for mode, enabled in (("on", "true"), ("off", "false")):
        gateway = start_gateway(
            url, workdir / f"flood-{mode}", **common, **default_limits, TOLLGATE_ABUSE_ENABLED=enabled
        )
        try:
            quiet = paced_and_flood(gateway, token, seconds, paced_rate, None, connections)
            loud = paced_and_flood(gateway, token, seconds, paced_rate, flood_rate, connections)
        finally:
            gateway.stop()
        quiet_p50, loud_p50 = quiet["paced"]["p50_ms"], loud["paced"]["p50_ms"]
        report[mode] = {
            "quiet": quiet["paced"],
            "flooded": loud["paced"],
            "flood": loud["flood"],
            "ratio": loud_p50 / quiet_p50 if quiet_p50 and loud_p50 else None,
        }
        print(
            f"  flood {mode:>3}: paying user p50 {quiet_p50} ms quiet, {loud_p50} ms flooded"
            f" (flood {loud['flood']['rate']}/s, {loud['flood']['statuses']})",
            flush=True,
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cost round")
    parser.add_argument("--rounds", type=int, default=4, help="cost rounds per mode (alternating)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--flood-seconds", type=float, default=20.0)
    parser.add_argument("--flood-rate", type=float, default=500.0)
    # At most mcp_sessions_per_principal (20) sessions of one anonymous address are let in.
    parser.add_argument("--flood-connections", type=int, default=16)
    parser.add_argument("--paced-rate", type=float, default=5.0, help="the paying user's calls per second")
    args = parser.parse_args(argv)

    started = dt.datetime.now(dt.UTC)
    with ledger_with_users(args.users) as (url, jwts, workdir):
        print("cost of the controls (billed calls, on vs off):", flush=True)
        cost_report = cost(url, jwts, workdir, args.duration, args.rounds, args.connections)
        print("a paying user during an anonymous flood:", flush=True)
        flood_report = flood(
            url, jwts, workdir, args.flood_seconds, args.paced_rate, args.flood_rate, args.flood_connections
        )
        with db.connect(url) as conn:
            violations = conn.execute("SELECT count(*) FROM billing.verify_ledger()").fetchone()
    report = {
        "started": started.isoformat(),
        "arguments": vars(args),
        "cost": cost_report,
        "flood": flood_report,
        "verify_ledger_violations": violations[0] if violations else None,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"abuse-{started:%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2, default=str))

    ratio = cost_report["ratio"]
    flood_ratio = flood_report["on"]["ratio"]
    print()
    print("| figure | value | target |")
    print("|---|---|---|")
    print(
        f"| billed req/s, controls on / off | {cost_report['rps']['on']:.1f} / {cost_report['rps']['off']:.1f}"
        f" = **{ratio:.3f}** | >= {COST_TARGET} |"
    )
    for mode in ("on", "off"):
        row = flood_report[mode]
        print(
            f"| paying user p50 quiet -> during a {row['flood']['rate']}/s anonymous flood, controls {mode} |"
            f" {row['quiet']['p50_ms']} -> {row['flooded']['p50_ms']} ms = **{row['ratio']:.2f}x** |"
            f" {'<= ' + str(FLOOD_TARGET) if mode == 'on' else '(before)'} |"
        )
    print(f"\nverify_ledger(): {report['verify_ledger_violations']} violations; JSON: {out}")
    ok = ratio >= COST_TARGET and flood_ratio is not None and flood_ratio <= FLOOD_TARGET
    ok = ok and report["verify_ledger_violations"] == 0 and cost_report["non_2xx"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
