"""What the database role split (migration 0006) costs the hot path: the same scripts as two logins.

Run on demand (`make bench-roles`, or `python -m bench.role_cost`), never in the test suite. One private
embedded PostgreSQL (bench/run.py's: durable), one seeded template (10,000 funded accounts). The gateway
logs in as tollgate_gw_metering, a plain login that is a member of the NOLOGIN group role
tollgate_metering, which may EXECUTE exactly the call path's functions; before 0006 (and in bench/run.py
today) the scripts run as the owner/superuser, for which PostgreSQL skips every privilege check. The
login is made by the real api.ledger.roles.provision_login_roles over the owner's URL, its URL derived by
api.ledger.roles.derive_login_url, and api.ledger.roles.check_login must accept it (so it is exactly what
the gateway would use, not a stand-in).

The same pgbench scripts (billing.charge on 10k users and on one account, reserve + settle; bench/run.py)
run as each login on fresh clones of the template, alternating which login goes first every round; the
figures are the ratio of median tps, metering / superuser, the per-round ratios (their spread is the
noise), and PostgreSQL's CPU per transaction. verify_ledger() must be empty after every run.

Only difference besides the login: the scripts map user number -> uuid through public.bench_users (a bench
table, not Tollgate's), which the metering login may SELECT by a grant made here. The superuser skips that
table's privilege check, so the pgbench ratio includes one relation check per statement the gateway does
not make (it passes the uuid). The in-server check (--loop-calls) has no such lookup: a DO block calls
billing.charge N times per transaction as each role, on one connection, CPU of that backend from /proc,
so it isolates the per-call privilege checks from commits, WAL flushes and the client.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from api.ledger import roles
from api.ledger.roles import Authority
from bench import run as ledger
from bench.webhooks import postgres_cpu

SCRIPTS = {
    "charge_10k": (ledger.CHARGE_SQL, ledger.USERS),
    "charge_1": (ledger.CHARGE_SQL, 1),
    "reserve_settle_10k": (ledger.RESERVE_SETTLE_SQL, ledger.USERS),
}
LOGINS = ("superuser", "metering")

# N charges in one transaction, as the connection's role: the executor (and so the EXECUTE check) starts
# once per call, as it does for each pgbench statement; `PERFORM * FROM` is not a plpgsql simple
# expression, whose executor state would be kept for the whole transaction.
LOOP_SQL = """DO $$
DECLARE
    ids uuid[] := ARRAY(SELECT id FROM public.bench_users ORDER BY n);
BEGIN
    FOR i IN 1..{calls} LOOP
        PERFORM * FROM billing.charge(ids[1 + i % {users}], 'loop-' || i, {amount});
    END LOOP;
END
$$"""


class LoginServer(ledger.Server):
    """bench/run.py's server, with pgbench logged in as `user`; CHECKPOINT, ANALYZE and verify_ledger()
    stay on the owner's URL (the metering login may do none of them)."""

    def __init__(self, admin_url: str, user: str) -> None:
        super().__init__(admin_url)
        self.login = user

    def pgbench_args(self, dbname: str) -> list[str]:
        args = super().pgbench_args(dbname)
        if "-U" in args:
            args[args.index("-U") + 1] = self.login
        else:
            args[1:1] = ["-U", self.login]
        return args


def provision(env: ledger.LedgerEnv) -> dict[str, Any]:
    """The metering login, made the way `tollgate migrate` makes it, allowed to read public.bench_users,
    checked by the gateway's own check_login; and who owns billing.charge (its body runs as that role,
    whichever login calls it: SECURITY DEFINER)."""
    owner_url = env.server.url(ledger.LEDGER_TEMPLATE)
    problems = roles.provision_login_roles(owner_url, [Authority.METERING])
    if problems:
        raise SystemExit(f"cannot make the metering login: {problems}")
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT SELECT ON public.bench_users TO {}").format(sql.Identifier(Authority.METERING.login_role))
        )
        row = conn.execute(
            "SELECT p.proowner::regrole::text, r.rolsuper, p.prosecdef FROM pg_proc p"
            " JOIN pg_roles r ON r.oid = p.proowner WHERE p.oid = 'billing.charge'::regproc"
        ).fetchone()
        owner = conn.execute("SELECT current_user::text, usesuper FROM pg_user WHERE usename = current_user").fetchone()
    assert row is not None and owner is not None
    metering_url = roles.derive_login_url(owner_url, Authority.METERING)
    with psycopg.connect(metering_url, autocommit=True) as conn:
        roles.check_login(conn, Authority.METERING)  # raises UnsafeLogin unless exactly the metering authority
        who = conn.execute("SELECT session_user::text").fetchone()
        try:
            conn.execute("SELECT billing.verify_ledger()")
        except psycopg.errors.InsufficientPrivilege:
            refused = True
        else:
            refused = False
    if not refused:
        raise SystemExit("the metering login may call billing.verify_ledger(): the split is not in force")
    return {
        "superuser_login": owner[0],
        "superuser_is_superuser": bool(owner[1]),
        "metering_login": who[0] if who else None,
        "metering_check_login": "accepted",
        "metering_refused_operator_function": refused,
        "charge_owner": row[0],
        "charge_owner_is_superuser": bool(row[1]),
        "charge_security_definer": bool(row[2]),
        "extra_grant": f"SELECT ON public.bench_users TO {Authority.METERING.login_role} (bench lookup table)",
    }


def measure(server: ledger.Server, env: ledger.LedgerEnv, scenario: ledger.Scenario, round_no: int,
            duration: int) -> tuple[float, float]:
    """One pgbench run on a fresh clone: tps, and PostgreSQL's CPU microseconds per transaction (every backend,
    reaped or alive, and the background processes). verify_ledger() (as the owner) must be empty afterwards."""
    dbname = f"bench_role_{scenario.name}"
    env.server.drop_database(dbname)
    env.server.create_database(dbname, template=scenario.template)
    try:
        before = postgres_cpu(env.settings.pgdata)
        result = ledger.run_scenario(server, scenario, round_no, duration, env.script_dir, dbname=dbname)
        time.sleep(0.3)  # pgbench's backends exit and are reaped
        used = postgres_cpu(env.settings.pgdata) - before
    finally:
        env.server.drop_database(dbname)
    if result.verify_problems != 0:
        raise SystemExit(f"{scenario.name}: verify_ledger() reports {result.verify_problems} problems")
    return result.tps, 1e6 * used / result.transactions


def _backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_once(env: ledger.LedgerEnv, login: str, calls: int) -> tuple[float, float]:
    """`calls` billing.charge calls in one DO block as `login` on a fresh clone: that backend's CPU and the
    wall time, microseconds per call; verify_ledger() empty afterwards."""
    dbname = "bench_role_loop"
    env.server.drop_database(dbname)
    owner_url = env.server.create_database(dbname, template=ledger.LEDGER_TEMPLATE)
    url = owner_url if login == "superuser" else roles.derive_login_url(owner_url, Authority.METERING)
    try:
        env.server.execute("CHECKPOINT")
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            pid = int(row[0])
            cpu, wall = _backend_cpu(pid), time.perf_counter()
            conn.execute(LOOP_SQL.format(calls=calls, users=ledger.USERS, amount=ledger.CHARGE_USD).encode())
            wall, cpu = time.perf_counter() - wall, _backend_cpu(pid) - cpu
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute("ANALYZE")
            problems = ledger._verify(conn)
            charged = ledger._scalar(conn, "SELECT count(*) FROM billing.billing_transactions WHERE type = 'charge'")
    finally:
        env.server.drop_database(dbname)
    if problems or charged != calls:
        raise SystemExit(f"loop as {login}: {charged} charges of {calls}, verify_ledger() {problems} problems")
    return 1e6 * cpu / calls, 1e6 * wall / calls


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds per pgbench run (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating pgbench rounds (default 5; 0: none)")
    parser.add_argument("--loop-calls", type=int, default=20_000,
                        help="billing.charge calls per in-server DO loop (default 20,000; 0: skip it)")
    parser.add_argument("--loop-rounds", type=int, default=4, help="alternating rounds of the DO loop (default 4)")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 0 or (args.rounds == 0 and args.loop_calls <= 0):
        parser.error("--duration must be at least 1, --rounds at least 0 (0: the in-server loop alone)")
    tps: dict[str, dict[str, list[float]]] = {name: {login: [] for login in LOGINS} for name in SCRIPTS}
    cpu: dict[str, dict[str, list[float]]] = {name: {login: [] for login in LOGINS} for name in SCRIPTS}
    loop: dict[str, dict[str, list[float]]] = {login: {"cpu_us": [], "wall_us": []} for login in LOGINS}
    # The 1-minute load average after each run: on a shared machine, where the spread comes from.
    load: dict[str, dict[str, list[float]]] = {name: {login: [] for login in LOGINS} for name in SCRIPTS}
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with ledger.ledger_env() as env:
        seed = env.ledger_template()
        facts = provision(env)
        ledger._log(f"logins: {facts}")
        servers = {
            "superuser": env.server,
            "metering": LoginServer(env.server.admin_url, Authority.METERING.login_role),
        }
        scenarios = {
            name: ledger.Scenario(name, name, ledger.LEDGER_TEMPLATE, script, users=users, uses_ledger_functions=True)
            for name, (script, users) in SCRIPTS.items()
        }
        ledger.write_scripts(env.script_dir, tuple(scenarios.values()))
        for round_no in range(1, args.rounds + 1):
            order = list(LOGINS) if round_no % 2 else list(reversed(LOGINS))
            for name, scenario in scenarios.items():
                for login in order:
                    t, c = measure(servers[login], env, scenario, round_no, args.duration)
                    tps[name][login].append(t)
                    cpu[name][login].append(c)
                    load[name][login].append(round(os.getloadavg()[0], 2))
                    ledger._log(
                        f"round {round_no} {name:<20} {login:<9} {t:>9,.0f} tps {c:>7,.1f} us PostgreSQL CPU each"
                        f" (load {load[name][login][-1]:.1f})"
                    )
        for round_no in range(1, args.loop_rounds + 1 if args.loop_calls > 0 else 1):
            for login in LOGINS if round_no % 2 else reversed(LOGINS):
                cpu_us, wall_us = loop_once(env, login, args.loop_calls)
                loop[login]["cpu_us"].append(round(cpu_us, 2))
                loop[login]["wall_us"].append(round(wall_us, 2))
                ledger._log(f"loop {round_no} {login:<9} {cpu_us:>7.2f} us CPU / call, {wall_us:>7.2f} us wall / call")
        server_settings = env.server_settings
        code = env.code
    report: dict[str, Any] = {
        "started_at": started,
        "machine": {"cpus": os.cpu_count()},
        "server": server_settings,
        "code": code,
        "seed": seed,
        "logins": facts,
        "pgbench": {"clients": ledger.CLIENTS, "threads": ledger.THREADS, "duration_s": args.duration,
                    "mode": "prepared"},
        "rounds": args.rounds,
        "scenarios": {},
    }
    for name in SCRIPTS if args.rounds else ():
        su, me = tps[name]["superuser"], tps[name]["metering"]
        su_cpu, me_cpu = cpu[name]["superuser"], cpu[name]["metering"]
        report["scenarios"][name] = {
            "superuser_tps": round(statistics.median(su), 1),
            "metering_tps": round(statistics.median(me), 1),
            "ratio": round(statistics.median(me) / statistics.median(su), 3),
            "per_round_ratio": [round(m / s, 3) for s, m in zip(su, me, strict=True)],
            "runs": tps[name],
            "superuser_cpu_us": _median(su_cpu),
            "metering_cpu_us": _median(me_cpu),
            "cpu_ratio": round(statistics.median(me_cpu) / statistics.median(su_cpu), 3),
            "per_round_cpu_ratio": [round(m / s, 3) for s, m in zip(su_cpu, me_cpu, strict=True)],
            "cpu_runs": {login: [round(v, 1) for v in values] for login, values in cpu[name].items()},
            "load1_after_runs": load[name],
        }
    if loop["superuser"]["cpu_us"]:
        su_loop, me_loop = loop["superuser"]["cpu_us"], loop["metering"]["cpu_us"]
        report["loop"] = {
            "calls": args.loop_calls,
            "rounds": args.loop_rounds,
            "runs": loop,
            "superuser_cpu_us": round(statistics.median(su_loop), 2),
            "metering_cpu_us": round(statistics.median(me_loop), 2),
            "difference_us": round(statistics.median(me_loop) - statistics.median(su_loop), 2),
            "cpu_ratio": round(statistics.median(me_loop) / statistics.median(su_loop), 3),
            "per_round_cpu_ratio": [round(m / s, 3) for s, m in zip(su_loop, me_loop, strict=True)],
        }

    print(f"\nrole split cost: metering login ({Authority.METERING.login_role}) vs the owner/superuser "
          f"({facts['superuser_login']}); median of {args.rounds} alternating rounds of {args.duration} s,"
          f" pgbench -c {ledger.CLIENTS} -j {ledger.THREADS} -M prepared, {os.cpu_count()} CPUs")
    if report["scenarios"]:
        print(f"{'scenario':<20} {'super tps':>10} {'meter tps':>10} {'ratio':>6} {'CPU us super':>13} "
              f"{'meter':>7} {'ratio':>6}  tps ratio per round / CPU ratio per round")
    for name, row in report["scenarios"].items():
        print(f"{name:<20} {row['superuser_tps']:>10,.0f} {row['metering_tps']:>10,.0f} {row['ratio']:>6.3f} "
              f"{row['superuser_cpu_us']:>13,.1f} {row['metering_cpu_us']:>7,.1f} {row['cpu_ratio']:>6.3f}  "
              f"{row['per_round_ratio']} / {row['per_round_cpu_ratio']}")
    if "loop" in report:
        lp = report["loop"]
        print(f"in-server DO loop, {lp['calls']:,} billing.charge per transaction, backend CPU per call (median of"
              f" {lp['rounds']}): superuser {lp['superuser_cpu_us']:.2f} us, metering {lp['metering_cpu_us']:.2f} us,"
              f" difference {lp['difference_us']:+.2f} us, ratio {lp['cpu_ratio']:.3f}; per round"
              f" {lp['per_round_cpu_ratio']}")
    print("verify_ledger() empty after every run.")
    ledger.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ledger.RESULTS_DIR / f"role-{started}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"results: {path.relative_to(ledger.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
