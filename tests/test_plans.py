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

from api import ledger
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


def _flush_stats(conn: psycopg.Connection[Any]) -> None:
    # A backend reports its counters when it goes idle, at most once a second, unless forced.
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


def test_settle_finds_its_hold_by_request_id_after_analyze_saw_no_open_hold(db: Any, connect: Connect) -> None:
    """Regression: `WHERE request_id = $1 AND status = 'held'` matched the partial index
    reservations_open_by_expiry, which the planner preferred once ANALYZE had seen (almost) no open
    hold, and then read every entry of it (open holds plus dead entries of settled ones) per settle."""
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
    db.execute("SELECT pg_stat_reset_single_table_counters('billing.reservations'::regclass)")

    worker = connect()
    for i in range(20):  # past PL/pgSQL's five custom plans, into the cached generic plan
        ledger.reserve(worker, user, f"new-{i}", Decimal("0.01"))
        assert ledger.settle(worker, f"new-{i}", Decimal("0.005")).status == "settled"
    _flush_stats(worker)

    deadline = time.monotonic() + 5
    use = _index_use(db, "reservations")
    while use["reservations_request_id_key"][0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        use = _index_use(db, "reservations")
    assert use["reservations_request_id_key"][0] >= 20, use
    assert use["reservations_open_by_expiry"] == (0, 0), use
