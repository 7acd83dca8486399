"""Connection faults between the gateway and the ledger: the client cannot know whether a commit landed.

A fault-injecting proxy (tests/reliability/faultproxy.py) sits between a real `tollgate run` and the
test PostgreSQL server and, PARAMS.fault_rounds times, delays a batch, resets the connection, drops a
committing batch before it reaches the server, or forwards it and cuts the connection before the
answer comes back. Several clients call metered tools meanwhile and retry with the same
Idempotency-Key whenever the gateway answers that the ledger is unavailable. After the spool has
drained and `tollgate ledger reconcile` has run, every call id is audited (tests/reliability/callaudit.py):
one charge if the tool ran and the call was answered charged/pending, none if it never ran, no hold
held, nothing pending, verify_ledger empty, balance = funding - charges.

The same faults on the direct SQL path: a psycopg client calling billing.charge / billing.top_up
through the proxy with a fixed key, cut after its COMMIT landed (or before it did), reconnects and
retries with the same key: one ledger row, and the replay returns the original result.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api.gateway.http.envelope import scoped_request_id
from api.gateway.spool import Spool
from api.ledger import db as apidb
from api.ledger import sync as ledger
from tests.gateway.server import start_gateway, tollgate_command
from tests.reliability.callaudit import Call, Caller, audit, fund_users
from tests.reliability.faultproxy import KINDS, Fault, FaultProxy
from tests.reliability.params import PARAMS, report

CALLERS = 4
FUNDING = Decimal("1000")


@pytest.fixture
def proxy(pg_server_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(pg_server_url) as running:
        yield running


def reconcile(owner_url: str, data_dir: Path, *, fail_stale: bool = True) -> str:
    """`tollgate ledger reconcile` on the gateway's data dir, directly to the database; with `fail_stale`,
    `--fail-stale-minutes 0` also closes every call still pending (no gateway may be running)."""
    env = {**os.environ, "TOLLGATE_DATABASE_URL": owner_url, "TOLLGATE_DATA_DIR": str(data_dir)}
    stale = ["--fail-stale-minutes", "0"] if fail_stale else []
    result = subprocess.run(
        [*tollgate_command(), "ledger", "reconcile", *stale],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_gateway_calls_survive_connection_faults(db_url: str, proxy: FaultProxy, tmp_path: Path) -> None:
    rng = random.Random(PARAMS.seed)
    data_dir = tmp_path / "gateway"
    server = start_gateway(proxy.proxy_url(db_url), data_dir, TOLLGATE_POOL_TIMEOUT_SECONDS="2")
    stop = threading.Event()
    callers: list[Caller] = []
    not_taken: list[Fault] = []
    injected: list[Fault] = []
    try:
        with apidb.connect(db_url) as owner:
            users = fund_users(owner, CALLERS, FUNDING, "fault")
        callers = [
            Caller(server.base_url, server.token(subject), user_id, random.Random(rng.random()), stop, prefix=f"c{n}")
            for n, (subject, user_id) in enumerate(users)
        ]
        for caller in callers:
            caller.start()
        # Every kind against each target in turn (shuffled), so a short run covers them all.
        plan = list(itertools.product(KINDS, ("begin_request", "complete_request", None)))
        rng.shuffle(plan)
        for round_number in range(PARAMS.fault_rounds):
            kind, target = plan[round_number % len(plan)]
            fault = proxy.arm(Fault(kind, match=target, delay=rng.uniform(0.05, 0.6)))
            if fault.taken.wait(15):
                injected.append(fault)
            else:
                proxy.disarm()
                not_taken.append(fault)
            time.sleep(rng.uniform(0, 0.05))
        time.sleep(0.3)  # a clean tail: calls that began under the last fault finish normally
    finally:
        stop.set()
        for caller in callers:
            caller.join(60)
        proxy.disarm()
    try:
        assert not any(caller.is_alive() for caller in callers), "a caller hung"
        spool = Spool(data_dir / "spool")
        wait_until(lambda: not spool.pending(), 60, "the gateway to replay its spool")
    finally:
        assert server.stop() == 0, server.logs()
    calls = [call for caller in callers for call in caller.calls]
    with apidb.connect(db_url) as owner:
        # Still pending now: calls whose begin_request committed while its answer was lost. The gateway
        # answered them "unavailable" (503) and refused their retries as still running (409): none ran.
        pending = {row.request_id for row in ledger.unbilled_calls(owner)}
        ran_but_pending = [call.request_id for call in calls if call.request_id in pending and call.ran]
        output = reconcile(db_url, data_dir)
        result = audit(owner, calls, {user_id: FUNDING for _, user_id in users})
        leftovers = owner.execute(
            "SELECT (SELECT count(*) FROM billing.cost_tracking WHERE status = 'pending'),"
            " (SELECT count(*) FROM billing.reservations WHERE status = 'held')"
        ).fetchone()
    unexpected = [line for caller in callers for line in caller.unexpected]
    faults = {kind: proxy.stats[kind] for kind in (*KINDS, "landed")}
    violations = result.violations + unexpected + [f"{key}: answered as run, still pending" for key in ran_but_pending]
    report(
        "connection_faults",
        faults=faults,
        faults_not_taken=len(not_taken),
        calls=len(calls),
        outcomes=dict(result.outcomes),
        answers=dict(sorted(collections_count(calls).items())),
        stale_closed=len(pending),
        replays_refused=sum(caller.replays_refused for caller in callers),
        charged_usd=result.charged_usd,
        violations=len(violations),
    )
    assert violations == [], "\n".join(violations[:50])
    assert leftovers == (0, 0)
    assert not not_taken, f"faults never taken: {not_taken}"
    assert sum(proxy.stats[kind] for kind in KINDS) == PARAMS.fault_rounds
    assert f"closed {len(pending)} stale call(s) as failed" in output
    # The run exercised what it claims to: faults of each kind, commits that landed unheard, retries.
    if PARAMS.fault_rounds >= len(plan):
        assert all(proxy.stats[kind] > 0 for kind in KINDS), proxy.stats
        assert proxy.stats["landed"] > 0
    assert result.outcomes["charged"] > 0


def collections_count(calls: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for call in calls:
        for answer in call.answers:
            counts[answer] = counts.get(answer, 0) + 1
    return counts


# --- the direct SQL path ---------------------------------------------------------------------------


def sql_client(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    return apidb.connect(url, autocommit=autocommit, application_name="direct-sql")


def ledger_rows(owner: psycopg.Connection[Any], column: str, value: str) -> int:
    row = owner.execute(f"SELECT count(*) FROM billing.billing_transactions WHERE {column} = %s", (value,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("operation", ["charge", "top_up"])
@pytest.mark.parametrize(
    ("kind", "in_transaction"),
    [
        ("drop_after", False),  # autocommit: the Sync that ends the call commits it
        ("drop_after", True),  # BEGIN; SELECT billing.…; COMMIT — the COMMIT is cut off
        ("drop_before", False),
        ("drop_before", True),
        ("reset", False),
        ("delay", False),
    ],
)
def test_sql_retry_after_an_unknown_commit_is_exactly_once(
    db_url: str, proxy: FaultProxy, operation: str, kind: str, in_transaction: bool
) -> None:
    with apidb.connect(db_url) as owner:
        user_id = ledger.ensure_account(owner, f"sql-{uuid.uuid4().hex[:10]}")
        ledger.top_up(owner, user_id, Decimal("5"), "test", uuid.uuid4().hex)
        key = f"fixed-{uuid.uuid4().hex}"
        column = "request_id" if operation == "charge" else "payment_id"

        def call(conn: psycopg.Connection[Any]) -> Any:
            if operation == "charge":
                return ledger.charge(conn, user_id, key, Decimal("0.0003"), "direct call")
            return ledger.top_up(conn, user_id, Decimal("2.5"), "faultpay", key)

        url = proxy.proxy_url(db_url)
        fault = proxy.arm(
            Fault(kind, application_name="direct-sql", match="COMMIT" if in_transaction else f"billing.{operation}")
        )
        first: Any = None
        heard = False  # the client saw its call (and COMMIT) succeed
        with sql_client(url, autocommit=not in_transaction) as conn:
            try:
                first = call(conn)
                if in_transaction:
                    conn.commit()
                heard = True
            except psycopg.OperationalError:
                pass
        assert fault.taken.is_set(), f"the {kind} fault was never applied"
        landed = ledger_rows(owner, column, key)
        if kind in ("drop_before", "reset"):
            assert not heard and landed == 0, "the call must not have reached the ledger"
        elif kind == "drop_after":
            assert not heard, "the client must not have heard the commit"
            assert fault.landed and landed == 1, "the commit must have landed, unheard"
        else:
            assert heard and not first.replayed and landed == 1

        with sql_client(url) as conn:  # reconnect and retry with the same key
            retry = call(conn)
            again = call(conn)
        assert ledger_rows(owner, column, key) == 1
        assert again.replayed and again.transaction_id == retry.transaction_id
        assert again.balance_after_usd == retry.balance_after_usd
        if kind in ("drop_after", "delay"):
            assert retry.replayed, "the commit had landed: the retry must be a replay"
        else:
            assert not retry.replayed, "nothing had landed: the retry is the first call"
        if first is not None and landed:  # the first call's own result, committed (heard or not)
            assert retry.transaction_id == first.transaction_id
            assert retry.balance_after_usd == first.balance_after_usd
        expected = Decimal("5") + (Decimal("-0.0003") if operation == "charge" else Decimal("2.5"))
        assert ledger.summary(owner, user_id)["balance_usd"] == expected
        assert ledger.verify_ledger(owner) == []


# --- the checks themselves -------------------------------------------------------------------------


def test_the_audit_catches_each_kind_of_violation(db_url: str) -> None:
    """The per-call audit must fail on what it claims to check, or the fault tests prove nothing."""
    with apidb.connect(db_url) as owner:
        ledger.set_tool_pricing(owner, "priced", Decimal("0.02"))
        user_id = ledger.ensure_account(owner, f"audit-{uuid.uuid4().hex[:10]}")
        ledger.top_up(owner, user_id, Decimal("1"), "test", uuid.uuid4().hex)

        def call(key: str, *answers: str) -> Call:
            return Call(key, user_id, "priced", Decimal("0.02"), True, list(answers))

        for key in ("billed", "quiet", "fine"):
            ledger.begin_request(owner, key, "priced", user_id)
            ledger.complete_request(owner, key, True)
        ledger.begin_request(owner, "stuck", "priced", user_id)
        wrong_tx = call("billed", "charged")
        wrong_tx.transaction_id = -1
        calls = [
            wrong_tx,
            call("quiet", "unavailable", "already"),
            call("stuck", "lost:ReadError"),
            call("ghost", "pending"),
        ]
        clean = audit(owner, [call("fine", "pending")], {})
        assert clean.violations == [] and clean.outcomes == {"charged": 1}
        ledger.adjust(owner, user_id, Decimal("-0.01"), "stray", "test", uuid.uuid4().hex)
        found = "\n".join(audit(owner, calls, {user_id: Decimal("1")}).violations)
    for expected in (
        "billed (priced, answers ['charged']): answered with transaction -1",
        "quiet (priced, answers ['unavailable', 'already']): never answered as run",
        "stuck (priced, answers ['lost:ReadError']): its hold is still held",
        "stuck (priced, answers ['lost:ReadError']): its tracking row is still pending",
        "ghost (priced, answers ['pending']): answered as run, but the ledger never tracked it",
        "2 ledger row(s) of these users belong to no call of the run",  # "fine"'s charge, the adjustment
        f"user {user_id}: balance 0.93000000, funding - charges = 0.96000000",
        f"user {user_id}: 0.02000000 still held",
    ):
        assert expected in found, f"{expected!r} not in:\n{found}"


def test_a_retry_after_a_lost_begin_request_answer_runs_the_call(
    db_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """The ledger flaps while a call begins: the begin commits unheard, then the connection fails a few
    more times (more than the gateway's own resends absorb), so the caller gets 503 and retries with the
    same key. The gateway remembers the request id it gave up on, so the retry runs the call, charged
    once, instead of being refused 409 "still running" until the hold expires."""
    server = start_gateway(proxy.proxy_url(db_url), tmp_path / "gateway")
    try:
        with apidb.connect(db_url) as owner:
            ((subject, _),) = fund_users(owner, 1, Decimal("1"), "lostbegin")
            with server.client(server.token(subject)) as client:
                landed = proxy.arm(Fault("drop_after", match="begin_request"))
                for _ in range(5):
                    proxy.arm(Fault("drop_before", match="begin_request"))
                first = client.post("/api/tools/priced", json={"text": "x"}, headers={"Idempotency-Key": "lost-begin"})
                proxy.disarm()
                assert landed.taken.is_set() and landed.landed
                assert first.status_code == 503, first.text  # "not run, nothing charged; retry shortly"
                request_id = scoped_request_id(f"user:{subject}", "lost-begin")
                assert ledger.unbilled_calls(owner)[0].request_id == request_id  # yet it is pending, held
                retry = client.post("/api/tools/priced", json={"text": "x"}, headers={"Idempotency-Key": "lost-begin"})
                again = client.post("/api/tools/priced", json={"text": "x"}, headers={"Idempotency-Key": "lost-begin"})
        assert retry.status_code == 200, retry.text
        assert retry.json()["billing"]["status"] == "charged"
        assert again.status_code == 409, again.text  # and then it is a finished call like any other
        with apidb.connect(db_url) as owner:
            charges = owner.execute(
                "SELECT count(*) FROM billing.billing_transactions WHERE request_id = %s", (request_id,)
            ).fetchone()
            assert charges == (1,)
            assert ledger.unbilled_calls(owner) == []
            assert ledger.verify_ledger(owner) == []
    finally:
        server.stop()


def test_a_replay_of_a_spooled_call_whose_begin_answer_is_lost_is_not_run_again(
    db_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A call ran and its completion was spooled (the ledger failed after the tool): the call is pending.
    The caller replays its key, and the replay's begin_request answer is lost. The replayed `pending`
    answer to the gateway's own resend looks like its own call, but the tool ran already (its completion
    is in the spool), so the replay is answered 409 and the tool is not run a second time."""
    server = start_gateway(proxy.proxy_url(db_url), tmp_path / "gateway")
    try:
        with apidb.connect(db_url) as owner:
            ((subject, _),) = fund_users(owner, 1, Decimal("1"), "spooled")
            request_id = scoped_request_id(f"user:{subject}", "spooled")
            with server.client(server.token(subject)) as client:
                for _ in range(60):  # the completion, then the spool's retries (every second) fail
                    proxy.arm(Fault("drop_before", match="complete_request"))
                first = client.post("/api/tools/priced", json={"text": "x"}, headers={"Idempotency-Key": "spooled"})
                assert first.status_code == 200, first.text
                assert first.json()["billing"]["status"] == "pending"
                landed = proxy.arm(Fault("drop_after", match="begin_request"))
                replay = client.post("/api/tools/priced", json={"text": "x"}, headers={"Idempotency-Key": "spooled"})
                assert landed.taken.is_set()
                proxy.disarm()
        assert replay.status_code == 409, replay.text
        assert replay.json()["error"]["code"] == "already_completed"
        spool = Spool(tmp_path / "gateway" / "spool")
        wait_until(lambda: not spool.pending(), 30, "the gateway to replay its spool")
        with apidb.connect(db_url) as owner:
            charges = owner.execute(
                "SELECT count(*) FROM billing.billing_transactions WHERE request_id = %s", (request_id,)
            ).fetchone()
            assert charges == (1,)
            assert ledger.verify_ledger(owner) == []
        assert server.logs().count("spooled for reconciliation") == 1  # the tool's completion failed once
    finally:
        server.stop()


def test_a_lost_begin_request_answer_is_resent_by_the_gateway(db_url: str, proxy: FaultProxy, tmp_path: Path) -> None:
    """One lost answer: the gateway sends begin_request again itself, recognises its own pending call
    in the replay and runs it; the caller sees one ordinary charged answer."""
    server = start_gateway(proxy.proxy_url(db_url), tmp_path / "gateway")
    try:
        with apidb.connect(db_url) as owner:
            ((subject, _),) = fund_users(owner, 1, Decimal("1"), "resent")
            with server.client(server.token(subject)) as client:
                landed = proxy.arm(Fault("drop_after", match="begin_request"))
                first = client.post("/api/tools/priced", json={"text": "x"}, headers={"Idempotency-Key": "resent"})
                proxy.disarm()
                assert landed.taken.is_set() and landed.landed
                assert first.status_code == 200, first.text
                assert first.json()["billing"]["status"] == "charged"
            charges = owner.execute(
                "SELECT count(*) FROM billing.billing_transactions WHERE request_id = %s",
                (scoped_request_id(f"user:{subject}", "resent"),),
            ).fetchone()
            assert charges == (1,)
            assert ledger.verify_ledger(owner) == []
    finally:
        server.stop()
