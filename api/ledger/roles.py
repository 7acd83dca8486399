"""Who Tollgate logs in to the ledger as: one PostgreSQL login per authority, never a superuser (docs/design.md §5).

The ledger's group roles (NOLOGIN, made by migrations 0002, 0003 and 0006; what each may call is the
GRANT line at the end of each file in db/functions and db/views):

    tollgate_metering  the call path: tracking, holds, settlement, the caller's balance, history, own
                       limits and payment status, API-key authentication
    tollgate_payments  money in: payment intents, verified provider events, their expiry
    tollgate_operator  credits, adjustments, refunds, settings, prices, exchange rates, API keys,
                       ledger checks and reconciliation (and the views the CLI reads)
    tollgate_analyst   SELECT on the views, nothing else
    tollgate_owner     owns the schema and everything in it; only migrations use it
    tollgate_app       deprecated: a member of tollgate_metering and nothing else (logins made for it
                       keep the call path and nothing more)

The gateway keeps one connection pool per authority (``Authority``), each logged in as a member of
that authority's group role; the CLI's ledger commands log in as the operator (``tollgate payments
reconcile``: payments). Each login's URL is ``TOLLGATE_<AUTHORITY>_DATABASE_URL`` when set, else the
owner's URL (``TOLLGATE_DATABASE_URL``, or the embedded server's) with the user replaced by the
gateway's own login, ``tollgate_gw_<authority>``, and the password by ``TOLLGATE_DB_LOGIN_PASSWORD`` (no
password when unset: trust, peer, a .pgpass file or a client certificate must then let it in). The
owner's URL is only used to migrate and, where it may create roles, to make those logins
(``provision_login_roles``); nothing serves requests over it.

A login is refused (``check_login``) when it is a superuser, may create roles (before PostgreSQL 16
that is enough to join tollgate_owner), owns schema billing or is a member of its owner, is not a
member of its authority's group role, or is a member of another authority's: a pool logged in as
more than its authority would undo the split.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg import sql
from psycopg.rows import class_row

from api.ledger.queries import QUERIES

log = logging.getLogger("tollgate.roles")

PASSWORD_VARIABLE = "TOLLGATE_DB_LOGIN_PASSWORD"  # noqa: S105 - the name of a variable, not a secret


class Authority(enum.StrEnum):
    """What a connection is for; each has its group role, the gateway's login and a URL variable."""

    METERING = "metering"
    PAYMENTS = "payments"
    OPERATOR = "operator"

    @property
    def group_role(self) -> str:
        """The NOLOGIN role holding the grants (migration 0006)."""
        return f"tollgate_{self.value}"

    @property
    def login_role(self) -> str:
        """The gateway's own login, a member of ``group_role``, used when no URL is configured."""
        return f"tollgate_gw_{self.value}"

    @property
    def url_variable(self) -> str:
        return f"TOLLGATE_{self.value.upper()}_DATABASE_URL"


class UnsafeLogin(RuntimeError):
    """A run-time connection that is not exactly its authority: the gateway and the CLI refuse it."""


class NoDatabaseURL(ValueError):
    """A URL a command needs is neither configured nor derivable."""


# --- URLs ------------------------------------------------------------------------------------------


def derive_login_url(owner_url: str, authority: Authority, password: str | None = None) -> str:
    """``owner_url`` with the user replaced by the authority's login and the owner's password dropped
    (``password`` instead, when given). A key=value conninfo string: libpq quotes what needs it."""
    params = {key: str(value) for key, value in psycopg.conninfo.conninfo_to_dict(owner_url).items()}
    params.pop("password", None)
    params["user"] = authority.login_role
    if password is not None:
        params["password"] = password
    return psycopg.conninfo.make_conninfo("", **params)


# --- making the gateway's logins ----------------------------------------------------------------------


def provision_login_roles(
    owner: str, authorities: Iterable[Authority] = tuple(Authority), password: str | None = None
) -> list[str]:
    """Make the gateway's logins of ``authorities`` exist as members of their group roles, over the
    owner's URL; set their password when ``password`` is given (so it follows the variable).

    A login is created with LOGIN and no other attribute; an existing one is not altered otherwise
    (``check_login`` refuses one that became more than a login). Where the connecting role may not
    create roles or grant membership, nothing is changed for that login and the reason is returned,
    one line per login: the DBA makes it, or the deployment configures its own URL.
    """
    problems: list[str] = []
    with psycopg.connect(owner, autocommit=True) as conn:
        for authority in authorities:
            login = sql.Identifier(authority.login_role)
            group = sql.Identifier(authority.group_role)
            secret = sql.SQL("") if password is None else sql.SQL(" PASSWORD {}").format(sql.Literal(password))
            try:
                exists = conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (authority.login_role,)).fetchone()
                if exists is None:
                    # Several gateways may start at once: the loser of a race finds the role made.
                    with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                        conn.execute(
                            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE{}").format(login, secret)
                        )
                        log.info("login role created", extra={"role": authority.login_role})
                elif password is not None:
                    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(login, sql.Literal(password)))
                conn.execute(sql.SQL("GRANT {} TO {}").format(group, login))
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedObject) as exc:
                problems.append(
                    f"{authority.login_role}: {exc.diag.message_primary or exc} (make it yourself: CREATE ROLE"
                    f" {authority.login_role} LOGIN PASSWORD '…' IN ROLE {authority.group_role}; or set"
                    f" {authority.url_variable})"
                )
    return problems


# --- refusing a login that is more than its authority ----------------------------------------------------


@dataclass(frozen=True)
class LoginFacts:
    """What ``check_login`` reads about the connection's role (queries.sql ``login_role``)."""

    role: str
    superuser: bool
    createrole: bool
    owns_schema: bool
    # The group roles of the authorities whose privileges it has (inherited), and those it could SET ROLE to.
    uses: list[str]
    member_of: list[str]


def refusals(facts: LoginFacts | None, authority: Authority) -> list[str]:
    """Why a connection whose role has ``facts`` may not serve as ``authority`` (empty: it may)."""
    if facts is None:
        return ["schema billing does not exist in this database: migrate it first (tollgate migrate)"]
    reasons = []
    if facts.superuser:
        reasons.append("is a superuser")
    if facts.createrole:
        reasons.append("may create roles (CREATEROLE)")
    if facts.owns_schema:
        reasons.append("owns schema billing (or is a member of its owner)")
    if authority.group_role not in facts.uses:
        reasons.append(f"does not have the privileges of {authority.group_role} (not an inheriting member)")
    others = [other.group_role for other in Authority if other != authority and other.group_role in facts.member_of]
    if others and not facts.superuser:
        reasons.append(f"is also a member of {', '.join(others)}")
    return [f"{facts.role} {reason}" for reason in reasons]


def _verdict(facts: LoginFacts | None, authority: Authority) -> None:
    reasons = refusals(facts, authority)
    if reasons:
        raise UnsafeLogin(
            f"refusing the {authority.value} connection: {'; '.join(reasons)}. It must log in as a member of"
            f" {authority.group_role} and nothing more (e.g. {authority.login_role}, which `tollgate migrate`"
            f" makes; or set {authority.url_variable})"
        )


def check_login(conn: psycopg.Connection[Any], authority: Authority) -> None:
    """Raise UnsafeLogin unless ``conn`` is logged in as exactly ``authority`` (see ``refusals``)."""
    with conn.cursor(row_factory=class_row(LoginFacts)) as cur:
        facts = cur.execute(QUERIES["login_role"]).fetchone()
    _verdict(facts, authority)


async def acheck_login(conn: psycopg.AsyncConnection[Any], authority: Authority) -> None:
    """``check_login`` on an async connection."""
    async with conn.cursor(row_factory=class_row(LoginFacts)) as cur:
        await cur.execute(QUERIES["login_role"])
        facts = await cur.fetchone()
    _verdict(facts, authority)


def configured_logins(environ: Mapping[str, str]) -> dict[Authority, str]:
    """The TOLLGATE_<AUTHORITY>_DATABASE_URL variables that are set (empty counts as unset)."""
    found = {}
    for authority in Authority:
        value = environ.get(authority.url_variable, "").strip()
        if value:
            found[authority] = value
    return found
