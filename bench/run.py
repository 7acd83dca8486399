"""Throughput benchmark of the ledger functions against the least work a durable charge can do.

Run on demand (`make bench`, `python -m bench.run` or `python bench/run.py`), never in the test
suite. Machines are noisy, so every figure that matters is a ratio against a baseline measured in
the same run, on the same server, interleaved with the candidate:

    1. a private embedded PostgreSQL 18 (api.ops.embedded, the wheel's default settings: fsync and
       synchronous_commit on) in a temporary directory, deleted at the end;
    2. a template database migrated by the real api.ops.migrate.upgrade, with 10,000 users funded
       with $1,000,000 each (billing.top_up) and limits raised (billing.update_settings) so that
       no charge is ever refused, checked by billing.verify_ledger();
    3. pgbench scenarios, each run on its own fresh `CREATE DATABASE ... TEMPLATE` clone,
       repeated --rounds times in alternating order, median tps per scenario;
    4. billing.verify_ledger() on every database the ledger functions wrote to, after its run;
    5. a table on stdout and JSON in bench/results/ledger-<timestamp>.json.

See bench/README.md for what each scenario measures and how to read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # `python bench/run.py`: make the checkout's api/ importable
    sys.path.insert(0, str(ROOT))

from api.gateway.config import load_settings  # noqa: E402
from api.ops import embedded, migrate  # noqa: E402

USERS = 10_000
FUNDING_USD = 1_000_000
LIMIT_USD = 100_000_000  # far above what any run can spend: limits never refuse
UAH_PER_USD = "41.5"  # a rate is set, as in production: every ledger row also records UAH
CHARGE_USD = "0.0003"
HOLD_USD = "0.0005"
CLIENTS = 8
THREADS = 2
PGBENCH_SCALE = 10
RESULTS_DIR = ROOT / "bench" / "results"

LEDGER_TEMPLATE = "bench_ledger_tpl"
PGBENCH_TEMPLATE = "bench_pgbench_tpl"

# The request id of every script: client id + a random 63-bit number. Ids must be unique within a
# run (a charge with a repeated id is a replay, a baseline insert a unique violation). With at most
# ~10^6 transactions per run, the chance of any collision is about n^2 / (2 * 9e18) < 1e-7, and two
# clients can never collide because the client id is part of the id.
_PREAMBLE = """\\set n random(1, {users})
\\set r random(1, 9000000000000000000)
"""
_REQUEST_ID = ":client_id::text || '-' || :r::text"
# Both the baseline and the functions pay the same lookup from user number to uuid.
_USER_ID = "(SELECT id FROM public.bench_users WHERE n = :n)"

BASELINE_SQL = f"""WITH u AS (
    UPDATE billing.user_billing
       SET balance_usd = balance_usd - {CHARGE_USD}, version = version + 1
     WHERE user_id = {_USER_ID}
    RETURNING user_id, version, balance_usd
)
INSERT INTO billing.billing_transactions
    (user_id, version, type, amount_usd, balance_before_usd, balance_after_usd, request_id, entry_hash)
SELECT user_id, version, 'charge', -{CHARGE_USD}, balance_usd + {CHARGE_USD}, balance_usd, {_REQUEST_ID},
       '\\x{"00" * 32}'::bytea
  FROM u;
"""
CHARGE_SQL = f"SELECT * FROM billing.charge({_USER_ID}, {_REQUEST_ID}, {CHARGE_USD});\n"
RESERVE_SETTLE_SQL = (
    f"SELECT * FROM billing.reserve({_USER_ID}, {_REQUEST_ID}, {HOLD_USD});\n"
    f"SELECT * FROM billing.settle({_REQUEST_ID}, {CHARGE_USD});\n"
)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    template: str
    script: str | None  # None: pgbench's built-in simple-update (-N)
    users: int = USERS  # the script draws its user among 1..users
    baseline: str | None = None
    target: float | None = None
    uses_ledger_functions: bool = False  # verify_ledger() must stay empty after the run
    clients: int = CLIENTS  # pgbench -c
    script_name: str | None = None  # the script file, when shared with another scenario (default: name)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("baseline_10k", "baseline UPDATE+INSERT, 10k users", LEDGER_TEMPLATE, BASELINE_SQL),
    Scenario(
        "charge_10k",
        "billing.charge, 10k users",
        LEDGER_TEMPLATE,
        CHARGE_SQL,
        baseline="baseline_10k",
        target=0.85,
        uses_ledger_functions=True,
    ),
    Scenario(
        "reserve_settle_10k",
        "reserve + settle (pair), 10k users",
        LEDGER_TEMPLATE,
        RESERVE_SETTLE_SQL,
        baseline="baseline_10k",
        target=0.45,
        uses_ledger_functions=True,
    ),
    Scenario("baseline_1", "baseline UPDATE+INSERT, 1 account", LEDGER_TEMPLATE, BASELINE_SQL, users=1),
    Scenario(
        "charge_1",
        "billing.charge, 1 account",
        LEDGER_TEMPLATE,
        CHARGE_SQL,
        users=1,
        baseline="baseline_1",
        target=0.90,
        uses_ledger_functions=True,
    ),
    Scenario("pgbench_N", "pgbench -N simple-update, scale 10", PGBENCH_TEMPLATE, None),
)
DEFAULT_SCENARIOS = SCENARIOS

# Where contention bends the curve (bench/harness.py): the baseline and reserve + settle with more
# clients, on the same 10,000 users. The 8-client figures are baseline_10k and reserve_settle_10k.
CONTENTION_CLIENTS = (32, 64)
CONTENTION_SCENARIOS: tuple[Scenario, ...] = tuple(
    scenario
    for clients in CONTENTION_CLIENTS
    for scenario in (
        Scenario(
            f"baseline_10k_c{clients}",
            f"baseline UPDATE+INSERT, 10k users, {clients} clients",
            LEDGER_TEMPLATE,
            BASELINE_SQL,
            clients=clients,
            script_name="baseline_10k",
        ),
        Scenario(
            f"reserve_settle_10k_c{clients}",
            f"reserve + settle (pair), 10k users, {clients} clients",
            LEDGER_TEMPLATE,
            RESERVE_SETTLE_SQL,
            baseline=f"baseline_10k_c{clients}",
            clients=clients,
            uses_ledger_functions=True,
            script_name="reserve_settle_10k",
        ),
    )
)
ALL_SCENARIOS = DEFAULT_SCENARIOS + CONTENTION_SCENARIOS


@dataclass
class RunResult:
    scenario: str
    round: int
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    seconds: float
    verify_problems: int | None = None
    clients: int = CLIENTS
    latency_percentiles_ms: dict[str, float] | None = None  # from pgbench's transaction log (percentiles=True)


@dataclass
class Summary:
    scenario: str
    title: str
    tps_median: float
    tps_runs: list[float]
    latency_ms_median: float
    baseline: str | None = None
    ratio: float | None = None
    paired_ratios: list[float] = field(default_factory=list)
    target: float | None = None
    verdict: str | None = None
    clients: int = CLIENTS
    latency_percentiles_ms: dict[str, float] | None = None  # medians over the rounds, per percentile


class BenchError(RuntimeError):
    pass


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _url(base_url: str, dbname: str) -> str:
    params = {k: str(v) for k, v in conninfo_to_dict(base_url).items()}
    params["dbname"] = dbname
    return make_conninfo(**params)


def _admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


class Server:
    """The embedded server of this run, plus the client binaries shipped with it."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.params = {k: str(v) for k, v in conninfo_to_dict(admin_url).items()}
        self.pgbench = embedded.BIN_DIR / "pgbench"

    def url(self, dbname: str) -> str:
        return _url(self.admin_url, dbname)

    def execute(self, statement: sql.Composed | str) -> None:
        with _admin(self.admin_url) as conn:
            conn.execute(statement.encode() if isinstance(statement, str) else statement)

    def create_database(self, name: str, template: str | None = None) -> str:
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        self.execute(stmt)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def pgbench_args(self, dbname: str) -> list[str]:
        args = [str(self.pgbench)]
        if "host" in self.params:
            args += ["-h", self.params["host"]]
        if "port" in self.params:
            args += ["-p", self.params["port"]]
        if "user" in self.params:
            args += ["-U", self.params["user"]]
        return [*args, dbname]

    def settings(self) -> dict[str, str]:
        names = (
            "server_version",
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "full_page_writes",
            "shared_buffers",
            "max_wal_size",
            "checkpoint_timeout",
            "wal_level",
            "max_connections",
        )
        with _admin(self.admin_url) as conn:
            rows = conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", (list(names),)
            ).fetchall()
        out = {str(name): str(value) for name, value in rows}
        return {name: out[name] for name in names if name in out}


def build_ledger_template(server: Server, db_dir: Path, name: str = LEDGER_TEMPLATE) -> dict[str, Any]:
    started = time.monotonic()
    url = server.create_database(name)
    migrated = migrate.upgrade(url, db_dir)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.bench_users (n integer PRIMARY KEY, id uuid NOT NULL UNIQUE)")
        conn.execute("SELECT billing.set_exchange_rate('UAH', %s::numeric, now() - interval '1 day')", (UAH_PER_USD,))
        with conn.transaction():
            conn.execute(
                "INSERT INTO public.bench_users (n, id)"
                " SELECT n, billing.ensure_account('bench-user-' || n) FROM generate_series(1, %s) n",
                (USERS,),
            )
            conn.execute(
                "SELECT count(*) FROM public.bench_users u,"
                " billing.top_up(u.id, %s::numeric, 'bench', 'seed-' || u.n) t",
                (FUNDING_USD,),
            )
            conn.execute(
                "SELECT count(*) FROM public.bench_users u, billing.update_settings(u.id, %s::numeric, %s::numeric) s",
                (LIMIT_USD, LIMIT_USD),
            )
        conn.execute("VACUUM ANALYZE")
        problems = _verify(conn)
        accounts = _scalar(conn, "SELECT count(*) FROM billing.user_billing")
        funded = _scalar(conn, "SELECT count(*) FROM billing.user_billing WHERE balance_usd = %s", (FUNDING_USD,))
    if problems:
        raise BenchError(f"verify_ledger() reports {problems} problems on the freshly seeded template")
    if accounts != USERS or funded != USERS:
        raise BenchError(f"seeding made {accounts} accounts, {funded} funded; expected {USERS}")
    return {
        "migrations_applied": migrated,
        "accounts": accounts,
        "funded_usd_each": FUNDING_USD,
        "limits_usd": LIMIT_USD,
        "uah_per_usd": UAH_PER_USD,
        "verify_ledger_problems": problems,
        "seconds": round(time.monotonic() - started, 1),
    }


def build_pgbench_template(server: Server) -> None:
    server.create_database(PGBENCH_TEMPLATE)
    cmd = [*server.pgbench_args(PGBENCH_TEMPLATE)]
    cmd[1:1] = ["-i", "-q", "-s", str(PGBENCH_SCALE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"pgbench -i failed:\n{proc.stderr}")


def _scalar(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] | None = None) -> int:
    row = conn.execute(query.encode() if params is None else query, params).fetchone()
    assert row is not None
    return int(row[0])


def _verify(conn: psycopg.Connection[Any]) -> int:
    return _scalar(conn, "SELECT count(*) FROM billing.verify_ledger()")


_PATTERNS = {
    "tps": re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.M),
    "latency_ms": re.compile(r"^latency average = ([\d.]+) ms", re.M),
    "transactions": re.compile(r"^number of transactions actually processed: (\d+)", re.M),
    "failed": re.compile(r"^number of failed transactions: (\d+)", re.M),
}


def parse_pgbench(output: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for key, pattern in _PATTERNS.items():
        match = pattern.search(output)
        if match is None:
            if key == "failed":  # older pgbench does not print it
                values[key] = 0
                continue
            raise BenchError(f"pgbench output has no {key}:\n{output}")
        values[key] = float(match.group(1))
    return values


def percentiles(values: list[float], points: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles of values (any unit), plus max and count; empty input gives {}."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {f"p{p:g}": ordered[min(len(ordered) - 1, max(0, int(len(ordered) * p / 100 + 0.5) - 1))] for p in points}
    out["max"] = ordered[-1]
    out["count"] = len(ordered)
    return out


def read_pgbench_logs(log_dir: Path) -> dict[str, float]:
    """Per-transaction latencies of pgbench -l (field 3, microseconds) as percentiles in ms."""
    latencies: list[float] = []
    for path in log_dir.glob("pgbench_log*"):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append(int(fields[2]) / 1000)
    return {k: round(v, 3) for k, v in percentiles(latencies).items()}


def run_scenario(
    server: Server,
    scenario: Scenario,
    round_no: int,
    duration: int,
    script_dir: Path,
    latency_log: bool = False,
    dbname: str | None = None,
) -> RunResult:
    """One pgbench run of a scenario on a fresh clone of its template (dropped afterwards). With
    latency_log, pgbench writes every transaction's latency (-l) and the result has p50/p95/p99/max.
    With dbname, the run uses that existing database instead (bench/growth.py) and keeps it."""
    if dbname is not None:
        return _run_pgbench(server, scenario, round_no, duration, script_dir, latency_log, dbname)
    dbname = f"bench_run_{scenario.name}_{round_no}"
    server.drop_database(dbname)
    server.create_database(dbname, template=scenario.template)
    try:
        return _run_pgbench(server, scenario, round_no, duration, script_dir, latency_log, dbname)
    finally:
        server.drop_database(dbname)


def _run_pgbench(
    server: Server, scenario: Scenario, round_no: int, duration: int, script_dir: Path, latency_log: bool, dbname: str
) -> RunResult:
    # Each run starts right after a checkpoint: the clone's pages are clean and every run pays
    # the same full-page writes for the pages it touches first.
    server.execute("CHECKPOINT")
    cmd = server.pgbench_args(dbname)
    options = ["-n", "-M", "prepared", "-c", str(scenario.clients), "-j", str(THREADS), "-T", str(duration)]
    if scenario.script is None:
        options.append("-N")
    else:
        script = script_dir / f"{scenario.script_name or scenario.name}.sql"
        options += ["-f", str(script)]
    log_dir = Path(tempfile.mkdtemp(prefix="pgbench-log-", dir=script_dir)) if latency_log else None
    if log_dir is not None:
        options += ["-l", f"--log-prefix={log_dir / 'pgbench_log'}"]
    cmd[1:1] = options
    try:
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
        output = proc.stdout + proc.stderr
        if proc.returncode != 0 or "aborted" in proc.stderr:
            raise BenchError(f"pgbench failed for {scenario.name} (exit {proc.returncode}):\n{output}")
        values = parse_pgbench(output)
        result = RunResult(
            scenario=scenario.name,
            round=round_no,
            tps=values["tps"],
            latency_ms=values["latency_ms"],
            transactions=int(values["transactions"]),
            failed=int(values["failed"]),
            seconds=round(seconds, 1),
            clients=scenario.clients,
            latency_percentiles_ms=None if log_dir is None else read_pgbench_logs(log_dir),
        )
    finally:
        if log_dir is not None:
            shutil.rmtree(log_dir, ignore_errors=True)
    if result.failed:
        raise BenchError(f"{scenario.name}: {result.failed} transactions failed:\n{output}")
    if scenario.uses_ledger_functions:
        with psycopg.connect(server.url(dbname), autocommit=True) as conn:
            # verify_ledger() joins the whole ledger: with the template's statistics (10k rows
            # where there are now 100k+) the planner picks nested loops that take minutes.
            conn.execute("ANALYZE")
            result.verify_problems = _verify(conn)
    return result


def write_scripts(script_dir: Path, scenarios: tuple[Scenario, ...] | None = None) -> None:
    for scenario in SCENARIOS if scenarios is None else scenarios:
        if scenario.script is not None:
            text = _PREAMBLE.format(users=scenario.users) + scenario.script
            (script_dir / f"{scenario.script_name or scenario.name}.sql").write_text(text, encoding="utf-8")


def round_order(round_no: int, scenarios: tuple[Scenario, ...] | None = None) -> list[Scenario]:
    """Scenarios in the order of this round: reversed every other round, so that each baseline runs
    as often before its candidate as after it (drift on the machine cancels out)."""
    order = list(SCENARIOS if scenarios is None else scenarios)
    return order if round_no % 2 == 1 else order[::-1]


def _median_percentiles(runs: list[RunResult]) -> dict[str, float] | None:
    measured = [r.latency_percentiles_ms for r in runs if r.latency_percentiles_ms]
    if not measured:
        return None
    return {key: statistics.median(m[key] for m in measured) for key in measured[0]}


def summarise(results: list[RunResult], scenarios: tuple[Scenario, ...] | None = None) -> list[Summary]:
    chosen = SCENARIOS if scenarios is None else scenarios
    by_name: dict[str, list[RunResult]] = {}
    for result in results:
        by_name.setdefault(result.scenario, []).append(result)
    summaries: dict[str, Summary] = {}
    for scenario in chosen:
        runs = sorted(by_name.get(scenario.name, []), key=lambda r: r.round)
        if not runs:
            continue
        summaries[scenario.name] = Summary(
            scenario=scenario.name,
            title=scenario.title,
            tps_median=statistics.median(r.tps for r in runs),
            tps_runs=[r.tps for r in runs],
            latency_ms_median=statistics.median(r.latency_ms for r in runs),
            baseline=scenario.baseline,
            target=scenario.target,
            clients=scenario.clients,
            latency_percentiles_ms=_median_percentiles(runs),
        )
    for scenario in chosen:
        summary = summaries.get(scenario.name)
        if summary is None or scenario.baseline is None or scenario.baseline not in summaries:
            continue
        base = summaries[scenario.baseline]
        summary.ratio = summary.tps_median / base.tps_median
        summary.paired_ratios = [round(c / b, 3) for c, b in zip(summary.tps_runs, base.tps_runs, strict=False)]
        if scenario.target is not None:
            summary.verdict = "PASS" if summary.ratio >= scenario.target else "MISS"
    return list(summaries.values())


def format_table(summaries: list[Summary]) -> str:
    header = ("scenario", "tps (median)", "runs", "lat ms", "ratio", "paired", "target", "")
    rows: list[tuple[str, ...]] = [header]
    for s in summaries:
        rows.append(
            (
                s.title,
                f"{s.tps_median:,.0f}",
                " ".join(f"{t:,.0f}" for t in s.tps_runs),
                f"{s.latency_ms_median:.2f}",
                "" if s.ratio is None else f"{s.ratio:.3f}",
                " ".join(f"{r:.2f}" for r in s.paired_ratios),
                "" if s.target is None else f">= {s.target:.2f}",
                s.verdict or ("baseline" if s.scenario.startswith("baseline") else "context"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) if i in (0, 2, 5, 7) else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def code_version(db_dir: Path) -> dict[str, Any]:
    """Which ledger code was measured: the checkout's commit, whether db/ had uncommitted changes,
    and a digest of every file under db/ (the functions are re-applied from there on each run)."""
    digest = hashlib.sha256()
    for path in sorted(db_dir.rglob("*.sql")):
        digest.update(str(path.relative_to(db_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    version: dict[str, Any] = {"db_dir": str(db_dir), "db_sha256": digest.hexdigest()[:16]}
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", str(db_dir)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return version
    version["git_head"] = head
    version["db_uncommitted_files"] = len(dirty)
    return version


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Throughput of billing.charge / reserve+settle as ratios to a minimal durable charge.",
    )
    parser.add_argument("--duration", type=int, default=None, help="seconds per pgbench run (default 30)")
    parser.add_argument("--quick", action="store_true", help="5-second runs (a smoke test, not a measurement)")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of every scenario (default 3)")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated scenario names to run (baselines of the chosen ones are added); also"
        " " + ", ".join(s.name for s in CONTENTION_SCENARIOS),
    )
    parser.add_argument(
        "--percentiles", action="store_true", help="log every transaction (pgbench -l): latency p50/p95/p99/max"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 2 when a target is missed")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 5 if args.quick else 30
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    return args


def select_scenarios(only: str | None) -> tuple[Scenario, ...]:
    """The scenarios named in `only` (comma-separated) plus their baselines, in the order of
    ALL_SCENARIOS; None: the default six."""
    if only is None:
        return DEFAULT_SCENARIOS
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    known = {s.name for s in ALL_SCENARIOS}
    unknown = wanted - known
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    wanted |= {s.baseline for s in ALL_SCENARIOS if s.name in wanted and s.baseline}
    return tuple(s for s in ALL_SCENARIOS if s.name in wanted)


class LedgerEnv:
    """One private embedded PostgreSQL with the templates built on first use: shared by the sections
    of bench/harness.py (ledger, contention, growth, open-loop SQL)."""

    def __init__(self, tmp: Path, settings: Any, server: Server) -> None:
        self.tmp = tmp
        self.settings = settings
        self.server = server
        self.server_settings = server.settings()
        self.code = code_version(settings.db_dir)
        self.script_dir = tmp / "scripts"
        self.script_dir.mkdir(exist_ok=True)
        self._seed: dict[str, Any] | None = None
        self._pgbench_template = False

    def ledger_template(self) -> dict[str, Any]:
        """Seed LEDGER_TEMPLATE once; returns what the seeding did."""
        if self._seed is None:
            _log(f"seeding {USERS:,} funded accounts into template {LEDGER_TEMPLATE} ...")
            self._seed = build_ledger_template(self.server, self.settings.db_dir)
            _log(f"  done in {self._seed['seconds']} s, verify_ledger() empty")
        return self._seed

    def pgbench_template(self) -> None:
        if not self._pgbench_template:
            _log(f"pgbench -i -s {PGBENCH_SCALE} into {PGBENCH_TEMPLATE} ...")
            build_pgbench_template(self.server)
            self._pgbench_template = True


@contextlib.contextmanager
def ledger_env() -> Iterator[LedgerEnv]:
    """Start a private embedded PostgreSQL in a temporary directory; stop it and delete it at the end."""
    if shutil.which(str(embedded.BIN_DIR / "pgbench")) is None:
        raise SystemExit(f"pgbench not found in {embedded.BIN_DIR}")
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    settings = load_settings({"TOLLGATE_DATA_DIR": str(tmp)})
    try:
        _log(f"starting a private embedded PostgreSQL in {settings.pgdata}")
        env = LedgerEnv(tmp, settings, Server(embedded.start(settings)))
        _log(
            "server: PostgreSQL {server_version}, fsync={fsync}, synchronous_commit={synchronous_commit},"
            " wal_sync_method={wal_sync_method}, shared_buffers={shared_buffers}".format(**env.server_settings)
        )
        yield env
    finally:
        _log("stopping the server and deleting its directory")
        try:
            embedded.stop(settings)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def run(
    duration: int = 30,
    rounds: int = 3,
    only: str | None = None,
    scenarios: tuple[Scenario, ...] | None = None,
    latency_log: bool = False,
    env: LedgerEnv | None = None,
) -> dict[str, Any]:
    """Run the scenarios (`scenarios`, else those named in `only`, else the default six) in
    alternating rounds; return the report (what the CLI writes as JSON). With env, on its server;
    otherwise on a server of its own. Raises BenchError when pgbench fails."""
    chosen = scenarios if scenarios is not None else select_scenarios(only)
    if env is None:
        with ledger_env() as own:
            return run(duration, rounds, scenarios=chosen, latency_log=latency_log, env=own)
    started_at = dt.datetime.now(dt.UTC)
    seed = env.ledger_template()
    if any(s.template == PGBENCH_TEMPLATE for s in chosen):
        env.pgbench_template()
    write_scripts(env.script_dir, chosen)
    results: list[RunResult] = []
    total = len(chosen) * rounds
    _log(
        f"{total} pgbench runs of {duration} s (-c {'/'.join(sorted({str(s.clients) for s in chosen}, key=int))}"
        f" -j {THREADS} -M prepared)"
    )
    for round_no in range(1, rounds + 1):
        for scenario in round_order(round_no, chosen):
            result = run_scenario(env.server, scenario, round_no, duration, env.script_dir, latency_log)
            results.append(result)
            verify = "" if result.verify_problems is None else f", verify_ledger: {result.verify_problems}"
            pct = result.latency_percentiles_ms
            tail = "" if not pct else f"  p50 {pct['p50']:.2f} p99 {pct['p99']:.2f} ms"
            _log(
                f"  round {round_no} {scenario.name:<24} {result.tps:10,.0f} tps"
                f"  {result.latency_ms:7.2f} ms{tail}{verify}"
            )
    scripts = {
        name: (env.script_dir / name).read_text(encoding="utf-8")
        for name in sorted({f"{s.script_name or s.name}.sql" for s in chosen if s.script is not None})
    }
    summaries = summarise(results, chosen)
    verify_failures = [r for r in results if r.verify_problems]
    return {
        "started_at": started_at.isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "server": env.server_settings,
        "code": env.code,
        "pgbench": {"clients": CLIENTS, "threads": THREADS, "duration_s": duration, "mode": "prepared"},
        "rounds": rounds,
        "seed": seed,
        "scripts": scripts,
        "runs": [asdict(r) for r in results],
        "summary": [asdict(s) for s in summaries],
        "verify_ledger_ok": not verify_failures,
        "verify_failures": [r.scenario for r in verify_failures],
        "checked_runs": sum(1 for r in results if r.verify_problems is not None),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args.duration, args.rounds, args.only, latency_log=args.percentiles)
    summaries = [Summary(**s) for s in report["summary"]]
    server_settings = report["server"]
    code = report["code"]
    print()
    print(
        f"tollgate ledger benchmark: PostgreSQL {server_settings['server_version']} (embedded), durable:"
        f" fsync={server_settings['fsync']}, synchronous_commit={server_settings['synchronous_commit']}"
    )
    print(
        f"pgbench -n -M prepared -c {CLIENTS} -j {THREADS} -T {args.duration}, {args.rounds} rounds,"
        f" median tps; {os.cpu_count()} CPUs; each run on a fresh clone of the seeded template"
    )
    dirty = code.get("db_uncommitted_files")
    print(
        f"ledger code: db/ sha256 {code['db_sha256']}, git {code.get('git_head', '?')}"
        + (f" + {dirty} uncommitted files in db/" if dirty else "")
    )
    print()
    print(format_table(summaries))
    print()
    print("ratio = median tps / median tps of its baseline; paired = per-round ratios; reserve+settle counts")
    print("a pair as one transaction. Request ids: client id + random(1, 9e18): collisions negligible.")
    for s in noisy(summaries):
        print(
            f"NOISY: {s.scenario} paired ratios range {min(s.paired_ratios):.2f}..{max(s.paired_ratios):.2f};"
            " was something else running? Use more --rounds or a quieter machine."
        )
    if report["verify_failures"]:
        print(
            f"verify_ledger() FAILED after {len(report['verify_failures'])} runs:"
            f" {', '.join(report['verify_failures'])}"
        )
    else:
        print(f"verify_ledger() empty after all {report['checked_runs']} runs of the ledger functions.")

    stamp = dt.datetime.fromisoformat(report["started_at"]).strftime("%Y%m%dT%H%M%SZ")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"ledger-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}")
    if report["verify_failures"]:
        return 1
    if args.fail_on_miss and any(s.verdict == "MISS" for s in summaries):
        return 2
    return 0


def noisy(summaries: list[Summary]) -> list[Summary]:
    """Scenarios whose paired (per-round) ratios span more than 0.15: the machine was busy."""
    return [s for s in summaries if len(s.paired_ratios) > 1 and max(s.paired_ratios) - min(s.paired_ratios) > 0.15]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
