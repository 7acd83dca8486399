"""Helpers shared by the tiers (tests/sql, tests/gateway, tests/payments, tests/reliability, tests/ops).

Fixtures live in conftest.py; these are plain functions. The ones that read tables directly must be
given the owner (superuser) connection: the tables are private to every run-time role.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg

from api.abuse.config import PaymentRules
from api.gateway.config import DEFAULT_DB_DIR as DB_DIR
from api.ledger import sync as ledger

Conn = psycopg.Connection[Any]

# Every table of schema billing, in a fixed order. A test that expects "nothing written" compares a
# snapshot of all of them, so a refusal that leaves any trace (a reaped hold, a counter rolled over,
# an updated_at bumped) is caught, not only an extra ledger row.
BILLING_TABLES = (
    "config",
    "users",
    "user_billing",
    "billing_transactions",
    "reservations",
    "cost_tracking",
    "tool_pricing",
    "exchange_rates",
    "api_keys",
    "payment_intents",
    "payment_events",
    "payment_reversals",
    "anonymous_usage",
    "abuse_events",
    "account_flags",
    "spend_buckets",
    "velocity_state",
)

UTC = dt.UTC

# Amounts every money argument must refuse with InvalidAmount (BL006), whatever its sign rule.
NON_FINITE_OR_MALFORMED = (
    None,
    Decimal("NaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    Decimal("1.123456789"),
    Decimal("1e12"),
    Decimal("-1e12"),
)
# ... and the ones refused where an amount must be greater than zero.
BAD_POSITIVE_AMOUNTS = (*NON_FINITE_OR_MALFORMED, Decimal(0), Decimal("-0.00000001"), Decimal(-1))
# ... where an amount may be zero but not negative.
BAD_NON_NEGATIVE_AMOUNTS = (*NON_FINITE_OR_MALFORMED, Decimal("-0.00000001"), Decimal(-1))

BAD_IDENTIFIERS = ("", "   ", "x" * 201)

# The payment fraud rules' knobs ([abuse.payments], billing.abuse_policy 'payments.<knob>'). Tests of other
# things (many top-ups of one new account, spending a fresh card top-up at once) turn them off in their
# set-up, never by weakening the defaults; tests/payments/test_fraud_*.py test the rules themselves.
PAYMENT_KNOBS = tuple(item.name for item in dataclasses.fields(PaymentRules))
# The same, for a gateway subprocess: its start-up writes its configuration to billing.abuse_policy.
PAYMENT_RULES_OFF_ENV = {f"TOLLGATE_ABUSE_PAYMENTS_{knob.upper()}": "0" for knob in PAYMENT_KNOBS}


def payment_rules_off(conn: Conn) -> None:
    """Every payment fraud rule off in this database (each figure 0), as an operator would set it."""
    for knob in PAYMENT_KNOBS:
        ledger.set_abuse_policy(conn, f"payments.{knob}", 0, "test")


def snapshot(conn: Conn) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every billing table, ordered by the first column (owner connection)."""
    return {
        table: conn.execute(f"SELECT * FROM billing.{table} ORDER BY 1").fetchall() for table in BILLING_TABLES
    }


def counts(conn: Conn) -> dict[str, int]:
    """Row count of every billing table (owner connection)."""
    result: dict[str, int] = {}
    for table in BILLING_TABLES:
        row = conn.execute(f"SELECT count(*) FROM billing.{table}").fetchone()
        assert row is not None
        result[table] = int(row[0])
    return result


@contextmanager
def nothing_written(conn: Conn, ignore: tuple[str, ...] = ()) -> Iterator[None]:
    """Asserts that the block leaves every billing table (but those in `ignore`) exactly as it found it."""
    before = snapshot(conn)
    yield
    after = snapshot(conn)
    changed = [table for table in BILLING_TABLES if before[table] != after[table] and table not in ignore]
    assert not changed, f"tables changed by a call that should have written nothing: {changed}"


def account_row(conn: Conn, user_id: uuid.UUID) -> dict[str, Any]:
    """The user's user_billing row as a dict (owner connection)."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute("SELECT * FROM billing.user_billing WHERE user_id = %s", (user_id,)).fetchone()
    assert row is not None, f"no user_billing row for {user_id}"
    return row


def ledger_rows(conn: Conn, user_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    """Ledger rows (of one user, or all) in id order (owner connection)."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        if user_id is None:
            return cur.execute("SELECT * FROM billing.billing_transactions ORDER BY id").fetchall()
        return cur.execute(
            "SELECT * FROM billing.billing_transactions WHERE user_id = %s ORDER BY id", (user_id,)
        ).fetchall()


def reservation_row(conn: Conn, request_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute("SELECT * FROM billing.reservations WHERE request_id = %s", (request_id,)).fetchone()
    assert row is not None, f"no reservation for {request_id}"
    return row


def tracking_row(conn: Conn, request_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute("SELECT * FROM billing.cost_tracking WHERE request_id = %s", (request_id,)).fetchone()
    assert row is not None, f"no cost_tracking row for {request_id}"
    return row


def set_clock(conn: Conn, when: dt.datetime | None) -> None:
    """Moves the functions' test clock (billing.config.clock_override); None restores real time."""
    conn.execute("UPDATE billing.config SET clock_override = %s", (when,))


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    """An aware UTC datetime, for the test clock."""
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def new_user(conn: Conn, external_id: str | None = None) -> uuid.UUID:
    return ledger.ensure_account(conn, external_id or f"user-{uuid.uuid4().hex[:12]}")


def funded_user(conn: Conn, amount: Decimal | int = Decimal(100), external_id: str | None = None) -> uuid.UUID:
    """A new account topped up with `amount` USD (one 'topup' ledger row when amount > 0)."""
    user_id = new_user(conn, external_id)
    if amount:
        ledger.top_up(conn, user_id, Decimal(amount), "test", f"fund-{uuid.uuid4().hex}")
    return user_id


def violations(conn: Conn) -> list[ledger.Violation]:
    return ledger.verify_ledger(conn)


def assert_ledger_consistent(conn: Conn) -> None:
    found = violations(conn)
    assert found == [], "verify_ledger() reports:\n" + "\n".join(
        f"  {v.invariant} user={v.user_id} tx={v.transaction_id}: {v.detail}" for v in found
    )


def walk_decimals(value: Any) -> Iterator[Any]:
    """Every scalar inside a parsed JSON value (dicts and lists walked)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from walk_decimals(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk_decimals(item)
    else:
        yield value


def verify_ledger_after(request: Any) -> Iterator[None]:
    """Body of each module's autouse fixture: after a test that had a database, verify_ledger() must be
    empty. A test that breaks the ledger on purpose asks for the fixture `ledger_may_break` to opt out.

    The test's database is requested here, before the test runs, so this check is torn down (runs)
    before the database is dropped.
    """
    names = request.fixturenames
    if "db_url" not in names or "ledger_may_break" in names:
        yield
        return
    db_url: str = request.getfixturevalue("db_url")
    yield
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert_ledger_consistent(conn)


# --- migrations: what the rollback/re-apply tests of every tier compare ---------------------------------


def migration_ids() -> list[str]:
    """The ids of db/migrations, in the order yoyo applies them."""
    files = (DB_DIR / "migrations").glob("*.sql")
    return sorted(p.name.removesuffix(".sql") for p in files if not p.name.endswith(".rollback.sql"))


def catalog_snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """What an upgrade must leave unchanged: code, its comments and every privilege in billing."""
    with psycopg.connect(url) as conn:
        return {
            "routines": conn.execute(
                """
                SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proacl::text,
                       obj_description(p.oid, 'pg_proc')
                FROM pg_proc p
                WHERE p.pronamespace = 'billing'::regnamespace AND p.prokind IN ('f', 'p')
                ORDER BY 1
                """
            ).fetchall(),
            "relations": conn.execute(
                """
                SELECT c.relname, c.relkind::text, c.relacl::text, obj_description(c.oid, 'pg_class'),
                       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END
                FROM pg_class c
                WHERE c.relnamespace = 'billing'::regnamespace
                ORDER BY 1
                """
            ).fetchall(),
            "schema": conn.execute(
                "SELECT nspacl::text FROM pg_namespace WHERE nspname = 'billing'"
            ).fetchall(),
        }
