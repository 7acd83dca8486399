"""Fixtures giving each test its own real PostgreSQL database, cloned from a migrated template.

The server is TOLLGATE_TEST_DATABASE_URL (a superuser URL to any database of any PostgreSQL 15+)
when set, else an embedded PostgreSQL 18 in a fresh temporary directory, deleted at the end.
Once per session a template database is built by the real `api.ops.migrate.upgrade`; every test
that asks for `db_url` gets `CREATE DATABASE … TEMPLATE` of it (fast, and isolated: a test may
commit, lock or break whatever it likes), dropped after the test.

The template's session also makes the login roles (cluster-wide, kept: the server is a throwaway one):
the gateway's own tollgate_gw_metering / _payments / _operator, by the real
`api.ledger.roles.provision_login_roles`, and the test logins below.

Fixtures:
    pg_server_url            superuser URL of the server's maintenance database (session)
    template_db              name of the migrated template database (session)
    db_url                   owner/superuser URL of a fresh migrated database for this test
    fresh_db_url             owner/superuser URL of a fresh *empty* database (no migrations)
    conn                     psycopg connection to db_url, autocommit, closed after the test
    metering_url / payments_url / operator_url
                             db_url's database as the gateway's login of that authority
    analyst_url              db_url's database as tollgate_test_analyst (the views, nothing else)
    app_url                  db_url's database as tollgate_test_app, a member of the deprecated
                             tollgate_app (= tollgate_metering since migration 0006)
    api_url                  db_url's database as tollgate_test_api, a member of the metering, payments
                             and operator roles: the whole SQL API and no table, for tests that mix
                             operations of several authorities on one connection
    connect                  connect(url=None, *, autocommit=True) -> psycopg.Connection,
                             for concurrency tests; every connection is closed after the test
    plpgsql_check_available  the plpgsql_check extension, created in db_url's database
    db                       `conn`, parsing JSON numbers as Decimal (as api.ledger.db.connect does)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from api.gateway.config import DEFAULT_DB_DIR
from api.ledger import db as apidb
from api.ledger import roles
from api.ledger.roles import Authority
from api.ops import embedded, migrate

DB_DIR: Path = DEFAULT_DB_DIR
APP_ROLE = "tollgate_test_app"
ANALYST_ROLE = "tollgate_test_analyst"
API_ROLE = "tollgate_test_api"
METERING_LOGIN = Authority.METERING.login_role

Connect = Callable[..., psycopg.Connection[Any]]


def url_for(base_url: str, dbname: str, user: str | None = None) -> str:
    """`base_url` pointed at database `dbname`, optionally as `user` (then without a password).

    Host, port and options travel as query parameters, which libpq accepts for any host,
    a unix-socket directory included.
    """
    params = {k: str(v) for k, v in conninfo_to_dict(base_url).items()}
    params.pop("dbname", None)
    if user is not None:
        params["user"] = user
        params.pop("password", None)
    userinfo = ""
    if "user" in params:
        userinfo = quote(params.pop("user"), safe="")
        if "password" in params:
            userinfo += ":" + quote(params.pop("password"), safe="")
        userinfo += "@"
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql://{userinfo}/{quote(dbname, safe='')}{query}"


def _admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def _create_database(server_url: str, name: str, template: str | None = None) -> str:
    with _admin(server_url) as conn:
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        conn.execute(stmt)
    return url_for(server_url, name)


def _drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _ensure_login_role(conn: psycopg.Connection[Any], role: str, *groups: str) -> None:
    # Roles are cluster-wide and may exist from an earlier run, or be created concurrently by
    # another session on the same server.
    with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        if not conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    for group in groups:
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(role)))


def ensure_test_logins(server_url: str, database_url: str) -> None:
    """The gateway's logins (by the real provisioning code, over `database_url`, a migrated database) and
    the test logins of the fixtures above."""
    assert roles.provision_login_roles(database_url) == []
    with _admin(server_url) as conn:
        _ensure_login_role(conn, APP_ROLE, "tollgate_app")
        _ensure_login_role(conn, ANALYST_ROLE, "tollgate_analyst")
        _ensure_login_role(conn, API_ROLE, *(authority.group_role for authority in Authority))


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """Superuser URL of the test server's maintenance database."""
    configured = os.environ.get("TOLLGATE_TEST_DATABASE_URL", "").strip()
    if configured:
        yield configured
        return
    # Outside pytest's basetemp: the server runs as another OS user when we are root, and
    # pytest resets its own temp root to mode 0700 whenever a session starts.
    root = Path(tempfile.mkdtemp(prefix="tollgate-test-pg-"))
    try:
        server = embedded.throwaway_server(root / "pgdata")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """Name of a database migrated by the real `api.ops.migrate.upgrade`, the template of `db_url`."""
    name = f"tollgate_tpl_{uuid.uuid4().hex[:12]}"
    url = _create_database(pg_server_url, name)
    try:
        migrate.upgrade(url, DB_DIR)
        ensure_test_logins(pg_server_url, url)
        yield name
    finally:
        _drop_database(pg_server_url, name)


@pytest.fixture
def db_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """Owner (superuser) URL of a migrated database of this test's own."""
    name = f"t_{uuid.uuid4().hex}"
    url = _create_database(pg_server_url, name, template=template_db)
    try:
        yield url
    finally:
        _drop_database(pg_server_url, name)


@pytest.fixture
def fresh_db_url(pg_server_url: str) -> Iterator[str]:
    """Owner (superuser) URL of an empty database of this test's own, with no migration applied."""
    name = f"t_{uuid.uuid4().hex}"
    url = _create_database(pg_server_url, name)
    try:
        yield url
    finally:
        _drop_database(pg_server_url, name)


@pytest.fixture
def metering_url(db_url: str) -> str:
    """`db_url`'s database as tollgate_gw_metering (the gateway's call path)."""
    return roles.derive_login_url(db_url, Authority.METERING)


@pytest.fixture
def payments_url(db_url: str) -> str:
    """`db_url`'s database as tollgate_gw_payments (money in)."""
    return roles.derive_login_url(db_url, Authority.PAYMENTS)


@pytest.fixture
def operator_url(db_url: str) -> str:
    """`db_url`'s database as tollgate_gw_operator (credits, corrections, configuration)."""
    return roles.derive_login_url(db_url, Authority.OPERATOR)


@pytest.fixture
def app_url(db_url: str) -> str:
    """`db_url`'s database as a login member of the deprecated tollgate_app (the metering role's rights)."""
    return url_for(db_url, str(conninfo_to_dict(db_url)["dbname"]), user=APP_ROLE)


@pytest.fixture
def api_url(db_url: str) -> str:
    """`db_url`'s database as a member of the metering, payments and operator roles (EXECUTE only)."""
    return url_for(db_url, str(conninfo_to_dict(db_url)["dbname"]), user=API_ROLE)


@pytest.fixture
def analyst_url(db_url: str) -> str:
    """`db_url`'s database as a login member of tollgate_analyst (may only SELECT the views)."""
    return url_for(db_url, str(conninfo_to_dict(db_url)["dbname"]), user=ANALYST_ROLE)


@pytest.fixture
def connect(db_url: str) -> Iterator[Connect]:
    """Factory of extra connections (default: to `db_url`, autocommit), closed after the test."""
    opened: list[psycopg.Connection[Any]] = []

    def _connect(url: str | None = None, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        connection = psycopg.connect(url or db_url, autocommit=autocommit)
        opened.append(connection)
        return connection

    yield _connect
    for connection in opened:
        connection.close()


@pytest.fixture
def conn(connect: Connect) -> psycopg.Connection[Any]:
    """Autocommit connection to `db_url` as the owner (superuser)."""
    return connect()


@pytest.fixture
def plpgsql_check_available(conn: psycopg.Connection[Any]) -> str:
    """Create the plpgsql_check extension in the test database and return its version.

    Skips the test when the server does not have the extension installed, unless
    TOLLGATE_REQUIRE_PLPGSQL_CHECK=1, when that is a failure instead (CI installs it).
    """
    row = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'plpgsql_check'"
    ).fetchone()
    if row is None:
        message = "the plpgsql_check extension is not installed on the test server"
        if os.environ.get("TOLLGATE_REQUIRE_PLPGSQL_CHECK") == "1":
            pytest.fail(f"{message}, and TOLLGATE_REQUIRE_PLPGSQL_CHECK=1")
        pytest.skip(message)
    conn.execute("CREATE EXTENSION IF NOT EXISTS plpgsql_check")
    version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'plpgsql_check'").fetchone()
    assert version is not None
    return str(version[0])


@pytest.fixture
def db(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The owner connection, parsing JSON numbers as Decimal (as api.ledger.db.connect does)."""
    apidb.configure(conn)
    return conn


# --- the gateway, end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway_db(pg_server_url: str, template_db: str) -> Iterator[str]:
    """Owner URL of a migrated database shared by one test module's gateway (tests use their own users)."""
    name = f"g_{uuid.uuid4().hex}"
    url = _create_database(pg_server_url, name, template=template_db)
    try:
        yield url
    finally:
        _drop_database(pg_server_url, name)


@pytest.fixture(scope="module")
def gateway(gateway_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real `tollgate run` on loopback, logged in as the three gateway logins, serving tests/gateway/tools.toml."""
    from tests.gateway.server import start_gateway

    server = start_gateway(gateway_db, tmp_path_factory.mktemp("gateway"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gdb(gateway_db: str) -> Iterator[psycopg.Connection[Any]]:
    """An owner connection to the gateway's database (JSON numbers as Decimal)."""
    from api.ledger import db as api_db

    with api_db.connect(gateway_db) as connection:
        yield connection
