"""What the ledger's hash chain (migration 0009) costs the functions that write ledger rows.

Run on demand (`make bench-chain`, or `python -m bench.chain_cost`), never in the test suite. One private
embedded PostgreSQL (bench/run.py's: durable), two seeded templates side by side: one migrated with the
db/ of the commit before the chain landed (`--before`, default: the first-parent commit before the one
that added db/migrations/0009_ledger_chain.sql, exported with `git archive`), one with this checkout's
db/. The same pgbench scripts (billing.charge on 10k users and on one account, reserve + settle) run on
fresh clones of each, alternating which goes first every round; the figure is the ratio of median tps,
chained / before, and the ratio of PostgreSQL's CPU per transaction (less noisy on a small shared
machine), with verify_ledger() empty after every run. The issue's budget: under 5 % of charge.

With --any-before, the same measurement compares this checkout's db/ with any revision's (the chain may be in
both): what a change to the SQL costs or saves. "chained" in the figures then means "this checkout".
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psycopg

from bench import run as ledger
from bench.webhooks import postgres_cpu

CHAIN_MIGRATION = "db/migrations/0009_ledger_chain.sql"
SCRIPTS = {
    "charge_10k": (ledger.CHARGE_SQL, ledger.USERS),
    "charge_1": (ledger.CHARGE_SQL, 1),
    "reserve_settle_10k": (ledger.RESERVE_SETTLE_SQL, ledger.USERS),
}
TEMPLATES = {"before": "bench_chain_before_tpl", "chained": "bench_chain_after_tpl"}


def default_before() -> str:
    """The main-line commit just before the chain landed."""
    added = subprocess.run(
        ["git", "rev-list", "--first-parent", "HEAD", "--", CHAIN_MIGRATION],
        cwd=ledger.ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    if not added:
        raise SystemExit(f"{CHAIN_MIGRATION} is not in this checkout's history: pass --before")
    return f"{added[-1]}^1"


def export_db(rev: str, target: Path, *, unchained: bool = True) -> Path:
    """db/ of `rev`, unpacked into `target` (`unchained`: refused when it already has the hash chain)."""
    archive = subprocess.run(["git", "archive", rev, "db"], cwd=ledger.ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    if unchained and (target / CHAIN_MIGRATION).exists():
        raise SystemExit(f"{rev} already has the hash chain: pass an earlier --before")
    return target / "db"


def measure(env: ledger.LedgerEnv, scenario: ledger.Scenario, round_no: int, duration: int) -> tuple[float, float]:
    """One pgbench run on a fresh clone: tps, and PostgreSQL's CPU microseconds per transaction (every
    backend, reaped or alive, and the background processes: the cost the server pays, less noisy than tps
    on a small shared machine). verify_ledger() must be empty afterwards."""
    dbname = f"bench_chain_{scenario.name}"
    env.server.drop_database(dbname)
    env.server.create_database(dbname, template=scenario.template)
    try:
        before = postgres_cpu(env.settings.pgdata)
        result = ledger.run_scenario(env.server, scenario, round_no, duration, env.script_dir, dbname=dbname)
        time.sleep(0.3)  # pgbench's backends exit and are reaped
        used = postgres_cpu(env.settings.pgdata) - before
        with psycopg.connect(env.server.url(dbname), autocommit=True) as conn:
            conn.execute("ANALYZE")
            problems = ledger._verify(conn)
    finally:
        env.server.drop_database(dbname)
    if problems:
        raise SystemExit(f"{scenario.name}: verify_ledger() reports {problems} problems")
    return result.tps, 1e6 * used / result.transactions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision whose db/ has no hash chain (default: the one before 0009)")
    parser.add_argument("--duration", type=int, default=20, help="seconds per pgbench run (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument(
        "--any-before", action="store_true", help="--before may have the chain: measure any change to db/"
    )
    args = parser.parse_args(argv)
    before_rev = args.before or default_before()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", before_rev], cwd=ledger.ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    results: dict[str, dict[str, list[float]]] = {name: {"before": [], "chained": []} for name in SCRIPTS}
    cpu: dict[str, dict[str, list[float]]] = {name: {"before": [], "chained": []} for name in SCRIPTS}
    with ledger.ledger_env() as env, tempfile.TemporaryDirectory(prefix="chain-before-") as tmp:
        before_db = export_db(before_rev, Path(tmp), unchained=not args.any_before)
        dirs = {"before": before_db, "chained": env.settings.db_dir}
        for code, template in TEMPLATES.items():
            ledger._log(f"seeding {ledger.USERS:,} funded accounts with the {code} code into {template} ...")
            ledger.build_ledger_template(env.server, dirs[code], template)
        scenarios = {
            (name, code): ledger.Scenario(
                f"{name}_{code}", f"{name} ({code})", TEMPLATES[code], script, users=users, script_name=name
            )
            for name, (script, users) in SCRIPTS.items()
            for code in TEMPLATES
        }
        for name, (script, users) in SCRIPTS.items():
            text = ledger._PREAMBLE.format(users=users) + script
            (env.script_dir / f"{name}.sql").write_text(text, encoding="utf-8")
        for round_no in range(1, args.rounds + 1):
            order = list(TEMPLATES) if round_no % 2 else list(reversed(TEMPLATES))
            for name in SCRIPTS:
                for code in order:
                    tps, cpu_us = measure(env, scenarios[name, code], round_no, args.duration)
                    results[name][code].append(tps)
                    cpu[name][code].append(cpu_us)
                    ledger._log(
                        f"round {round_no} {name:<20} {code:<8} {tps:>9,.0f} tps {cpu_us:>7,.1f} us PostgreSQL CPU each"
                    )
    report = {
        "before": commit,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "server": env.server_settings,
        "scenarios": {
            name: {
                "before_tps": statistics.median(runs["before"]),
                "chained_tps": statistics.median(runs["chained"]),
                "ratio": round(statistics.median(runs["chained"]) / statistics.median(runs["before"]), 3),
                "per_round_ratio": [round(c / b, 3) for b, c in zip(runs["before"], runs["chained"], strict=True)],
                "runs": runs,
                "before_cpu_us": round(statistics.median(cpu[name]["before"]), 1),
                "chained_cpu_us": round(statistics.median(cpu[name]["chained"]), 1),
                "cpu_ratio": round(statistics.median(cpu[name]["chained"]) / statistics.median(cpu[name]["before"]), 3),
                "cpu_runs": cpu[name],
            }
            for name, runs in results.items()
        },
    }
    what = "this checkout's db/ (before =" if args.any_before else "hash chain cost (before ="
    print(f"\n{what} {commit}; median of {args.rounds} alternating rounds of {args.duration} s)")
    print(f"{'scenario':<20} {'before tps':>11} {'chained tps':>12} {'ratio':>6} {'CPU us before':>14} "
          f"{'chained':>8} {'ratio':>6}  tps ratio per round")
    for name, row in report["scenarios"].items():
        print(f"{name:<20} {row['before_tps']:>11,.0f} {row['chained_tps']:>12,.0f} {row['ratio']:>6.3f} "
              f"{row['before_cpu_us']:>14,.1f} {row['chained_cpu_us']:>8,.1f} {row['cpu_ratio']:>6.3f}  "
              f"{row['per_round_ratio']}")
    ledger.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ledger.RESULTS_DIR / f"chain-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"results: {path.relative_to(ledger.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
