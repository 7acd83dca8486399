"""Migrations walk up, down to zero and up again; upgrades are idempotent; names follow the rules;
the grants of docs/design.md §5 hold; plpgsql_check finds no error in any function."""

from __future__ import annotations

import itertools
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api.ops import migrate
from tests.conftest import DB_DIR
from tests.helpers import catalog_snapshot, migration_ids

MIGRATIONS = DB_DIR / "migrations"
MIGRATION_NAME = re.compile(
    r"^(?P<number>\d{4})_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)(?P<rollback>\.rollback)?\.sql$"
)


def _schema_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT FROM pg_namespace WHERE nspname = 'billing'").fetchone() is not None


def test_migration_files_are_numbered_without_gaps_each_with_a_rollback() -> None:
    names = sorted(p.name for p in MIGRATIONS.iterdir())
    assert names, "db/migrations is empty"
    bad = [n for n in names if not MIGRATION_NAME.match(n)]
    assert not bad, f"migration files not named NNNN_snake_name.sql / .rollback.sql: {bad}"

    forward = {n.removesuffix(".sql") for n in names if not n.endswith(".rollback.sql")}
    rollback = {n.removesuffix(".rollback.sql") for n in names if n.endswith(".rollback.sql")}
    assert forward - rollback == set(), "migrations without a .rollback.sql partner"
    assert rollback - forward == set(), "rollbacks without their migration"

    numbers = sorted(int(m.removesuffix(".sql")[:4]) for m in forward)
    expected = list(range(1, max(numbers, default=0) + 1))
    assert numbers == expected, f"migration numbers must run 1, 2, 3… without gaps: {numbers}"


def test_each_migration_depends_on_the_one_before_it() -> None:
    ids = migration_ids()
    for previous, migration in itertools.pairwise(ids):
        first_line = (MIGRATIONS / f"{migration}.sql").read_text(encoding="utf-8").splitlines()[0]
        assert first_line == f"-- depends: {previous}", f"{migration} must start with '-- depends: {previous}'"


def test_walk_up_down_to_zero_and_up_again(fresh_db_url: str) -> None:
    ids = migration_ids()
    assert migrate.status(fresh_db_url, DB_DIR) == [(i, False) for i in ids]

    assert migrate.upgrade(fresh_db_url, DB_DIR) == ids
    assert migrate.status(fresh_db_url, DB_DIR) == [(i, True) for i in ids]
    first = catalog_snapshot(fresh_db_url)
    assert first["routines"] and first["relations"]

    assert migrate.downgrade(fresh_db_url, DB_DIR, None) == ids[::-1]
    assert migrate.status(fresh_db_url, DB_DIR) == [(i, False) for i in ids]
    assert not _schema_exists(fresh_db_url)

    assert migrate.upgrade(fresh_db_url, DB_DIR) == ids
    assert catalog_snapshot(fresh_db_url) == first


def test_downgrade_to_a_target_keeps_it(db_url: str) -> None:
    ids = migration_ids()
    before = catalog_snapshot(db_url)

    assert migrate.downgrade(db_url, DB_DIR, ids[0]) == ids[1:][::-1]
    assert migrate.status(db_url, DB_DIR) == [(i, i == ids[0]) for i in ids]
    assert _schema_exists(db_url)

    assert migrate.upgrade(db_url, DB_DIR) == ids[1:]
    assert catalog_snapshot(db_url) == before


def test_downgrade_to_an_unknown_migration_is_refused(db_url: str) -> None:
    with pytest.raises(migrate.MigrationError, match="unknown migration"):
        migrate.downgrade(db_url, DB_DIR, "9999_nope")
    assert all(applied for _, applied in migrate.status(db_url, DB_DIR))


def test_upgrade_twice_changes_nothing(db_url: str) -> None:
    before = catalog_snapshot(db_url)
    assert migrate.upgrade(db_url, DB_DIR) == []
    assert catalog_snapshot(db_url) == before


def test_concurrent_upgrades_take_turns(db_url: str) -> None:
    # Several gateway instances may start at once; each runs `upgrade`.
    before = catalog_snapshot(db_url)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: migrate.upgrade(db_url, DB_DIR), range(3)))
    assert results == [[], [], []]
    assert catalog_snapshot(db_url) == before


def test_every_function_and_view_file_defines_its_namesake(conn: psycopg.Connection[Any]) -> None:
    functions = {
        row[0]
        for row in conn.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'billing'::regnamespace")
    }
    views = {
        row[0]
        for row in conn.execute(
            "SELECT relname FROM pg_class "
            "WHERE relnamespace = 'billing'::regnamespace AND relkind IN ('v', 'm')"
        )
    }
    assert {p.stem for p in (DB_DIR / "functions").glob("*.sql")} - functions == set()
    assert {p.stem for p in (DB_DIR / "views").glob("*.sql")} - views == set()


RUNTIME_ROLES = ("tollgate_metering", "tollgate_payments", "tollgate_operator")


def test_grants_follow_the_roles_of_the_design(conn: psycopg.Connection[Any]) -> None:
    """Who may call what exactly is tests/sql/test_roles.py's matrix; here: the shape every migration leaves."""
    routines = conn.execute(
        """
        SELECT p.oid::regprocedure::text, left(p.proname, 1) = '_',
               has_function_privilege('public', p.oid, 'EXECUTE'),
               ARRAY(SELECT r FROM unnest(%s::text[]) r WHERE has_function_privilege(r, p.oid, 'EXECUTE')),
               has_function_privilege('tollgate_app', p.oid, 'EXECUTE')
                   = has_function_privilege('tollgate_metering', p.oid, 'EXECUTE'),
               has_function_privilege('tollgate_analyst', p.oid, 'EXECUTE')
        FROM pg_proc p
        WHERE p.pronamespace = 'billing'::regnamespace AND p.prokind IN ('f', 'p')
        """,
        (list(RUNTIME_ROLES),),
    ).fetchall()
    assert routines, "schema billing has no function at all"
    for name, private, public_may, granted, app_is_metering, analyst_may in routines:
        assert not public_may, f"PUBLIC may execute {name}"
        assert bool(granted) is not private, f"{name} is granted to {granted or 'no role'}"
        assert app_is_metering, f"tollgate_app and tollgate_metering differ on {name}"
        assert not analyst_may, f"tollgate_analyst may execute {name}"

    relations = conn.execute(
        """
        SELECT c.oid::regclass::text, c.relkind IN ('v', 'm'),
               ARRAY(SELECT r FROM unnest(%s::text[] || ARRAY['tollgate_app']) r
                      WHERE has_table_privilege(r, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
                         OR (c.relkind NOT IN ('v', 'm') AND has_table_privilege(r, c.oid, 'SELECT'))),
               has_table_privilege('tollgate_analyst', c.oid, 'SELECT'),
               has_table_privilege('tollgate_analyst', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
        FROM pg_class c
        WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
        """,
        (list(RUNTIME_ROLES),),
    ).fetchall()
    for name, is_view, direct, analyst_select, analyst_write in relations:
        assert direct == [], f"{direct} have direct access to {name}"
        assert analyst_select is is_view, f"tollgate_analyst SELECT on {name}: {analyst_select}"
        assert not analyst_write, f"tollgate_analyst may write {name}"


def test_login_roles_get_exactly_their_group_privileges(
    conn: psycopg.Connection[Any], metering_url: str, app_url: str, analyst_url: str
) -> None:
    views = [
        row[0]
        for row in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c "
            "WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('v', 'm') ORDER BY 1"
        )
    ]
    with psycopg.connect(analyst_url, autocommit=True) as analyst:
        for view in views:
            analyst.execute(f"SELECT * FROM {view} LIMIT 0")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("SELECT * FROM billing.users")
    for url in (metering_url, app_url):
        with psycopg.connect(url, autocommit=True) as app:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("SELECT * FROM billing.user_billing")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("INSERT INTO billing.users (external_id) VALUES ('intruder')")


def _code_dir(tmp_path: Path, functions: dict[str, str], views: dict[str, str] | None = None) -> Path:
    """A db directory with the real migrations and the given function and view files."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "migrations").symlink_to(MIGRATIONS)
    for kind, files in (("functions", functions), ("views", views or {})):
        (tmp_path / kind).mkdir()
        for name, text in files.items():
            (tmp_path / kind / name).write_text(text)
    return tmp_path


PROBE = "CREATE OR REPLACE FUNCTION billing.zz_probe() RETURNS int\nLANGUAGE sql AS 'SELECT 1';\n"


def _may(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
    return conn.execute(
        """
        SELECT has_function_privilege('tollgate_metering', 'billing.zz_probe()', 'EXECUTE'),
               has_function_privilege('tollgate_operator', 'billing.zz_probe()', 'EXECUTE'),
               has_function_privilege('tollgate_metering', 'billing._zz_helper()', 'EXECUTE'),
               has_function_privilege('public', 'billing._zz_helper()', 'EXECUTE'),
               has_table_privilege('tollgate_analyst', 'billing.zz_view', 'SELECT'),
               has_table_privilege('tollgate_operator', 'billing.zz_view', 'SELECT')
        """
    ).fetchone()


def test_upgrade_reapplies_code_and_its_grant_lines_when_no_migration_is_pending(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    helper = (
        "CREATE OR REPLACE FUNCTION billing._zz_helper() RETURNS int\n"
        # A % in a file must not be taken for a query parameter.
        "LANGUAGE sql AS $$ SELECT 2 % 3 $$;"
    )
    view = "CREATE OR REPLACE VIEW billing.zz_view AS SELECT billing.zz_probe() AS one;\n"
    granted = _code_dir(
        tmp_path / "granted",
        functions={
            "zz_probe.sql": PROBE
            + "GRANT EXECUTE ON FUNCTION billing.zz_probe() TO tollgate_metering, tollgate_operator;",
            "_zz_helper.sql": helper,
        },
        views={"zz_view.sql": view + "GRANT SELECT ON billing.zz_view TO tollgate_analyst, tollgate_operator;"},
    )
    assert migrate.upgrade(db_url, granted) == []
    assert _may(conn) == (True, True, False, False, True, True)
    # A grant taken out of a file is gone after the next upgrade (and a function with none is nobody's).
    narrowed = _code_dir(
        tmp_path / "narrowed",
        functions={
            "zz_probe.sql": PROBE + "GRANT EXECUTE ON FUNCTION billing.zz_probe() TO tollgate_metering;",
            "_zz_helper.sql": helper,
        },
        views={"zz_view.sql": view + "GRANT SELECT ON billing.zz_view TO tollgate_analyst;"},
    )
    assert migrate.upgrade(db_url, narrowed) == []
    assert _may(conn) == (True, False, False, False, True, False)


def test_a_helper_granted_to_anyone_fails_the_upgrade(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    db_dir = _code_dir(
        tmp_path,
        functions={
            "_zz_helper.sql": "CREATE OR REPLACE FUNCTION billing._zz_helper() RETURNS int\n"
            "LANGUAGE sql AS 'SELECT 2';\n"
            "GRANT EXECUTE ON FUNCTION billing._zz_helper() TO tollgate_metering;",
        },
    )
    with pytest.raises(migrate.MigrationError, match=r"_zz_helper\(\) is granted to tollgate_metering"):
        migrate.upgrade(db_url, db_dir)
    assert conn.execute("SELECT to_regprocedure('billing._zz_helper()')").fetchone() == (None,)


def test_a_failing_code_file_applies_nothing_and_names_the_file(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    db_dir = _code_dir(
        tmp_path,
        functions={
            "a_fine.sql": "CREATE FUNCTION billing.zz_fine() RETURNS int LANGUAGE sql AS 'SELECT 1';",
            "b_broken.sql": "CREATE FUNCTION billing.zz_broken( RETURNS int;",
        },
    )
    with pytest.raises(migrate.MigrationError, match=r"functions/b_broken\.sql"):
        migrate.upgrade(db_url, db_dir)
    assert conn.execute("SELECT to_regprocedure('billing.zz_fine()')").fetchone() == (None,)


def test_an_overload_whose_signature_changed_is_dropped(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """CREATE OR REPLACE of a changed signature makes a second overload; upgrade drops the one no file
    defines any more, in the same transaction, and the new one has the grants of its file. Functions that
    no file names (migrations' own: the ledger trigger, the hash functions) stay."""
    helper = "CREATE OR REPLACE FUNCTION billing._zz_helper(p int) RETURNS int LANGUAGE sql AS 'SELECT p';\n"
    signature_a = _code_dir(
        tmp_path / "a",
        functions={
            "zz_probe.sql": "CREATE OR REPLACE FUNCTION billing.zz_probe(p int) RETURNS int\n"
            "LANGUAGE sql AS 'SELECT p';\n"
            "GRANT EXECUTE ON FUNCTION billing.zz_probe(int) TO tollgate_metering;",
            "_zz_helper.sql": helper,
        },
    )
    signature_b = _code_dir(
        tmp_path / "b",
        functions={
            "zz_probe.sql": "CREATE OR REPLACE FUNCTION billing.zz_probe(p int, q text DEFAULT NULL) RETURNS int\n"
            "LANGUAGE sql AS 'SELECT p';\n"
            "GRANT EXECUTE ON FUNCTION billing.zz_probe(int, text) TO tollgate_metering, tollgate_operator;",
            "_zz_helper.sql": helper.replace("(p int)", "(p bigint)"),
        },
    )

    def overloads() -> list[tuple[str, bool, bool]]:
        return [
            (str(name), bool(metering), bool(operator))
            for name, metering, operator in conn.execute(
                """
                SELECT p.oid::regprocedure::text, has_function_privilege('tollgate_metering', p.oid, 'EXECUTE'),
                       has_function_privilege('tollgate_operator', p.oid, 'EXECUTE')
                FROM pg_proc p
                WHERE p.pronamespace = 'billing'::regnamespace AND p.proname IN ('zz_probe', '_zz_helper')
                ORDER BY 1
                """
            ).fetchall()
        ]

    untouched = conn.execute(
        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'billing'::regnamespace AND proname NOT LIKE '%zz%'"
    ).fetchone()
    assert migrate.upgrade(db_url, signature_a) == []
    assert overloads() == [("billing._zz_helper(integer)", False, False), ("billing.zz_probe(integer)", True, False)]
    assert migrate.upgrade(db_url, signature_b) == []
    assert overloads() == [
        ("billing._zz_helper(bigint)", False, False),
        ("billing.zz_probe(integer,text)", True, True),
    ]
    owner = "SELECT proowner::regrole::text FROM pg_proc WHERE oid = 'billing.zz_probe(int, text)'::regprocedure"
    assert conn.execute(owner).fetchone() == ("tollgate_owner",)
    # The real functions (no file of this directory names them) and the migrations' own are all still there.
    assert conn.execute(
        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'billing'::regnamespace AND proname NOT LIKE '%zz%'"
    ).fetchone() == untouched
    # Back to the real files: nothing of theirs is dropped, and zz_probe, which no file names, stays.
    assert migrate.upgrade(db_url, DB_DIR) == []
    assert [name for name, _, _ in overloads()] == ["billing._zz_helper(bigint)", "billing.zz_probe(integer,text)"]


def test_an_overload_still_in_use_fails_the_upgrade_by_name(
    db_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    old = _code_dir(
        tmp_path / "old",
        functions={"zz_probe.sql": "CREATE FUNCTION billing.zz_probe() RETURNS int LANGUAGE sql AS 'SELECT 1';"},
        views={"zz_view.sql": "CREATE OR REPLACE VIEW billing.zz_view AS SELECT billing.zz_probe() AS one;"},
    )
    assert migrate.upgrade(db_url, old) == []
    new = _code_dir(
        tmp_path / "new",
        functions={
            "zz_probe.sql": "CREATE OR REPLACE FUNCTION billing.zz_probe(p int) RETURNS int LANGUAGE sql AS 'SELECT p';"
        },
    )
    with pytest.raises(migrate.MigrationError, match=r"dropping billing\.zz_probe\(\), an overload no file defines"):
        migrate.upgrade(db_url, new)
    assert conn.execute("SELECT to_regprocedure('billing.zz_probe(int)')").fetchone() == (None,)
    assert conn.execute("SELECT to_regprocedure('billing.zz_probe()') IS NOT NULL").fetchone() == (True,)


def test_the_rule_helpers_inline_into_a_fast_path_statement(conn: psycopg.Connection[Any]) -> None:
    """The window-and-limit rule of the fast paths is written once, in LANGUAGE sql helpers, at no cost: the
    planner inlines them, so the plan of a statement shaped like charge's has no call left in it."""
    now = "billing._effective_now(cfg.clock_override, cfg.clock, b.updated_at)"
    plan = conn.execute(
        f"""
        EXPLAIN (VERBOSE, COSTS OFF)
        WITH cfg AS (SELECT c.time_zone, c.clock_override, coalesce(c.clock_override, clock_timestamp()) AS clock
                       FROM billing.config c)
        SELECT billing._window_spend(b.day_spent_usd, b.day_start, billing._local_day({now}, cfg.time_zone)),
               billing._local_month({now}, cfg.time_zone)
          FROM billing.user_billing b, cfg
         WHERE billing._available_usd(b.balance_usd, b.held_usd, b.cooling_usd) >= 1.5
           AND billing._within_limits(
                   b.limit_override,
                   b.daily_limit_usd,
                   billing._window_spend(b.day_spent_usd, b.day_start, billing._local_day({now}, cfg.time_zone)),
                   b.monthly_limit_usd,
                   billing._window_spend(b.month_spent_usd, b.month_start, billing._local_month({now}, cfg.time_zone)),
                   b.held_usd, 1.5)
        """
    ).fetchall()
    text = "\n".join(row[0] for row in plan)
    assert "day_spent_usd" in text and "billing." not in text.replace("billing.user_billing", "").replace(
        "billing.config", ""
    ), text


def test_plpgsql_check_finds_no_errors(conn: psycopg.Connection[Any], plpgsql_check_available: str) -> None:
    functions = conn.execute(
        """
        SELECT p.oid, p.oid::regprocedure::text, p.prorettype = 'trigger'::regtype,
               (SELECT t.tgrelid FROM pg_trigger t WHERE t.tgfoid = p.oid ORDER BY t.oid LIMIT 1)
        FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
        WHERE p.pronamespace = 'billing'::regnamespace AND l.lanname = 'plpgsql'
        ORDER BY 2
        """
    ).fetchall()
    assert functions, "no PL/pgSQL function in schema billing"
    problems = []
    for oid, name, is_trigger, relid in functions:
        if is_trigger and relid is None:
            continue  # a trigger function no table uses yet: plpgsql_check needs the table
        rows = conn.execute(
            """
            SELECT lineno, sqlstate, message, detail, hint
            FROM plpgsql_check_function_tb(%s::oid::regprocedure, %s::oid::regclass, fatal_errors => false)
            WHERE level = 'error'
            """,
            (oid, relid if is_trigger else 0),
        ).fetchall()
        problems += [
            f"{name} line {line}: [{state}] {msg} {detail or ''} {hint or ''}".rstrip()
            for line, state, msg, detail, hint in rows
        ]
    assert not problems, "plpgsql_check found errors:\n" + "\n".join(problems)
