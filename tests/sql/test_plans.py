"""Query plans the hot paths depend on, checked after ANALYZE as a busy server would have it.

A plan regression does not break a result, only the speed, so no other test would notice. These tests
read which indexes a call actually scanned (pg_stat_user_indexes, reset first) rather than the text of
an EXPLAIN: they hold for the statements inside the functions, with the plans PL/pgSQL caches.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from api.ledger import sync as ledger
from tests.conftest import Connect
from tests.helpers import funded_user


def _index_use(conn: psycopg.Connection[Any], table: str) -> dict[str, tuple[int, int]]:
    """{index: (scans, index entries read)} of a billing table, as the statistics system has them now."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(
        "SELECT indexrelname, idx_scan, idx_tup_read FROM pg_stat_user_indexes"
        " WHERE schemaname = 'billing' AND relname = %s",
        (table,),
    ).fetchall()
    return {name: (scans, read) for name, scans, read in rows}


def _index_use_since(
    conn: psycopg.Connection[Any], table: str, before: dict[str, tuple[int, int]], expect: str
) -> dict[str, tuple[int, int]]:
    """What each index of `table` did since `before`, once index `expect` shows scans (stats arrive late)."""
    deadline = time.monotonic() + 5
    while True:
        now = _index_use(conn, table)
        delta = {name: (scans - before[name][0], read - before[name][1]) for name, (scans, read) in now.items()}
        if delta[expect][0] > 0 or time.monotonic() > deadline:
            return delta
        time.sleep(0.05)


def _flush_stats(conn: psycopg.Connection[Any]) -> None:
    # A backend reports its counters when it goes idle, at most once a second, unless forced.
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


def test_settle_finds_its_hold_by_request_id_after_analyze_saw_no_open_hold(db: Any, connect: Connect) -> None:
    """`WHERE request_id = $1 AND status = 'held'` also matches the partial index
    reservations_open_by_expiry, which the planner may prefer once ANALYZE has seen (almost) no open
    hold, and then reads every entry of it (open holds plus dead entries of settled ones) per settle."""
    user = funded_user(db, Decimal(100_000))
    ledger.update_settings(db, user, daily_limit_usd=Decimal(100_000), monthly_limit_usd=Decimal(100_000))
    db.execute("ALTER TABLE billing.reservations SET (autovacuum_enabled = false)")  # keep the dead entries
    db.execute(
        "SELECT billing.reserve(%(u)s, 'old-' || i, 0.01), billing.settle('old-' || i, 0.005)"
        " FROM generate_series(1, 5000) i",
        {"u": user},
    )
    db.execute("ANALYZE billing.reservations")  # sees 5,000 settled holds and no open one
    for i in range(30):
        ledger.reserve(db, user, f"open-{i}", Decimal("0.01"))
    _flush_stats(db)
    before = _index_use(db, "reservations")

    worker = connect()
    for i in range(20):  # past PL/pgSQL's five custom plans, into the cached generic plan
        ledger.reserve(worker, user, f"new-{i}", Decimal("0.01"))
        assert ledger.settle(worker, f"new-{i}", Decimal("0.005")).status == "settled"
    _flush_stats(worker)

    use = _index_use_since(db, "reservations", before, "reservations_request_id_key")
    assert use["reservations_request_id_key"][0] >= 20, use
    assert use["reservations_open_by_expiry"] == (0, 0), use


@pytest.mark.xfail(
    strict=True,
    reason="known plan hazard, not fixed: see the docstring and db/functions/history.sql",
)
def test_history_of_a_user_who_had_most_rows_at_analyze_does_not_walk_the_primary_key(
    db: Any, connect: Connect
) -> None:
    """When the statistics say the user owns most of the table (bench/growth.py, the 0-row level after a
    charge run), the planner expects 50 of its rows among the newest ids and walks the primary key
    backwards, filtering on user_id, through every newer row of other users (20-37 ms a page).

    Not fixed: the one rewrite that removes the primary-key plan (the user's rows as a row-comparison range
    of the (user_id, id) index, without `user_id = $1`) loses the equality's row estimate, and at 5M ledger
    rows the planner then read every row of the user through a bitmap scan and sorted them (60 ms a page
    instead of 0.34 ms, bench/growth.py) — worse, and for every large ledger. Fresh statistics
    (autovacuum's ANALYZE) end the hazard; it needs a user who owned a large share of the table at the
    last ANALYZE and has been idle since."""
    heavy = funded_user(db, Decimal(100_000))
    ledger.update_settings(db, heavy, daily_limit_usd=Decimal(100_000), monthly_limit_usd=Decimal(100_000))
    db.execute("SELECT billing.charge(%(u)s, 'h-' || i, 0.001) FROM generate_series(1, 3000) i", {"u": heavy})
    db.execute("ALTER TABLE billing.billing_transactions SET (autovacuum_enabled = false)")
    db.execute("ANALYZE billing.billing_transactions")  # the heavy user owns ~all rows
    db.execute(
        "SELECT billing.top_up(billing.ensure_account('other-' || (i % 50)), 1, 'bench', 'other-' || i)"
        " FROM generate_series(1, 12000) i"
    )  # 12,000 newer rows of other users; no ANALYZE since
    _flush_stats(db)
    before = _index_use(db, "billing_transactions")

    reader = connect()
    for _ in range(3):
        assert len(ledger.history(reader, heavy, limit=50)) == 50
    _flush_stats(reader)
    use = _index_use_since(db, "billing_transactions", before, "billing_transactions_user_id")
    assert use["billing_transactions_pkey"] == (0, 0), use
    assert use["billing_transactions_user_id"][0] >= 3, use
