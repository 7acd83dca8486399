"""Schema migrations: yoyo for db/migrations, then db/functions and db/views re-applied every time.

Layout of the db directory (docs/design.md §1):

    migrations/NNNN_name.sql (+ NNNN_name.rollback.sql)   tables, constraints, roles: applied once
    functions/*.sql                                       CREATE OR REPLACE, re-applied on every upgrade
    views/*.sql                                           idem, after the functions

`upgrade` applies the pending migrations with yoyo, then always re-applies every function and
view file, all in one transaction, so the database's code matches the checkout even when no
migration was pending (yoyo's own post-apply hook does not run then). CREATE OR REPLACE of a function
whose arguments changed makes a new overload beside the old one, so the overloads of a file's function
that no file (re)created are dropped in the same transaction; a function removed altogether needs a
migration's DROP FUNCTION. The privileges of the Tollgate
roles are the GRANT lines the files end with: every one the roles held is revoked first, so a grant
removed from a file is gone. Everything is then given to the NOLOGIN tollgate_owner (migration 0003),
whatever role migrates. The connecting role must be a superuser, or a member of tollgate_owner that
may create roles (migrations 0002 and 0006 create the group roles when missing).

Login roles are not this module's business: `api.ledger.roles.provision_login_roles` makes the gateway's.

yoyo's URL parser is not libpq's: it does not percent-decode the database name or a socket
directory given as the host, ignores multi-host URLs, knows nothing of key=value conninfo strings,
and picks psycopg2 for `postgresql://`. So the URL is parsed by libpq (via psycopg) and handed
to yoyo as `postgresql+psycopg://?dbname=…&host=…`, which yoyo passes through to psycopg 3 as
keyword arguments unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import psycopg.conninfo
from yoyo import exceptions as yoyo_exceptions
from yoyo import get_backend, read_migrations

logger = logging.getLogger(__name__)

# Serialises concurrent `upgrade`s (several gateway instances starting at once): without it two
# CREATE OR REPLACE FUNCTION of the same function can fail with "tuple concurrently updated".
# Any constant unique to Tollgate will do; this one is "tollgate" in ASCII, read as a bigint.
_UPGRADE_LOCK_KEY = 0x746F6C6C67617465

# The roles the code files grant to (a GRANT line at the end of each public function's file in
# db/functions and of each view's in db/views: the reviewable list of who may do what, docs/design.md §5).
# Everything they hold on the schema's routines and relations is revoked first, in the same
# transaction as the files, so the files are the whole truth: a grant removed from a file is gone
# after the next upgrade. tollgate_app is the deprecated alias of tollgate_metering (migration 0006):
# it holds no grant of its own.
GRANTEE_ROLES = ("tollgate_metering", "tollgate_payments", "tollgate_operator", "tollgate_analyst", "tollgate_app")

_REVOKES = f"""
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA billing FROM PUBLIC, {", ".join(GRANTEE_ROLES)};
REVOKE ALL ON ALL TABLES IN SCHEMA billing FROM PUBLIC, {", ".join(GRANTEE_ROLES)};
"""

_OWNERSHIP = """
-- A file's CREATE gives PUBLIC EXECUTE on a new function: the files grant what they mean to.
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA billing FROM PUBLIC;
DO $grants$
DECLARE
    r record;
BEGIN
    -- SECURITY DEFINER functions run as their owner: the unprivileged tollgate_owner (migration
    -- 0003), never the role that migrates, which is often a superuser.
    FOR r IN
        SELECT p.oid::regprocedure AS routine
        FROM pg_proc p
        WHERE p.pronamespace = 'billing'::regnamespace
          AND p.proowner <> 'tollgate_owner'::regrole
          AND NOT EXISTS (SELECT FROM pg_depend d
                          WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO tollgate_owner', r.routine);
    END LOOP;
    FOR r IN
        SELECT c.oid::regclass AS relation, c.relkind
        FROM pg_class c
        WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('v', 'm')
          AND c.relowner <> 'tollgate_owner'::regrole
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO tollgate_owner',
                       CASE r.relkind WHEN 'v' THEN 'VIEW' ELSE 'MATERIALIZED VIEW' END, r.relation);
    END LOOP;
    -- Functions whose name starts with _ are helpers (trigger functions, internals): not an API. One
    -- granted to anybody could move money past every check of the public functions.
    FOR r IN
        SELECT p.oid::regprocedure AS routine, a.grantee::regrole AS grantee
        FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
        WHERE p.pronamespace = 'billing'::regnamespace AND left(p.proname, 1) = '_' AND a.grantee <> p.proowner
    LOOP
        RAISE EXCEPTION 'the helper % is granted to %: helpers are granted to nobody', r.routine, r.grantee;
    END LOOP;
END
$grants$;
"""


class MigrationError(RuntimeError):
    """A migration, function or view file could not be applied or rolled back."""


def _yoyo_url(url: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    return "postgresql+psycopg://?" + urlencode({k: str(v) for k, v in params.items()})


def _migrations_dir(db_dir: Path) -> Path:
    path = db_dir / "migrations"
    if not path.is_dir():
        raise MigrationError(f"no migrations directory at {path} (set TOLLGATE_DB_DIR to the project's db/)")
    return path


def _sql_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.sql")) if directory.is_dir() else []


@contextmanager
def _backend(url: str) -> Iterator[Any]:
    try:
        backend = get_backend(_yoyo_url(url))
    except psycopg.Error as exc:
        raise MigrationError(f"cannot connect to the database: {exc}") from exc
    try:
        with backend.lock():
            yield backend
    except yoyo_exceptions.LockTimeout as exc:
        raise MigrationError(f"another migration holds the lock: {exc}") from exc
    finally:
        backend.connection.close()


@contextmanager
def _upgrade_lock(url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_UPGRADE_LOCK_KEY,))
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_UPGRADE_LOCK_KEY,))


# Every routine of schema billing, with the physical place of its pg_proc row: CREATE OR REPLACE always writes
# a new row version, and while this transaction is open the old version keeps its place, so a routine the
# files created or replaced is one whose (oid, ctid) is not in the list taken before them.
_ROUTINE_ROWS = """
SELECT p.oid::int8, p.ctid::text FROM pg_proc p WHERE p.pronamespace = 'billing'::regnamespace
"""

# The overloads the files left behind: routines of billing that the files did not create or replace, whose
# name is that of one they did (its signature changed: CREATE OR REPLACE made a new overload beside the old
# one). Routines no file names (those migrations create: trigger functions, the ledger's hash functions)
# and extension members are not touched.
_STALE_OVERLOADS = """
WITH routines AS (
    SELECT p.oid, p.proname, p.prokind, (p.oid::int8, p.ctid::text) NOT IN (
               SELECT * FROM unnest(%(oids)s::int8[], %(ctids)s::text[])) AS touched
    FROM pg_proc p
    WHERE p.pronamespace = 'billing'::regnamespace
)
SELECT r.oid::regprocedure::text
FROM routines r
WHERE NOT r.touched AND r.prokind IN ('f', 'p')
  AND r.proname IN (SELECT t.proname FROM routines t WHERE t.touched)
  AND NOT EXISTS (SELECT FROM pg_depend d
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = r.oid AND d.deptype = 'e')
ORDER BY 1
"""


def _drop_stale_overloads(conn: psycopg.Connection[Any], before: list[tuple[int, str]]) -> None:
    """Drop the overloads whose signature no file defines any more (a file changed a function's arguments).
    Without CASCADE: an overload something still depends on fails the upgrade, naming it."""
    oids, ctids = [oid for oid, _ in before], [ctid for _, ctid in before]
    stale = [row[0] for row in conn.execute(_STALE_OVERLOADS, {"oids": oids, "ctids": ctids}).fetchall()]
    for routine in stale:
        try:
            # `routine` is regprocedure's own text: schema-qualified and quoted where needed.
            conn.execute(f"DROP ROUTINE {routine}".encode())
        except psycopg.Error as exc:
            raise MigrationError(f"dropping {routine}, an overload no file defines any more: {exc}") from exc
        logger.info("dropped %s: no file defines that signature any more", routine)


def _reapply_code(conn: psycopg.Connection[Any], db_dir: Path) -> None:
    """Revoke the grantee roles' privileges, re-run every function and view file (each grants its own),
    drop the overloads the files no longer define, then give everything to tollgate_owner, in one
    transaction."""
    files = _sql_files(db_dir / "functions") + _sql_files(db_dir / "views")
    with conn.transaction():
        try:
            conn.execute(_REVOKES.encode())
        except psycopg.Error as exc:
            raise MigrationError(f"revoking privileges on schema billing: {exc}") from exc
        before = [(int(oid), str(ctid)) for oid, ctid in conn.execute(_ROUTINE_ROWS).fetchall()]
        for path in files:
            try:
                # No parameters: psycopg sends the file as one simple query, so a file may hold
                # several statements and `%` needs no escaping.
                conn.execute(path.read_text(encoding="utf-8").encode())
            except psycopg.Error as exc:
                raise MigrationError(f"{path.relative_to(db_dir)}: {exc}") from exc
        _drop_stale_overloads(conn, before)
        try:
            conn.execute(_OWNERSHIP.encode())
        except psycopg.Error as exc:
            raise MigrationError(f"owning and checking schema billing's code: {exc}") from exc
    logger.info("re-applied %d function and view files", len(files))


def upgrade(url: str, db_dir: Path) -> list[str]:
    """Apply the pending migrations, then re-apply db/functions, db/views and the grants.

    Returns the ids of the migrations applied (empty when none was pending).
    """
    migrations = read_migrations(str(_migrations_dir(db_dir)))
    try:
        with _upgrade_lock(url) as conn:
            with _backend(url) as backend:
                pending = backend.to_apply(migrations)
                ids = [m.id for m in pending]
                try:
                    backend.apply_migrations(pending)
                except (psycopg.Error, yoyo_exceptions.BadMigration) as exc:
                    raise MigrationError(f"applying migrations: {exc}") from exc
            _reapply_code(conn, db_dir)
    except psycopg.OperationalError as exc:
        raise MigrationError(f"cannot connect to the database: {exc}") from exc
    for migration_id in ids:
        logger.info("applied migration %s", migration_id)
    return ids


def downgrade(url: str, db_dir: Path, target: str | None) -> list[str]:
    """Roll back the migrations applied after `target`, keeping `target` itself applied.

    `target=None` rolls back every migration ("down to zero"). Functions and views are not
    re-applied: the next `upgrade` does that. Returns the ids rolled back, newest first.
    """
    migrations = read_migrations(str(_migrations_dir(db_dir)))
    ids = [m.id for m in migrations]
    if target is not None:
        if target not in ids:
            raise MigrationError(f"unknown migration {target!r}; known: {', '.join(ids) or 'none'}")
        # Migrations are numbered: "after target" is "later in filename order".
        keep = set(ids[: ids.index(target) + 1])
        migrations = migrations.filter(lambda m: m.id not in keep)
    try:
        with _upgrade_lock(url), _backend(url) as backend:
            doomed = backend.to_rollback(migrations)
            rolled_back = [m.id for m in doomed]
            try:
                backend.rollback_migrations(doomed)
            except (psycopg.Error, yoyo_exceptions.BadMigration) as exc:
                raise MigrationError(f"rolling back migrations: {exc}") from exc
    except psycopg.OperationalError as exc:
        raise MigrationError(f"cannot connect to the database: {exc}") from exc
    return rolled_back


def status(url: str, db_dir: Path) -> list[tuple[str, bool]]:
    """Every migration in db/migrations, in order, with whether it is applied to the database."""
    migrations = read_migrations(str(_migrations_dir(db_dir)))
    try:
        backend = get_backend(_yoyo_url(url))
    except psycopg.Error as exc:
        raise MigrationError(f"cannot connect to the database: {exc}") from exc
    try:
        applied = set(backend.get_applied_migration_hashes())
    finally:
        backend.connection.close()
    return [(m.id, m.hash in applied) for m in migrations]
