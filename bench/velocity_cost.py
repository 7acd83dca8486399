"""What one run of the velocity detector (billing.detect_velocity) costs on a busy ledger.

Run on demand (`python -m bench.velocity_cost`), never in the test suite. A private throwaway PostgreSQL,
migrated; seeded through the SQL API itself (no table written directly): ``--accounts`` funded accounts
(default 10,000), a trailing history of ``--history`` charges (default 200,000) spread over the 7 days before
"now" (the test clock), and in the last 10-minute window ``--calls`` tracked calls (default 200,000: each a
begin_request with an API key of 3 and an address of 5 per account, the charged ones also a charge) with a
handful of accounts spiking and fanning out. Then it times:

* the first run, which also rolls the whole trailing week up into hourly buckets (once per deployment);
* steady runs: the clock a minute later each time, with ``--calls // 10`` more calls in between (what a
  run a minute after the previous one finds), the median of ``--rounds``.

Prints one JSON object: the sizes, the seconds of each run, the flags raised.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from api.gateway.config import DEFAULT_DB_DIR
from api.ops import embedded, migrate

NOW = dt.datetime(2031, 5, 14, 12, 0, tzinfo=dt.UTC)

SEED_ACCOUNTS = """
SELECT count(billing.top_up(billing.ensure_account('bench-' || g), 1000000, 'bench', 'fund-' || g))
  FROM generate_series(1, %(n)s) g
"""
LIMITS = """
SELECT count(billing.update_settings(u.id, 1000000, 10000000)) FROM billing.users u
"""
CHARGES = """
SELECT count(billing.charge(
           (SELECT id FROM billing.users WHERE external_id = 'bench-' || (1 + (g * 7919) %% %(accounts)s)),
           %(prefix)s || g, 0.0003 + (g %% 7) * 0.0001))
  FROM generate_series(1, %(n)s) g
"""
CALLS = """
SELECT count(*) FROM (
    SELECT billing.begin_request(
               %(prefix)s || g, 'search',
               (SELECT id FROM billing.users WHERE external_id = 'bench-' || (1 + (g * 7919) %% %(accounts)s)),
               'key-' || (g %% 3), 0, NULL, NULL,
               ('10.' || ((g / 5) %% 250) || '.' || (g %% 5) || '.' || (1 + (g * 7919) %% 250))::inet)
      FROM generate_series(1, %(n)s) g) calls
"""
SPIKES = """
SELECT count(billing.charge(
           (SELECT id FROM billing.users WHERE external_id = 'bench-' || g), 'spike-' || %(round)s || '-' || g, 25))
  FROM generate_series(1, 5) g
"""


def set_clock(conn: psycopg.Connection[Any], when: dt.datetime) -> None:
    conn.execute("UPDATE billing.config SET clock_override = %s", (when,))


def detect(conn: psycopg.Connection[Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    row = conn.execute("SELECT * FROM billing.detect_velocity(true)").fetchone()
    elapsed = time.perf_counter() - started
    assert row is not None
    names = ("status", "flags_raised", "accounts_paused", "spike_candidates", "fanout_candidates", "buckets_rolled_up")
    return elapsed, dict(zip(names, row, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="tollgate-bench-velocity-"))
    server = embedded.throwaway_server(root / "pgdata")
    try:
        url = server.get_uri()
        migrate.upgrade(url, DEFAULT_DB_DIR)
        with psycopg.connect(url, autocommit=True) as conn:
            seeding = time.perf_counter()
            set_clock(conn, NOW - dt.timedelta(days=8))
            conn.execute(SEED_ACCOUNTS, {"n": args.accounts})
            conn.execute(LIMITS)
            per_hour = max(1, args.history // (7 * 24))
            for hour in range(7 * 24, 0, -1):
                set_clock(conn, NOW - dt.timedelta(hours=hour))
                conn.execute(CHARGES, {"n": per_hour, "accounts": args.accounts, "prefix": f"h{hour}-"})
            per_minute = max(1, args.calls // 10)
            for minute in range(10, 0, -1):
                set_clock(conn, NOW - dt.timedelta(minutes=minute))
                conn.execute(CALLS, {"n": per_minute, "accounts": args.accounts, "prefix": f"w{minute}-"})
                conn.execute(CHARGES, {"n": per_minute // 2, "accounts": args.accounts, "prefix": f"wc{minute}-"})
            conn.execute(SPIKES, {"round": 0})
            conn.execute("VACUUM ANALYZE")
            seeded = time.perf_counter() - seeding
            set_clock(conn, NOW)
            first, first_run = detect(conn)
            steady: list[float] = []
            runs = []
            for round_ in range(1, args.rounds + 1):
                moment = NOW + dt.timedelta(minutes=round_)
                set_clock(conn, moment - dt.timedelta(seconds=30))
                conn.execute(CALLS, {"n": per_minute, "accounts": args.accounts, "prefix": f"s{round_}-"})
                conn.execute(CHARGES, {"n": per_minute // 2, "accounts": args.accounts, "prefix": f"sc{round_}-"})
                set_clock(conn, moment)
                elapsed, run = detect(conn)
                steady.append(elapsed)
                runs.append(run)
            sizes = conn.execute(
                "SELECT (SELECT count(*) FROM billing.users), (SELECT count(*) FROM billing.billing_transactions),"
                " (SELECT count(*) FROM billing.cost_tracking), (SELECT count(*) FROM billing.spend_buckets),"
                " (SELECT count(*) FROM billing.account_flags)"
            ).fetchone()
            assert sizes is not None
        print(json.dumps({
            "accounts": sizes[0], "ledger_rows": sizes[1], "tracked_calls": sizes[2], "spend_buckets": sizes[3],
            "flags": sizes[4], "seed_seconds": round(seeded, 1),
            "first_run_seconds": round(first, 3), "first_run": first_run,
            "steady_run_seconds_median": round(statistics.median(steady), 3),
            "steady_run_seconds": [round(s, 3) for s in steady], "steady_runs": runs,
        }, indent=2))
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
