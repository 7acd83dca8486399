"""Roles and privileges of DESIGN §4, checked by connecting as each role: the application role may only
EXECUTE the public billing functions, the analyst role may only SELECT the views, the owner cannot
rewrite the ledger, and every public function runs SECURITY DEFINER with a pinned search_path.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from api import db as apidb
from api import ledger
from tests import helpers as h

D = Decimal
VIEWS = ("user_billing_summary", "charges_by_tool", "charges_by_day")


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)



@pytest.fixture
def app(connect, app_url):
    connection = connect(app_url)
    apidb.configure(connection)
    return connection


@pytest.fixture
def analyst(connect, analyst_url):
    return connect(analyst_url)


def _tables(db) -> list[str]:
    rows = db.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('r', 'p')"
        " ORDER BY 1"
    ).fetchall()
    names = [row[0] for row in rows]
    assert {"users", "user_billing", "billing_transactions", "reservations", "cost_tracking"} <= set(names)
    return names


def _functions(db) -> list[dict[str, Any]]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows: list[dict[str, Any]] = cur.execute(
            """
            SELECT p.oid, p.proname, p.oid::regprocedure::text AS signature, p.prosecdef, p.proconfig,
                   p.prokind
              FROM pg_proc p
             WHERE p.pronamespace = 'billing'::regnamespace
             ORDER BY p.proname
            """
        ).fetchall()
    assert len(rows) > 20
    return rows


def _plain_column(db, table: str) -> str:
    """A column an UPDATE may name (not an identity column), so only privileges can refuse it."""
    row = db.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " AND attidentity = '' AND attgenerated = '' ORDER BY attnum LIMIT 1",
        (f"billing.{table}",),
    ).fetchone()
    assert row is not None
    return str(row[0])


def _refused(connection: psycopg.Connection[Any], statement: sql.SQL | sql.Composed) -> bool:
    try:
        connection.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


# --- the application role -------------------------------------------------------------------------


def test_app_role_may_call_the_billing_functions(app, db):
    user_id = ledger.ensure_account(app, "app-user", "app@example.com")
    top_up = ledger.top_up(app, user_id, D(5), "stripe", "pi_app")
    assert top_up.balance_after_usd == D(5)
    charge = ledger.charge(app, user_id, "app-req-1", D("0.0003"))
    assert charge.balance_after_usd == D("4.9997")
    ledger.reserve(app, user_id, "app-req-2", D(1))
    assert ledger.settle(app, "app-req-2", D("0.5")).charged_usd == D("0.5")
    ledger.start_request(app, "app-req-3", "search", user_id)
    assert ledger.complete_request(app, "app-req-3", True, D("0.01")).billed is True
    assert ledger.summary(app, user_id)["balance_usd"] == D("4.4897")
    assert len(ledger.history(app, user_id)) == 4
    assert ledger.check_balance(app, user_id, D(1)).sufficient is True
    assert ledger.verify_ledger(app) == []
    # and the rows were written as the functions' owner, visible to the owner
    assert h.account_row(db, user_id)["balance_usd"] == D("4.4897")


def test_app_role_cannot_touch_any_billing_table(app, db):
    ledger.top_up(app, ledger.ensure_account(app, "app-user"), D(5), "stripe", "pi_app")
    not_refused = []
    for table in _tables(db):
        name = sql.Identifier("billing", table)
        column = sql.Identifier(_plain_column(db, table))
        for statement in (
            sql.SQL("SELECT * FROM {}").format(name),
            sql.SQL("INSERT INTO {} DEFAULT VALUES").format(name),
            sql.SQL("UPDATE {} SET {} = {}").format(name, column, column),
            sql.SQL("DELETE FROM {}").format(name),
            sql.SQL("TRUNCATE {} CASCADE").format(name),
        ):
            if not _refused(app, statement):
                not_refused.append(statement.as_string(app))
    assert not_refused == []
    for view in VIEWS:
        assert _refused(app, sql.SQL("SELECT * FROM {}").format(sql.Identifier("billing", view)))


def test_app_role_may_execute_public_functions_and_no_internal_one(app, db):
    internal = [row for row in _functions(db) if row["proname"].startswith("_")]
    assert {"_check_usd", "_load_account", "_append_ledger", "_save_account"} <= {row["proname"] for row in internal}
    executable = [
        row["signature"] for row in internal
        if app.execute("SELECT has_function_privilege(%s, 'EXECUTE')", (row["oid"],)).fetchone() != (False,)
    ]
    assert executable == []
    assert _refused(app, sql.SQL("SELECT billing._fmt_usd(1)"))
    assert _refused(app, sql.SQL("SELECT billing._check_usd(1, 'x')"))
    assert _refused(app, sql.SQL("SELECT billing._check_text('x', 'x')"))
    public = [row for row in _functions(db) if not row["proname"].startswith("_")]
    assert {"ensure_account", "charge", "reserve", "settle", "verify_ledger"} <= {row["proname"] for row in public}
    not_executable = [
        row["signature"] for row in public
        if app.execute("SELECT has_function_privilege(%s, 'EXECUTE')", (row["oid"],)).fetchone() != (True,)
    ]
    assert not_executable == []


# --- the analyst role -----------------------------------------------------------------------------


def test_analyst_role_reads_the_views(analyst, db):
    ledger.set_tool_pricing(db, "search", D("0.01"))
    user_id = h.funded_user(db, 5, external_id="analysed")
    ledger.start_request(db, "req-1", "search", user_id)
    ledger.complete_request(db, "req-1", True, D("0.002"))
    with analyst.cursor(row_factory=psycopg.rows.dict_row) as cur:
        [summary] = cur.execute(
            "SELECT * FROM billing.user_billing_summary WHERE external_id = 'analysed'"
        ).fetchall()
        by_tool = cur.execute("SELECT * FROM billing.charges_by_tool").fetchall()
        by_day = cur.execute("SELECT * FROM billing.charges_by_day ORDER BY type").fetchall()
    # price: base 0.01 + cost 0.002 (no markup)
    assert (summary["user_id"], summary["balance_usd"], summary["total_requests"]) == (user_id, D("4.988"), 1)
    assert [(row["tool_name"], row["calls"], row["charged_usd"]) for row in by_tool] == [("search", 1, D("0.012"))]
    assert [(row["type"], row["transactions"], row["amount_usd"]) for row in by_day] == [
        ("charge", 1, D("0.012")), ("topup", 1, D(5))]


def test_analyst_role_cannot_read_tables_or_call_functions(analyst, db):
    h.funded_user(db, 5)
    not_refused = []
    for table in _tables(db):
        statement = sql.SQL("SELECT * FROM {}").format(sql.Identifier("billing", table))
        if not _refused(analyst, statement):
            not_refused.append(table)
    assert not_refused == []
    executable = [
        row["signature"] for row in _functions(db)
        if analyst.execute("SELECT has_function_privilege(%s, 'EXECUTE')", (row["oid"],)).fetchone() != (False,)
    ]
    assert executable == []
    assert _refused(analyst, sql.SQL("SELECT billing.ensure_account('analyst-made')"))
    assert _refused(analyst, sql.SQL("SELECT * FROM billing.verify_ledger()"))


# --- the owner and the ledger ---------------------------------------------------------------------


def test_owner_cannot_update_delete_or_truncate_the_ledger(db):
    user_id = h.funded_user(db, 5)
    ledger.charge(db, user_id, "req-1", D(1))
    before = h.snapshot(db)
    for statement in (
        "UPDATE billing.billing_transactions SET description = 'rewritten'",
        "UPDATE billing.billing_transactions SET amount_usd = amount_usd WHERE type = 'charge'",
        "DELETE FROM billing.billing_transactions",
        "TRUNCATE billing.billing_transactions CASCADE",
    ):
        with pytest.raises(psycopg.Error) as refused:
            db.execute(statement)
        assert refused.value.sqlstate == "BL090", (statement, refused.value.sqlstate)
        assert refused.value.diag.message_primary and "append-only" in refused.value.diag.message_primary
    # without CASCADE, the foreign keys refuse first; either way nothing is lost
    with pytest.raises(psycopg.Error):
        db.execute("TRUNCATE billing.billing_transactions")
    assert h.snapshot(db) == before


# --- function definitions and PUBLIC --------------------------------------------------------------


def test_every_public_function_is_security_definer_with_a_pinned_search_path(db):
    problems = []
    for row in _functions(db):
        if row["proname"].startswith("_"):
            continue
        if not row["prosecdef"]:
            problems.append(f"{row['signature']} is not SECURITY DEFINER")
        settings = row["proconfig"] or []
        if "search_path=billing, pg_temp" not in settings:
            problems.append(f"{row['signature']} has proconfig {settings}, not search_path=billing, pg_temp")
    assert problems == []


def test_public_has_no_execute_on_any_billing_function_nor_access_to_tables(db):
    executable = [
        row["signature"] for row in _functions(db)
        if db.execute("SELECT has_function_privilege('public', %s, 'EXECUTE')", (row["oid"],)).fetchone() != (False,)
    ]
    assert executable == []
    readable = [
        name for name in (*_tables(db), *VIEWS)
        if db.execute(
            "SELECT has_table_privilege('public', %s, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')",
            (f"billing.{name}",),
        ).fetchone() != (False,)
    ]
    assert readable == []
    assert db.execute("SELECT has_schema_privilege('public', 'billing', 'USAGE')").fetchone() == (False,)


def test_billing_objects_belong_to_an_unprivileged_owner(db):
    # SECURITY DEFINER functions run as their owner: it must be tollgate_owner, never a superuser,
    # and the tables and views must be its own so the functions need no other privilege.
    owner = db.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles WHERE rolname = 'tollgate_owner'"
    ).fetchone()
    assert owner == (False, False, False, False)
    strangers = db.execute(
        """
        SELECT p.proname::text FROM pg_proc p
         WHERE p.pronamespace = 'billing'::regnamespace AND p.proowner <> 'tollgate_owner'::regrole
        UNION ALL
        SELECT c.relname::text FROM pg_class c
         WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('r', 'v')
           AND c.relowner <> 'tollgate_owner'::regrole
        UNION ALL
        SELECT 'schema billing' FROM pg_namespace n
         WHERE n.nspname = 'billing' AND n.nspowner <> 'tollgate_owner'::regrole
        """
    ).fetchall()
    assert strangers == []
