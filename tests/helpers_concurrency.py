"""Shared tools of the concurrency and randomized-workload tests (tests/sql/test_concurrency.py, test_model.py).

* ``open_connections``: N extra connections (one per worker thread; psycopg connections are never shared
  between threads), configured like ``api.ledger.db.connect`` (JSON numbers as Decimal).
* ``run_together``: runs one callable per connection in its own thread, all released at once by a
  ``threading.Barrier``, and collects each thread's result or exception (nothing escapes a thread).
* ``RowGate``: holds ``FOR UPDATE`` locks on ``user_billing`` rows from a separate transaction so that the
  concurrent calls all queue on the same lock before it is let go: the race is then certain, not hoped for.
* ``account`` / ``count_rows`` / ``set_clock`` / ``assert_ledger_ok``: inspection through the owner connection.
* ``cloned_database``: a fresh database cloned from the migrated template, for code that cannot use the
  function-scoped ``db_url`` fixture (the Hypothesis state machine makes one database per example).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from api.ledger import db as api_db
from api.ledger import sync as ledger
from api.ledger.errors import BillingError

Connect = Callable[..., psycopg.Connection[Any]]
Work = Callable[[int, psycopg.Connection[Any]], Any]

THREAD_TIMEOUT = 60.0


@dataclass
class Outcome:
    """What one thread got: the callable's return value, or the exception it raised."""

    index: int
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def open_connections(connect: Connect, urls: str | Sequence[str], n: int) -> list[psycopg.Connection[Any]]:
    """`n` autocommit connections, cycling through `urls`, each configured like ``api.ledger.db.connect``."""
    pool = [urls] if isinstance(urls, str) else list(urls)
    conns = [connect(pool[i % len(pool)]) for i in range(n)]
    for conn in conns:
        api_db.configure(conn)
        conn.execute("SELECT 1")  # the session is fully set up before the race starts
    return conns


def _lock_waiters(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    ).fetchone()
    assert row is not None
    return int(row[0])


class RowGate:
    """Locks `user_ids`' user_billing rows in an open transaction of its own (owner) connection.

    ``open(n)`` waits until `n` other sessions wait on a lock, then commits, releasing them all at once.
    ``waiters`` is the most sessions seen waiting (tests assert that the race really happened)."""

    def __init__(self, connect: Connect, user_ids: Sequence[uuid.UUID]) -> None:
        self.conn = connect(autocommit=False)
        self.probe = connect()
        self.user_ids = sorted(user_ids)
        self.waiters = 0

    def close(self) -> None:
        self.conn.execute(
            "SELECT user_id FROM billing.user_billing WHERE user_id = ANY(%s) ORDER BY user_id FOR UPDATE",
            (self.user_ids,),
        )

    def open(self, expected: int, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done():
            # pg_stat_activity is a snapshot per transaction: ask from an autocommit session.
            self.waiters = max(self.waiters, _lock_waiters(self.probe))
            if self.waiters >= expected:
                break
            time.sleep(0.02)
        self.conn.commit()


def run_together(
    conns: Sequence[psycopg.Connection[Any]],
    work: Work,
    *,
    gate: RowGate | None = None,
    gate_waiters: int | None = None,
    timeout: float = THREAD_TIMEOUT,
) -> list[Outcome]:
    """Run ``work(i, conns[i])`` in one thread per connection, released together by a barrier.

    With a gate, its rows are locked before the threads start and released once `gate_waiters`
    (default: all threads) sessions queue on a lock. Returns one Outcome per thread, in order.
    """
    n = len(conns)
    barrier = threading.Barrier(n)
    outcomes = [Outcome(i) for i in range(n)]
    finished = threading.Event()
    remaining = [n]
    count_lock = threading.Lock()

    def body(i: int) -> None:
        try:
            barrier.wait(timeout)
            outcomes[i].value = work(i, conns[i])
        except BaseException as error:
            outcomes[i].error = error
        finally:
            with count_lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    finished.set()

    if gate is not None:
        gate.close()
    threads = [threading.Thread(target=body, args=(i,), name=f"worker-{i}", daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    if gate is not None:
        gate.open(n if gate_waiters is None else gate_waiters, finished.is_set)
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"threads still running after {timeout}s: {stuck}"
    return outcomes


def errors_of(outcomes: Sequence[Outcome]) -> list[BaseException]:
    return [o.error for o in outcomes if o.error is not None]


def values_of(outcomes: Sequence[Outcome]) -> list[Any]:
    return [o.value for o in outcomes if o.error is None]


def assert_only(outcomes: Sequence[Outcome], *allowed: type[BaseException]) -> None:
    """Every thread either succeeded or raised one of `allowed` (a deadlock or any other error fails)."""
    unexpected = [o for o in outcomes if o.error is not None and not isinstance(o.error, allowed)]
    assert not unexpected, "unexpected errors: " + "; ".join(
        f"thread {o.index}: {type(o.error).__name__}: {o.error}" for o in unexpected[:5]
    )


def assert_no_deadlock(outcomes: Sequence[Outcome]) -> None:
    deadlocks = [o for o in outcomes if isinstance(o.error, psycopg.errors.DeadlockDetected)]
    assert not deadlocks, f"{len(deadlocks)} deadlock(s), first: {deadlocks[0].error}"


def account(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> dict[str, Any]:
    """The user's user_billing row as stored (owner connection)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM billing.user_billing WHERE user_id = %s", (user_id,))
        row = cur.fetchone()
    assert row is not None, f"no user_billing row for {user_id}"
    return row


def count_rows(conn: psycopg.Connection[Any], table: str, where: str = "true", params: Sequence[Any] = ()) -> int:
    query = sql.SQL("SELECT count(*) FROM billing.{} WHERE ").format(sql.Identifier(table)) + sql.SQL(where)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def set_clock(conn: psycopg.Connection[Any], when: dt.datetime | None) -> None:
    """Pin billing.config.clock_override (owner connection); None returns to the real clock."""
    conn.execute("UPDATE billing.config SET clock_override = %s", (when,))


def assert_ledger_ok(conn: psycopg.Connection[Any]) -> None:
    violations = ledger.verify_ledger(conn)
    assert violations == [], "verify_ledger() found:\n" + "\n".join(map(str, violations))


def funded_user(conn: psycopg.Connection[Any], subject: str, amount: Decimal | int) -> uuid.UUID:
    user_id = ledger.ensure_account(conn, subject)
    if amount:
        ledger.top_up(conn, user_id, Decimal(amount), "setup", f"fund-{subject}")
    return user_id


def billing_error(error: BaseException | None) -> BillingError:
    assert isinstance(error, BillingError), f"expected a BillingError, got {error!r}"
    return error


@contextlib.contextmanager
def cloned_database(server_url: str, template: str) -> Iterator[str]:
    """A database cloned from `template` for the duration of the block; yields its (owner) conninfo."""
    name = f"t_sm_{uuid.uuid4().hex}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
