"""Cost as the ledger grows: billing.charge throughput and billing.history page latency at 0, 1M and
5M ledger rows, each as a ratio to the figure at 0 measured in the same run.

Run on demand (`python -m bench.growth --help`, or `make bench`, whose growth section this is). On a
private embedded PostgreSQL 18 (bench/run.py's: durable, the seeded template of 10,000 funded users):

    1. one database per level, cloned from the template; an extra account, `bench-history`, funded
       through the real functions; then, set-based (one INSERT ... SELECT, one UPDATE), `rows` charges
       spread round-robin over the 10,000 users plus HISTORY_ROWS charges of bench-history, interleaved
       in time order over the 180 days before the current month (so no day or month window holds
       any of them), with before/after snapshots and hashes chaining per user, versions without gaps, unique
       request ids, UAH at the configured rate, and the counters in user_billing to match; then
       VACUUM ANALYZE and billing.verify_ledger(), which must be empty;
    2. rounds over the levels in alternating order: history samples for bench-history (first page,
       limit 50; the page 10,000 rows deep by offset and by keyset before_id), then pgbench with the
       charge_10k script of bench/run.py on that database (kept, not cloned: each level gets the same
       number of runs, so the charges they add are the same at every level);
    3. billing.verify_ledger() on every level after the rounds;
    4. ratios: charge tps at N / tps at 0; history p50 at 0 / p50 at N (so that, as for throughput,
       1.0 means "no slower" and the target >= 0.9 means "at most ~11 % slower").

bench-history holds the same HISTORY_ROWS rows at every level, so the same pages are read: only the
ledger around them grows (and with it, how far apart the user's rows lie in the table).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import time
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench import run as ledger  # noqa: E402

LEVELS = (0, 1_000_000, 5_000_000)
QUICK_LEVELS = (0, 100_000, 200_000)
HISTORY_ROWS = 20_000  # bench-history's own charges, at every level
DEEP = 10_000  # the deep page starts this many rows from the newest
PAGE = 50
SPAN_DAYS = 180
TARGET = 0.9
BYTES_PER_ROW = 800  # heap + indexes + WAL + the fill's sort and CTE spill per ledger row, for the disk check
SAMPLE_BUDGET_S = 30.0  # history sampling per level and round stops after this (at least MIN_SAMPLES each)
MIN_SAMPLES = 50
FILL_CHARGE_USD = Decimal(ledger.CHARGE_USD)

# The new ledger rows, in one INSERT ... SELECT, already in time order (no sort): row s of 1..total is
# bench-history's g-th row when floor(s * history / total) steps up at s (so its rows are spread
# evenly among the others), else the f-th fill row, which goes round-robin to user n = (f - 1) % users + 1
# as that user's k-th new row. The hash join on the 10,000 accounts keeps the order of the series.
FILL_SQL = """
WITH rate AS (
    SELECT c.uah_per_usd AS uah_per_usd FROM billing.config c
), acc AS (
    SELECT u.n, b.user_id, b.version, b.balance_usd
      FROM public.bench_users u JOIN billing.user_billing b ON b.user_id = u.id
     WHERE u.n <= %(users)s
), hist AS (
    SELECT b.user_id, b.version, b.balance_usd FROM billing.user_billing b WHERE b.user_id = %(history_user)s
), seq AS (
    SELECT s, s::float8 / %(total)s AS t, (s * %(history)s) / %(total)s AS g,
           (s * %(history)s) / %(total)s > ((s - 1) * %(history)s) / %(total)s AS is_history
      FROM generate_series(1::bigint, %(total)s::bigint) s
), planned AS (
    SELECT q.*, CASE WHEN q.is_history THEN NULL ELSE ((q.s - q.g - 1) %% %(users)s) + 1 END AS n,
           ((q.s - q.g - 1) / %(users)s) + 1 AS k
      FROM seq q
), rows AS (
    SELECT p.t,
           CASE WHEN p.is_history THEN h.user_id ELSE a.user_id END AS user_id,
           CASE WHEN p.is_history THEN h.version + p.g ELSE a.version + p.k END AS version,
           CASE WHEN p.is_history THEN h.balance_usd - (p.g - 1) * %(usd)s
                ELSE a.balance_usd - (p.k - 1) * %(usd)s END AS before_usd,
           CASE WHEN p.is_history THEN 'history-' || p.g ELSE 'fill-' || p.n || '-' || p.k END AS request_id
      FROM planned p CROSS JOIN hist h LEFT JOIN acc a ON a.n = p.n
), valued AS (
    SELECT r.t, r.user_id, r.version, -%(usd)s::numeric AS amount_usd,
           round(-%(usd)s * rate.uah_per_usd, 2) AS amount_uah, rate.uah_per_usd, r.before_usd,
           r.before_usd - %(usd)s AS after_usd, r.request_id,
           %(end)s::timestamptz - make_interval(secs => %(span)s * (1 - r.t)) AS created_at
      FROM rows r, rate
), chained AS (
    -- Each row chained onto the one before it of its user (migration 0009): a running aggregate per user.
    SELECT v.*, public.bench_chain(b.ledger_head, v.user_id, v.version, v.amount_usd, v.amount_uah,
                                   v.uah_per_usd, v.before_usd, v.after_usd, v.request_id, v.created_at)
                    OVER (PARTITION BY v.user_id ORDER BY v.version) AS entry_hash
      FROM valued v JOIN billing.user_billing b ON b.user_id = v.user_id
)
INSERT INTO billing.billing_transactions
    (user_id, version, type, currency, amount_usd, amount_uah, exchange_rate,
     balance_before_usd, balance_after_usd, request_id, created_at, entry_hash)
SELECT c.user_id, c.version, 'charge', 'USD', c.amount_usd, c.amount_uah, c.uah_per_usd,
       c.before_usd, c.after_usd, c.request_id, c.created_at, c.entry_hash
  FROM chained c
 ORDER BY c.t
"""

# The running hash of FILL_SQL: billing._entry_hash of a fill row chained onto the previous state, or
# onto the account's head before the fill for its first row.
CHAIN_AGGREGATE_SQL = """
CREATE FUNCTION public.bench_chain_step(state bytea, head bytea, user_id uuid, version bigint, amount_usd numeric,
                                        amount_uah numeric, rate numeric, before_usd numeric, after_usd numeric,
                                        request_id text, created_at timestamptz)
RETURNS bytea LANGUAGE sql STABLE AS $$
    SELECT billing._entry_hash(coalesce(state, head), user_id, version, 'charge', 'USD', amount_usd, amount_uah,
                               rate, before_usd, after_usd, request_id, NULL, NULL, NULL, NULL, NULL, NULL,
                               '{}'::jsonb, created_at)
$$;
CREATE AGGREGATE public.bench_chain(bytea, uuid, bigint, numeric, numeric, numeric, numeric, numeric, text,
                                    timestamptz) (SFUNC = public.bench_chain_step, STYPE = bytea);
"""

# The counters of every account the fill touched, by arithmetic: fill user n got rows / users rows,
# plus one when n <= rows % users; bench-history got `history`.
FILL_ACCOUNTS_SQL = """
UPDATE billing.user_billing b
   SET balance_usd = b.balance_usd - c.k * %(usd)s,
       balance_uah = b.balance_uah + c.k * r.uah,
       total_spent_usd = b.total_spent_usd + c.k * %(usd)s,
       total_spent_uah = b.total_spent_uah - c.k * r.uah,
       total_requests = b.total_requests + c.k,
       version = b.version + c.k,
       ledger_head = (SELECT t.entry_hash FROM billing.billing_transactions t
                       WHERE t.user_id = b.user_id ORDER BY t.version DESC LIMIT 1)
  FROM (SELECT u.id AS user_id,
               %(rows)s / %(users)s + CASE WHEN u.n <= %(rows)s %% %(users)s THEN 1 ELSE 0 END AS k
          FROM public.bench_users u
         WHERE u.n <= %(users)s
        UNION ALL
        SELECT %(history_user)s::uuid, %(history)s) c,
       (SELECT round(-%(usd)s * cfg.uah_per_usd, 2) AS uah FROM billing.config cfg) r
 WHERE b.user_id = c.user_id AND c.k > 0
"""

# The fill's rows of bench-history must come in id order as in version order (as a real ledger's do).
ORDER_CHECK_SQL = """
SELECT count(*) FROM (
    SELECT t.id, lag(t.id) OVER (ORDER BY t.version) AS previous
      FROM billing.billing_transactions t WHERE t.user_id = %s) x
 WHERE x.id < x.previous
"""

HISTORY_SQL = "SELECT * FROM billing.history(%s, NULL, NULL, NULL, %s, %s, %s)"


def label(rows: int) -> str:
    if rows == 0:
        return "0"
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return str(rows)


def check_disk(path: Path, rows: int) -> dict[str, Any]:
    """Free space where the server keeps its data, against a generous estimate of what the fill needs."""
    usage = shutil.disk_usage(path)
    needed = rows * BYTES_PER_ROW
    info = {"path": str(path), "free_gb": round(usage.free / 1e9, 1), "estimated_need_gb": round(needed / 1e9, 1)}
    if usage.free < needed + 2e9:
        raise ledger.BenchError(f"not enough disk for the growth levels: {info}")
    return info


def build_level(env: ledger.LedgerEnv, rows: int, history_rows: int) -> dict[str, Any]:
    """A database cloned from the seeded template, with `rows` fill charges and bench-history's."""
    dbname = f"bench_growth_{label(rows).lower()}"
    env.server.drop_database(dbname)
    env.server.create_database(dbname, template=ledger.LEDGER_TEMPLATE)
    started = time.monotonic()
    end = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=3)
    with psycopg.connect(env.server.url(dbname), autocommit=True) as conn:
        history_user = conn.execute("SELECT billing.ensure_account('bench-history')").fetchone()
        assert history_user is not None
        user_id = history_user[0]
        conn.execute("SELECT * FROM billing.top_up(%s, %s, 'bench', 'history-seed')", (user_id, ledger.FUNDING_USD))
        conn.execute(
            "SELECT * FROM billing.update_settings(%s, %s::numeric, %s::numeric)",
            (user_id, ledger.LIMIT_USD, ledger.LIMIT_USD),
        )
        with conn.transaction():
            conn.execute("SET LOCAL work_mem = '256MB'")
            params = {
                "users": ledger.USERS,
                "rows": rows,
                "history": history_rows,
                "total": rows + history_rows,
                "history_user": user_id,
                "usd": FILL_CHARGE_USD,
                "end": end,
                "span": SPAN_DAYS * 86400,
            }
            conn.execute(CHAIN_AGGREGATE_SQL)
            conn.execute(FILL_SQL, params)
            conn.execute(FILL_ACCOUNTS_SQL, params)
        filled = time.monotonic() - started
        conn.execute("VACUUM ANALYZE")
        vacuumed = time.monotonic() - started
        problems = ledger._verify(conn)
        verified = time.monotonic() - started
        out_of_order = ledger._scalar(conn, ORDER_CHECK_SQL, (user_id,))
        total = ledger._scalar(conn, "SELECT count(*) FROM billing.billing_transactions")
        user_rows = ledger._scalar(
            conn, "SELECT count(*) FROM billing.billing_transactions WHERE user_id = %s", (user_id,)
        )
        deep = conn.execute(
            "SELECT id FROM billing.billing_transactions WHERE user_id = %s ORDER BY id DESC OFFSET %s LIMIT 1",
            (user_id, DEEP - 1),
        ).fetchone()
        assert deep is not None
        sizes = conn.execute(
            "SELECT pg_total_relation_size('billing.billing_transactions'), pg_database_size(current_database())"
        ).fetchone()
        assert sizes is not None
    if problems:
        raise ledger.BenchError(f"verify_ledger() reports {problems} problems after filling {dbname}")
    if out_of_order:
        raise ledger.BenchError(f"{dbname}: {out_of_order} of bench-history's rows are out of id order")
    if user_rows < DEEP + PAGE:
        raise ledger.BenchError(f"bench-history has {user_rows} rows, fewer than {DEEP + PAGE}")
    ledger._log(
        f"  {dbname}: {total:,} ledger rows, filled in {filled:.0f} s, VACUUM ANALYZE {vacuumed - filled:.0f} s,"
        f" verify_ledger() empty in {verified - vacuumed:.0f} s; table {sizes[0] / 2**20:,.0f} MiB"
    )
    return {
        "rows": rows,
        "label": label(rows),
        "dbname": dbname,
        "ledger_rows_total": total,
        "history_user": str(user_id),
        "history_user_rows": user_rows,
        "deep_before_id": int(deep[0]),
        "fill_seconds": round(filled, 1),
        "vacuum_analyze_seconds": round(vacuumed - filled, 1),
        "verify_seconds": round(verified - vacuumed, 1),
        "verify_ledger_problems": problems,
        "transactions_table_mib": round(sizes[0] / 2**20, 1),
        "database_mib": round(sizes[1] / 2**20, 1),
    }


def history_samples(
    url: str, level: dict[str, Any], samples: int, plan_cache_mode: str | None = None
) -> dict[str, list[float]]:
    """Latency (ms, client side, one connection, prepared) of the three pages, interleaved, up to
    `samples` calls each (the offset page a fifth of them) or SAMPLE_BUDGET_S seconds. With
    plan_cache_mode (an experiment: force_custom_plan), the session sets it (it reaches PL/pgSQL's plans)."""
    user = level["history_user"]
    variants = {
        "first_page": (user, PAGE, 0, None),
        "deep_keyset": (user, PAGE, 0, level["deep_before_id"]),
        "deep_offset": (user, PAGE, DEEP, None),
    }
    # The offset page reads 10,050 rows a call: fewer samples of it keep the section short.
    counts = {"first_page": samples, "deep_keyset": samples, "deep_offset": max(10, samples // 5)}
    out: dict[str, list[float]] = {name: [] for name in variants}
    with psycopg.connect(url, autocommit=True) as conn:
        if plan_cache_mode:
            conn.execute("SELECT set_config('plan_cache_mode', %s, false)", (plan_cache_mode,))
        for params in variants.values():  # warm: plans cached, pages in memory
            for _ in range(5):
                conn.execute(HISTORY_SQL, params, prepare=True).fetchall()
        expected = {name: PAGE for name in variants}
        deadline = time.monotonic() + SAMPLE_BUDGET_S
        for i in range(samples):
            if i >= MIN_SAMPLES and time.monotonic() > deadline:
                break  # a slow page (seconds per 1,000 calls) must not stretch the section by minutes
            for name, params in variants.items():
                if i >= counts[name]:
                    continue
                started = time.perf_counter()
                page = conn.execute(HISTORY_SQL, params, prepare=True).fetchall()
                out[name].append((time.perf_counter() - started) * 1000)
                if len(page) != expected[name]:
                    raise ledger.BenchError(f"history {name} returned {len(page)} rows, expected {expected[name]}")
    return out


def _vacuum(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) billing.user_billing, billing.billing_transactions")


def run(
    duration: int = 30,
    rounds: int = 3,
    levels: tuple[int, ...] = LEVELS,
    samples: int = 1000,
    history_rows: int = HISTORY_ROWS,
    latency_log: bool = True,
    env: ledger.LedgerEnv | None = None,
    plan_cache_mode: str | None = None,
) -> dict[str, Any]:
    """Build the levels, measure them in alternating rounds, verify them; return the report."""
    if env is None:
        with ledger.ledger_env() as own:
            return run(duration, rounds, levels, samples, history_rows, latency_log, own, plan_cache_mode)
    if 0 not in levels:
        raise ValueError("the levels must include 0: every ratio is against the figure at 0")
    levels = tuple(sorted(set(levels)))
    seed = env.ledger_template()
    disk = check_disk(env.tmp, sum(levels) + len(levels) * (history_rows + ledger.USERS))
    ledger._log(f"growth: levels {', '.join(label(n) for n in levels)}; disk {disk}")
    built = {rows: build_level(env, rows, history_rows) for rows in levels}
    scenario = ledger.Scenario(
        "growth_charge",
        "billing.charge, 10k users (growth)",
        ledger.LEDGER_TEMPLATE,
        ledger.CHARGE_SQL,
        script_name="charge_10k",
    )
    ledger.write_scripts(env.script_dir, (scenario,))
    runs: list[dict[str, Any]] = []
    samples_by_level: dict[int, dict[str, list[float]]] = {n: {} for n in levels}
    for round_no in range(1, rounds + 1):
        order = list(levels) if round_no % 2 == 1 else list(levels)[::-1]
        for rows in order:
            level = built[rows]
            url = env.server.url(level["dbname"])
            _vacuum(url)
            taken = history_samples(url, level, samples, plan_cache_mode)
            for name, values in taken.items():
                samples_by_level[rows].setdefault(name, []).extend(values)
            result = ledger.run_scenario(
                env.server, scenario, round_no, duration, env.script_dir, latency_log, dbname=level["dbname"]
            )
            runs.append({"level": rows, **asdict(result)})
            ledger._log(
                f"  round {round_no} {label(rows):>5} rows: charge {result.tps:8,.0f} tps;"
                f" history p50 first {statistics.median(taken['first_page']):.3f} ms,"
                f" keyset deep {statistics.median(taken['deep_keyset']):.3f} ms,"
                f" offset deep {statistics.median(taken['deep_offset']):.3f} ms"
            )
    for rows in levels:
        with psycopg.connect(env.server.url(built[rows]["dbname"]), autocommit=True) as conn:
            conn.execute("ANALYZE")
            built[rows]["verify_after_runs"] = ledger._verify(conn)
    summary = summarise(levels, runs, samples_by_level)
    for rows in levels:
        env.server.drop_database(built[rows]["dbname"])
    return {
        "levels": [built[n] for n in levels],
        "seed": seed,
        "disk": disk,
        "duration_s": duration,
        "rounds": rounds,
        "samples_per_round": samples,
        "history_rows": history_rows,
        "deep": DEEP,
        "page": PAGE,
        "target": TARGET,
        "history_plan_cache_mode": plan_cache_mode or "server default (auto)",
        "runs": runs,
        "summary": summary,
        "verify_ledger_ok": all(built[n]["verify_after_runs"] == 0 for n in levels),
    }


def _median_percentiles(measured: list[dict[str, float]]) -> dict[str, float] | None:
    if not measured:
        return None
    return {key: statistics.median(m[key] for m in measured) for key in measured[0]}


def summarise(
    levels: tuple[int, ...], runs: list[dict[str, Any]], samples: dict[int, dict[str, list[float]]]
) -> list[dict[str, Any]]:
    """One row per level: charge tps (median, per round) and history percentiles, with the ratios to
    level 0 and the verdicts (charge tps, first page and keyset deep page; the offset page is context)."""
    rows_out = []
    tps0: list[float] = [r["tps"] for r in runs if r["level"] == 0]
    hist0 = {name: ledger.percentiles(values) for name, values in samples[0].items()}
    for rows in levels:
        tps = [r["tps"] for r in runs if r["level"] == rows]
        hist = {name: ledger.percentiles(values) for name, values in samples[rows].items()}
        row: dict[str, Any] = {
            "rows": rows,
            "label": label(rows),
            "charge_tps_median": statistics.median(tps),
            "charge_tps_runs": tps,
            "charge_latency_percentiles_ms": _median_percentiles(
                [r["latency_percentiles_ms"] for r in runs if r["level"] == rows and r["latency_percentiles_ms"]]
            ),
            "history_ms": {name: {k: round(v, 4) for k, v in p.items()} for name, p in hist.items()},
        }
        ratios = {"charge_tps": row["charge_tps_median"] / statistics.median(tps0)}
        for name in hist:
            ratios[f"history_{name}"] = hist0[name]["p50"] / hist[name]["p50"]
        row["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
        row["paired_charge_ratios"] = [round(a / b, 3) for a, b in zip(tps, tps0, strict=False)]
        if rows:
            row["verdicts"] = {
                name: ("PASS" if ratios[name] >= TARGET else "MISS")
                for name in ("charge_tps", "history_first_page", "history_deep_keyset")
            }
        rows_out.append(row)
    return rows_out


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"{'ledger rows':>11}  {'charge tps':>10}  {'ratio':>5}  {'first p50/p99 ms':>17}  {'ratio':>5}"
        f"  {'keyset deep p50/p99':>19}  {'ratio':>5}  {'offset deep p50/p99':>19}  {'ratio':>5}  verdicts",
    ]
    for row in report["summary"]:
        h = row["history_ms"]
        r = row["ratios"]

        def cell(name: str, width: int, h: dict[str, Any] = h) -> str:
            return f"{h[name]['p50']:.3f}/{h[name]['p99']:.3f}".rjust(width)

        verdicts = " ".join(f"{k}:{v}" for k, v in row.get("verdicts", {}).items()) or "reference"
        lines.append(
            f"{row['label']:>11}  {row['charge_tps_median']:10,.0f}  {r['charge_tps']:5.2f}  {cell('first_page', 17)}"
            f"  {r['history_first_page']:5.2f}  {cell('deep_keyset', 19)}  {r['history_deep_keyset']:5.2f}"
            f"  {cell('deep_offset', 19)}  {r['history_deep_offset']:5.2f}  {verdicts}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="levels 0/100k/200k, 5 s runs, 1 round, 100 samples")
    parser.add_argument("--levels", type=int, nargs="+", default=None, help="ledger rows per level (must include 0)")
    parser.add_argument("--duration", type=int, default=None, help="seconds per pgbench run (default 30)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds over the levels (default 3)")
    parser.add_argument("--samples", type=int, default=None, help="history calls per page and round (default 1000)")
    parser.add_argument(
        "--plan-cache-mode",
        choices=("auto", "force_custom_plan", "force_generic_plan"),
        default=None,
        help="an experiment: the history sessions set plan_cache_mode (it reaches the plans inside billing.history)",
    )
    parser.add_argument("--results-dir", type=Path, default=ledger.RESULTS_DIR)
    args = parser.parse_args(argv)
    levels = tuple(args.levels) if args.levels else (QUICK_LEVELS if args.quick else LEVELS)
    report = run(
        duration=args.duration or (5 if args.quick else 30),
        rounds=args.rounds or (1 if args.quick else 3),
        levels=levels,
        samples=args.samples or (100 if args.quick else 1000),
        plan_cache_mode=args.plan_cache_mode,
    )
    print()
    print(format_table(report))
    print(f"ratios: tps at N / tps at 0; history p50 at 0 / p50 at N. Target >= {TARGET} at the largest level.")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"growth-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 0 if report["verify_ledger_ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ledger.BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
