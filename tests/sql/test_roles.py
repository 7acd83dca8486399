"""Roles and privileges of docs/design.md §5, checked by connecting as each role.

The metering, payments and operator roles may each EXECUTE exactly their list of public functions
(``MATRIX``, the same lists as the GRANT lines of db/functions: a change of one must change the other)
and touch no table; the analyst may only SELECT the views (the operator the three its commands read);
the deprecated tollgate_app is the metering role and no more; the owner cannot rewrite the ledger;
every public function runs SECURITY DEFINER with a pinned search_path; and a login that is more than
its authority (a superuser, the owner, a member of two authorities) is refused by ``api.ledger.roles``.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from api.ledger import db as apidb
from api.ledger import roles
from api.ledger import sync as ledger
from api.ledger.errors import BillingError
from api.ledger.roles import Authority
from api.ledger.sync import PaymentFacts
from tests import helpers as h
from tests.conftest import url_for

D = Decimal
M, P, OP = "metering", "payments", "operator"
VIEWS = (
    "anonymous_usage_daily",
    "charges_by_day",
    "charges_by_tool",
    "payments",
    "payments_needing_review",
    "unbilled_calls",
    "user_billing_summary",
    "written_off_calls",
)
OPERATOR_VIEWS = {
    "anonymous_usage_daily",
    "payments_needing_review",
    "unbilled_calls",
    "user_billing_summary",
    "written_off_calls",
}

# Who may EXECUTE each public function of schema billing.
MATRIX: dict[str, frozenset[str]] = {
    name: frozenset(who)
    for name, who in {
        # the call path
        "begin_request": {M},
        "start_request": {M},
        "reserve": {M},
        "settle": {M},
        "release": {M},
        "charge": {M},
        "complete_request": {M, OP},  # OP: `tollgate ledger reconcile` bills spooled calls, closes stale ones
        "check_balance": {M},
        "check_limits": {M},
        "estimate_price": {M},
        "tool_price": {M},
        "authenticate_api_key": {M},
        "update_limits": {M},
        "begin_anonymous_call": {M},
        "record_anonymous_failure": {M},
        # reads and sweeps both need
        "ensure_account": {M, OP},
        "summary": {M, OP},
        "history": {M, OP},
        "list_tool_pricing": {M, OP},
        "reap_expired_holds": {M, OP},
        "payment_intent": {M, P, OP},
        # money in
        "create_payment_intent": {P},
        "attach_payment_checkout": {P},
        "fail_payment_intent": {P},
        "record_payment_event": {P},
        "open_payment_intents": {P},
        "expire_payment_intents": {P},
        # the operator
        "top_up": {OP},
        "adjust": {OP},
        "refund": {OP},
        "update_settings": {OP},
        "configure": {OP},
        "set_exchange_rate": {OP},
        "set_tool_pricing": {OP},
        "create_api_key": {OP},
        "revoke_api_key": {OP},
        "list_api_keys": {OP},
        "verify_ledger": {OP},
        "credit_reviewed_payment": {OP},
        "ledger_heads": {OP},
        "verify_anchors": {OP},
        "prune_anonymous_usage": {OP},
        # the abuse controls' figures and audit trail (docs/abuse.md)
        "set_abuse_policy": {OP},
        "list_abuse_policy": {OP},
        "list_abuse_events": {OP},
        # velocity flags and the refund cap (0012)
        "detect_velocity": {OP},
        "list_account_flags": {OP},
        "decide_account_flag": {OP},
        "record_refused_refund": {OP},
    }.items()
}


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)


def _as(connect, url: str) -> psycopg.Connection[Any]:
    connection: psycopg.Connection[Any] = connect(url)
    apidb.configure(connection)
    return connection


@pytest.fixture
def metering(connect, metering_url):
    return _as(connect, metering_url)


@pytest.fixture
def payments(connect, payments_url):
    return _as(connect, payments_url)


@pytest.fixture
def operator(connect, operator_url):
    return _as(connect, operator_url)


@pytest.fixture
def app(connect, app_url):
    return _as(connect, app_url)


@pytest.fixture
def analyst(connect, analyst_url):
    return connect(analyst_url)


@pytest.fixture
def role_connections(metering, payments, operator, app, analyst) -> dict[str, psycopg.Connection[Any]]:
    """Every run-time role by name; `app` is the deprecated alias, which must act as `metering`."""
    return {M: metering, P: payments, OP: operator, "app": app, "analyst": analyst}


def _allowed(role: str, function: str) -> bool:
    if role == "analyst":
        return False
    return (M if role == "app" else role) in MATRIX[function]


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
                   p.prokind, p.proargtypes::regtype[]::text[] AS argtypes
              FROM pg_proc p
             WHERE p.pronamespace = 'billing'::regnamespace
             ORDER BY p.proname
            """
        ).fetchall()
    assert len(rows) > 20
    return rows


def _public(db) -> list[dict[str, Any]]:
    return [row for row in _functions(db) if not row["proname"].startswith("_") and row["prokind"] == "f"]


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


def _call_with_nulls(connection: psycopg.Connection[Any], function: dict[str, Any]) -> str:
    """Call `function` with a typed NULL for every argument: 'ok', 'BLxxx' (a refusal of the function's
    own) or the SQLSTATE of anything else (42501: not allowed to call it at all)."""
    arguments = sql.SQL(", ").join(sql.SQL("NULL::{}").format(sql.SQL(t)) for t in function["argtypes"])
    statement = sql.SQL("SELECT * FROM billing.{}({})").format(sql.Identifier(function["proname"]), arguments)
    try:
        connection.execute(statement).fetchall()
    except psycopg.Error as exc:
        return exc.sqlstate or type(exc).__name__
    return "ok"


# --- the matrix ------------------------------------------------------------------------------------


def test_each_public_function_is_granted_exactly_as_the_matrix_says(db):
    public = _public(db)
    added_or_removed = {row["proname"] for row in public} ^ set(MATRIX)
    assert added_or_removed == set(), "a public function was added or removed: decide who may call it"
    wrong = {}
    for row in public:
        granted = {
            authority.value
            for authority in Authority
            if db.execute(
                "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (authority.group_role, row["oid"])
            ).fetchone() == (True,)
        }
        if granted != MATRIX[row["proname"]]:
            wrong[row["signature"]] = sorted(granted)
    assert wrong == {}


def test_every_public_function_is_granted_to_a_role_and_no_helper_to_anyone(db):
    acl = db.execute(
        """
        SELECT p.oid::regprocedure::text, left(p.proname, 1) = '_',
               array_remove(array_agg(a.grantee::regrole::text), NULL)
          FROM pg_proc p
          LEFT JOIN LATERAL aclexplode(p.proacl) a ON a.grantee <> p.proowner
         WHERE p.pronamespace = 'billing'::regnamespace AND p.prokind IN ('f', 'p')
         GROUP BY 1, 2
        """
    ).fetchall()
    runtime = {authority.group_role for authority in Authority}
    ungranted = [name for name, helper, grantees in acl if not helper and not set(grantees) & runtime]
    helpers_granted = {name: grantees for name, helper, grantees in acl if helper and grantees}
    strangers = {name: grantees for name, _, grantees in acl if set(grantees) - runtime}
    assert ungranted == []
    assert helpers_granted == {}
    assert strangers == {}, "only the metering, payments and operator roles hold EXECUTE (tollgate_app: by membership)"


def test_each_role_calls_exactly_its_functions(db, role_connections):
    """Every role calls every public function (with NULL arguments): its own run, or refuse with a BL code of
    their own; every other one is refused with insufficient_privilege before it runs."""
    h.funded_user(db, 5)
    before = h.snapshot(db)
    wrong = []
    for role, connection in role_connections.items():
        for function in _public(db):
            outcome = _call_with_nulls(connection, function)
            if _allowed(role, function["proname"]):
                if outcome != "ok" and not outcome.startswith("BL"):
                    wrong.append(f"{role} may call {function['signature']} but got {outcome}")
            elif outcome != "42501":
                wrong.append(f"{role} may not call {function['signature']} but got {outcome}")
    assert wrong == []
    assert h.snapshot(db) == before, "a call with NULL arguments wrote something"


@pytest.mark.parametrize("role", [M, P, OP, "app", "analyst"])
def test_no_role_touches_a_table(db, role_connections, role):
    h.funded_user(db, 5)
    connection = role_connections[role]
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
            if not _refused(connection, statement):
                not_refused.append(statement.as_string(connection))
    assert not_refused == []


@pytest.mark.parametrize("role", [M, P, OP, "app", "analyst"])
def test_each_role_reads_exactly_its_views(db, role_connections, role):
    connection = role_connections[role]
    readable = {
        view for view in VIEWS
        if not _refused(connection, sql.SQL("SELECT * FROM {} LIMIT 0").format(sql.Identifier("billing", view)))
    }
    expected = {"analyst": set(VIEWS), OP: OPERATOR_VIEWS}.get(role, set())
    assert readable == expected
    writable = [
        view for view in VIEWS
        if connection.execute(
            "SELECT has_table_privilege(%s, 'INSERT, UPDATE, DELETE, TRUNCATE')", (f"billing.{view}",)
        ).fetchone() != (False,)
    ]
    assert writable == []


# --- each role at work -------------------------------------------------------------------------------


def test_the_metering_role_runs_the_call_path(metering, db):
    user_id = ledger.ensure_account(metering, "metered", "m@example.com")
    ledger.top_up(db, user_id, D(5), "test", "pi_metered")
    assert ledger.charge(metering, user_id, "m-1", D("0.0003")).balance_after_usd == D("4.9997")
    ledger.reserve(metering, user_id, "m-2", D(1))
    assert ledger.settle(metering, "m-2", D("0.5")).charged_usd == D("0.5")
    ledger.reserve(metering, user_id, "m-3", D(1))
    ledger.release(metering, "m-3")
    ledger.begin_request(metering, "m-4", "search", user_id, None)
    assert ledger.complete_request(metering, "m-4", True, D("0.01")).billed is True
    limits = ledger.update_limits(metering, user_id, daily_limit_usd=D(3))
    assert (limits.daily_limit_usd, limits.monthly_limit_usd) == (D(3), D(100))
    assert ledger.summary(metering, user_id)["balance_usd"] == D("4.4897")
    assert len(ledger.history(metering, user_id)) == 4
    assert ledger.check_balance(metering, user_id, D(1)).sufficient is True
    assert ledger.check_limits(metering, user_id, D(1)).allowed is True
    # and the rows were written as the functions' owner, visible to the owner
    assert h.account_row(db, user_id)["balance_usd"] == D("4.4897")


def test_a_user_changes_their_limits_and_nothing_else(metering, db):
    user_id = h.funded_user(db, 5)
    ledger.update_settings(db, user_id, is_active=False, billing_enabled=False, limit_override=True)
    ledger.update_limits(metering, user_id, daily_limit_usd=D("2.5"), monthly_limit_usd=D(20))
    row = h.account_row(db, user_id)
    assert (row["daily_limit_usd"], row["monthly_limit_usd"]) == (D("2.5"), D(20))
    assert (row["is_active"], row["billing_enabled"], row["limit_override"]) == (False, False, True)
    with pytest.raises(BillingError) as refused:
        ledger.update_limits(metering, user_id, daily_limit_usd=D(-1))
    assert refused.value.error_code.sqlstate == "BL006"
    with pytest.raises(BillingError) as unknown:
        ledger.update_limits(metering, uuid.uuid4(), daily_limit_usd=D(1))
    assert unknown.value.error_code.sqlstate == "BL007"
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        ledger.update_settings(metering, user_id, is_active=True)


def test_the_payments_role_takes_money_in(payments, db):
    user_id = h.new_user(db)
    intent = ledger.create_payment_intent(payments, user_id, "stripe", D("10.00"), "USD", "key-1")
    ledger.attach_payment_checkout(payments, intent.intent_id, "cs_1", "https://pay.example/cs_1")
    facts = PaymentFacts(
        provider="stripe", event_id="evt_1", event_type="checkout.session.completed", payload="{}", action="paid",
        intent_id=intent.intent_id, external_id="cs_1", payment_ref="pi_1", amount=D("10.00"), currency="USD",
    )
    assert "credited" in ledger.record_payment_event(payments, facts).outcome
    assert ledger.payment_intent(payments, intent.intent_id, user_id).status == "succeeded"
    # recent ones too: reconciliation re-checks them for refunds
    assert [row.intent_id for row in ledger.open_payment_intents(payments)] == [intent.intent_id]
    assert ledger.expire_payment_intents(payments) == 0
    failed = ledger.create_payment_intent(payments, user_id, "stripe", D("5.00"), "USD", "key-2")
    assert ledger.fail_payment_intent(payments, failed.intent_id, "provider down").status == "failed"
    assert h.account_row(db, user_id)["balance_usd"] == D(10)


def test_the_operator_role_credits_corrects_and_configures(operator, db):
    user_id = ledger.ensure_account(operator, "operated")
    credit = ledger.top_up(operator, user_id, D(5), "manual", "pay-1")
    assert credit.balance_after_usd == D(5)
    charge = ledger.charge(db, user_id, "op-1", D(1))
    assert charge.transaction_id is not None
    ledger.refund(operator, charge.transaction_id, D("0.5"), "sorry", "refund-1")
    ledger.adjust(operator, user_id, D("-0.25"), "fix", "ops@example", "adj-1")
    settings = ledger.update_settings(operator, user_id, daily_limit_usd=D(50), limit_override=True)
    assert settings.limit_override is True
    ledger.set_tool_pricing(operator, "search", D("0.01"))
    assert [row.tool_name for row in ledger.list_tool_pricing(operator)] == ["search"]
    ledger.set_exchange_rate(operator, D("41.25"))
    ledger.configure(operator, "UTC")
    ledger.create_api_key(operator, "bot", bytes(32), "tg_x", None)
    assert [key.name for key in ledger.list_api_keys(operator)] == ["bot"]
    ledger.revoke_api_key(operator, "bot")
    assert ledger.summary(operator, user_id)["balance_usd"] == D("4.25")
    assert ledger.verify_ledger(operator) == []
    assert ledger.reap_expired_holds(operator) == 0
    assert [row[0] for row in operator.execute("SELECT user_id FROM billing.user_billing_summary")] == [user_id]


def test_the_analyst_role_reads_the_views(analyst, db):
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


# --- tollgate_app, the deprecated single application role ----------------------------------------------


def test_tollgate_app_can_no_longer_credit_correct_or_take_payment_events(app, db):
    """Before migration 0006, tollgate_app could call every function: any login of the gateway could
    credit itself. It keeps the metering role's call path and nothing more."""
    user_id = ledger.ensure_account(app, "legacy")
    for call in (
        lambda: ledger.top_up(app, user_id, D(5), "manual", "pay-legacy"),
        lambda: ledger.adjust(app, user_id, D(5), "gift", "me", "adj-legacy"),
        lambda: ledger.update_settings(app, user_id, limit_override=True),
        lambda: ledger.set_tool_pricing(app, "search", D(0)),
        lambda: ledger.create_api_key(app, "mine", bytes(32), None, user_id),
        lambda: ledger.record_payment_event(
            app,
            PaymentFacts(provider="stripe", event_id="evt_x", event_type="checkout.session.completed", payload="{}",
                         action="paid", payment_ref="pi_x", amount=D(5), currency="USD"),
        ),
        lambda: ledger.create_payment_intent(app, user_id, "stripe", D(5), "USD"),
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            call()
    assert ledger.summary(app, user_id)["balance_usd"] == D(0)
    assert db.execute("SELECT pg_has_role('tollgate_app', 'tollgate_metering', 'USAGE')").fetchone() == (True,)


# --- api.ledger.roles: which logins may serve -----------------------------------------------------------------


@pytest.mark.parametrize("authority", list(Authority))
def test_each_gateway_login_is_exactly_its_authority(connect, db_url, authority):
    connection = connect(roles.derive_login_url(db_url, authority))
    roles.check_login(connection, authority)  # no refusal
    facts = connection.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user").fetchone()
    assert facts == (False, False)
    for other in Authority:
        if other is not authority:
            with pytest.raises(roles.UnsafeLogin, match=f"does not have the privileges of {other.group_role}"):
                roles.check_login(connection, other)


def test_a_superuser_or_the_owner_is_refused(conn, connect, db_url):
    with pytest.raises(roles.UnsafeLogin, match="is a superuser") as superuser:
        roles.check_login(conn, Authority.METERING)
    assert "owns schema billing" in str(superuser.value)
    login = f"tollgate_test_owner_{uuid.uuid4().hex[:8]}"
    create = sql.SQL("CREATE ROLE {} LOGIN IN ROLE tollgate_owner, tollgate_metering")
    conn.execute(create.format(sql.Identifier(login)))
    owner_member_url = url_for(db_url, str(conninfo_to_dict(db_url)["dbname"]), user=login)
    try:
        with (
            psycopg.connect(owner_member_url) as owner_member,
            pytest.raises(roles.UnsafeLogin, match="owns schema billing"),
        ):
            roles.check_login(owner_member, Authority.METERING)
    finally:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))


def test_a_login_of_several_authorities_or_none_is_refused(connect, api_url, analyst_url):
    everything = connect(api_url)
    for authority in Authority:
        with pytest.raises(roles.UnsafeLogin, match="is also a member of"):
            roles.check_login(everything, authority)
    with pytest.raises(roles.UnsafeLogin, match="does not have the privileges of tollgate_metering"):
        roles.check_login(connect(analyst_url), Authority.METERING)


def test_the_legacy_app_role_serves_as_metering_only(connect, app_url):
    legacy = connect(app_url)
    roles.check_login(legacy, Authority.METERING)
    with pytest.raises(roles.UnsafeLogin):
        roles.check_login(legacy, Authority.OPERATOR)


def test_an_unmigrated_database_is_refused(connect, fresh_db_url):
    with pytest.raises(roles.UnsafeLogin, match="schema billing does not exist"):
        roles.check_login(connect(fresh_db_url), Authority.METERING)


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


def test_the_group_roles_cannot_log_in_or_do_more_than_their_grants(db):
    rows = db.execute(
        """
        SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls
          FROM pg_roles
         WHERE rolname IN ('tollgate_metering', 'tollgate_payments', 'tollgate_operator', 'tollgate_analyst',
                           'tollgate_app', 'tollgate_owner')
         ORDER BY 1
        """
    ).fetchall()
    assert [row[0] for row in rows] == sorted(
        ["tollgate_metering", "tollgate_payments", "tollgate_operator", "tollgate_analyst", "tollgate_app",
         "tollgate_owner"]
    )
    assert all(row[1:] == (False, False, False, False, False) for row in rows)


def test_migration_0006_rolls_back_to_the_single_app_role_and_reapplies(db_url, conn):
    from api.ops import migrate
    from tests.conftest import DB_DIR
    from tests.helpers import catalog_snapshot, migration_ids

    before = catalog_snapshot(db_url)
    later = [m for m in migration_ids() if m > "0006_role_split"]
    assert migrate.downgrade(db_url, DB_DIR, "0005_payments") == [*later[::-1], "0006_role_split"]
    may = conn.execute(
        "SELECT r, bool_and(has_function_privilege(r, p.oid, 'EXECUTE')), bool_or(has_function_privilege(r, p.oid,"
        " 'EXECUTE')) FROM pg_proc p, unnest(ARRAY['tollgate_app', 'tollgate_metering', 'tollgate_payments',"
        " 'tollgate_operator']) r WHERE p.pronamespace = 'billing'::regnamespace AND left(p.proname, 1) <> '_'"
        " GROUP BY r ORDER BY r"
    ).fetchall()
    # As after 0005: tollgate_app may call every public function; the split roles nothing in this database
    # (the roles themselves stay: the other databases of this cluster still use them).
    assert may == [
        ("tollgate_app", True, True),
        ("tollgate_metering", False, False),
        ("tollgate_operator", False, False),
        ("tollgate_payments", False, False),
    ]
    assert migrate.upgrade(db_url, DB_DIR) == ["0006_role_split", *later]
    assert catalog_snapshot(db_url) == before
