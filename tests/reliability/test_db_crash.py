"""Crash the database under load: nothing acknowledged is lost, nothing is done twice, the ledger stays whole.

A private PostgreSQL server (tests/reliability/killable.py; never the shared test server) gets a migrated
database, a login of the run-time roles and 100 funded users. Then, for TOLLGATE_TORTURE_DB_CYCLES cycles,
16 clients run the mixed workload of tests/reliability/workload.py through the SQL API for
TOLLGATE_TORTURE_DURATION seconds; at a random moment within that window the postmaster and all its
processes die by SIGKILL; the server is restarted (crash recovery) and the load goes on to the end of the
window; the clients, which retry every cut call with the same idempotency key, converge to an answer
for each; then the database is checked against everything the clients were told:

- every acknowledged operation is there exactly once, under its key, with its user, amount and
  transaction id (ledger rows, holds and their states); nothing exists under a refused key;
- balances and held amounts equal what the acknowledged operations add up to;
- `billing.verify_ledger()` is empty;
- no client saw an answer a correct ledger cannot give (see `Workload.anomalies`).

The short default (3 cycles of 2 s) runs in `make test`; `make torture` runs it long.
`test_checker_catches_corruption` proves the checker: on a real database, a deleted, doubled or invented
row and a wrong balance are each reported.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from api.ledger import db as apidb
from api.ledger.roles import Authority
from api.ops import migrate
from tests.conftest import DB_DIR, _ensure_login_role
from tests.reliability.killable import KillableServer
from tests.reliability.params import PARAMS, report
from tests.reliability.workload import Problem, Workload, summarize

USERS = 100
CLIENTS = 16
DATABASE = "tollgate"
API_ROLE = "tollgate_crash_api"
CRASH_RECOVERY_LOG = "database system was not properly shut down; automatic recovery in progress"
CONVERGE_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def crash_server() -> Iterator[KillableServer]:
    server = KillableServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def crash_db(crash_server: KillableServer) -> tuple[str, str]:
    """(owner URL, URL of a login of the three run-time roles) of a database on the killable server, migrated by
    the real code. The workload credits, refunds and adjusts as well as charges: metering, payments and operator."""
    with psycopg.connect(crash_server.url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        owner_url = crash_server.url(DATABASE)
        migrate.upgrade(owner_url, DB_DIR)
        _ensure_login_role(conn, API_ROLE, *(authority.group_role for authority in Authority))
    return owner_url, crash_server.url(DATABASE, user=API_ROLE)


def _check(workload: Workload, owner_url: str, when: str) -> None:
    with apidb.connect(owner_url) as conn:
        violations = conn.execute("SELECT * FROM billing.verify_ledger()").fetchall()
        assert violations == [], f"{when}: verify_ledger(): {violations[:20]}"
        problems = workload.check(conn, verify_ledger=False)  # just run above
    assert problems == [], f"{when}: {summarize(problems)}"
    assert workload.anomalies == [], f"{when}: {workload.anomalies[:20]}"


def test_sigkill_under_load(crash_server: KillableServer, crash_db: tuple[str, str]) -> None:
    owner_url, api_url = crash_db
    began = time.monotonic()
    rng = random.Random(PARAMS.seed)
    workload = Workload(api_url, users=USERS, clients=CLIENTS, seed=PARAMS.seed)
    with apidb.connect(api_url) as conn:
        workload.prepare(conn)
    _check(workload, owner_url, "after funding")

    acked_after_restart = 0
    processes_killed = 0
    try:
        for cycle in range(1, PARAMS.db_cycles + 1):
            pid = crash_server.postmaster_pid()
            recoveries_logged = crash_server.log_text().count(CRASH_RECOVERY_LOG)
            stop = threading.Event()
            workload.start(stop)
            try:
                kill_at = rng.uniform(0.05, 1.0) * PARAMS.duration
                time.sleep(kill_at)
                processes_killed += crash_server.kill()
                acked_at_kill = workload.acknowledged
                crash_server.restart()
                time.sleep(max(0.0, PARAMS.duration - kill_at))
            finally:
                stop.set()
                workload.join(CONVERGE_TIMEOUT)
            acked_after_restart += workload.acknowledged - acked_at_kill

            # The server really died and really recovered (not a clean shutdown).
            assert crash_server.postmaster_pid() not in (None, pid)
            assert crash_server.log_text().count(CRASH_RECOVERY_LOG) == recoveries_logged + 1
            _check(workload, owner_url, f"cycle {cycle}")
    finally:
        workload.close()

    stats = workload.stats
    if PARAMS.db_cycles:
        # The kills must have cut calls in flight, or the test proved nothing about retries.
        assert stats.in_doubt > 0, "no call was in flight at any kill"
        assert acked_after_restart > 0
    recovery = crash_server.recovery_seconds
    report(
        "db_crash",
        cycles=crash_server.kills,
        duration_s=PARAMS.duration,
        users=USERS,
        clients=CLIENTS,
        ops_acknowledged=stats.acknowledged,
        ops_committed=stats.committed,
        ops_by_kind=dict(stats.by_kind),
        refusals=dict(stats.refused),
        retries=stats.retries,
        reconnects=stats.reconnects,
        in_doubt_resolved=stats.in_doubt,
        in_doubt_committed=stats.in_doubt_committed,
        in_doubt_rolled_back=stats.in_doubt_rolled_back,
        acked_after_restart=acked_after_restart,
        processes_killed=processes_killed,
        recovery_s_max=round(max(recovery, default=0.0), 3),
        recovery_s_mean=round(sum(recovery) / len(recovery), 3) if recovery else 0.0,
        violations=0,
        lost=0,
        duplicates=0,
        anomalies=0,
        wall_s=round(time.monotonic() - began, 1),
    )


# --- the checker can fail ------------------------------------------------------------------------------


def _kinds_for(problems: list[Problem], needle: str) -> set[str]:
    return {p.kind for p in problems if needle in p.key}


def test_checker_catches_corruption(db: psycopg.Connection[Any], api_url: str) -> None:
    """On the shared test server: run a little load, then damage the database and see `check` say so."""
    workload = Workload(api_url, users=10, clients=3, seed=PARAMS.seed)
    with apidb.connect(api_url) as conn:
        workload.prepare(conn)
    stop = threading.Event()
    workload.start(stop)
    try:
        deadline = time.monotonic() + 30
        while workload.acknowledged < 150 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        workload.join(60)
        workload.close()
    assert workload.anomalies == []
    assert workload.check(db) == []

    charge = next(a for a in workload.log if a.kind == "charge" and a.refused is None)
    topup = next(a for a in workload.log if a.kind == "top_up")
    released = next((a for a in workload.log if a.kind == "release"), None)

    # Past the append-only trigger and the foreign keys: this database is the test's own.
    db.execute("SET session_replication_role = replica")

    # A lost acknowledged charge.
    db.execute("DELETE FROM billing.billing_transactions WHERE type = 'charge' AND request_id = %s", (charge.key,))
    assert "lost" in _kinds_for(workload.check(db), charge.key)

    # A top-up done twice (the unique index that forbids it removed first).
    db.execute("DROP INDEX billing.billing_transactions_one_topup_per_payment")
    db.execute(
        """INSERT INTO billing.billing_transactions
               (user_id, version, type, amount_usd, balance_before_usd, balance_after_usd, payment_provider, payment_id,
                entry_hash)
           SELECT user_id, 1000000, type, amount_usd, 0, amount_usd, payment_provider, payment_id,
                  sha256('planted'::bytea)
             FROM billing.billing_transactions WHERE type = 'topup' AND payment_id = %s""",
        (topup.key,),
    )
    assert "duplicate" in _kinds_for(workload.check(db), topup.key)

    # A charge nobody was told about (e.g. a call the client saw refused, committed after all).
    phantom_key = f"{workload.run_id}-c0-999999999-charge"
    db.execute(
        """INSERT INTO billing.billing_transactions
               (user_id, version, type, amount_usd, balance_before_usd, balance_after_usd, request_id, entry_hash)
           VALUES (%s, 1000001, 'charge', -0.01, 0, -0.01, %s, sha256('planted'::bytea))""",
        (workload.user_ids[0], phantom_key),
    )
    assert "phantom" in _kinds_for(workload.check(db), phantom_key)

    # A balance off by the smallest amount there is.
    user = workload.user_ids[3]
    db.execute(
        "UPDATE billing.user_billing SET balance_usd = balance_usd + %s WHERE user_id = %s",
        (Decimal("0.00000001"), user),
    )
    assert "balance" in _kinds_for(workload.check(db), str(user))

    # A released hold gone missing, or put back to 'held'.
    if released is not None:
        db.execute("DELETE FROM billing.reservations WHERE request_id = %s", (released.key,))
        assert "lost" in _kinds_for(workload.check(db), released.key)
    hold = next(
        a
        for a in workload.log
        if a.kind == "reserve" and a.refused is None and (released is None or a.key != released.key)
    )
    db.execute("UPDATE billing.reservations SET amount_usd = amount_usd + 1 WHERE request_id = %s", (hold.key,))
    assert "mismatch" in _kinds_for(workload.check(db), hold.key)

    # And verify_ledger's findings are reported too.
    assert any(p.kind == "invariant" for p in workload.check(db))
