"""The `tollgate` command line: run the gateway, migrate the ledger, manage the embedded server.

Who each command logs in as (api.ledger.roles): `migrate` and `db` use the owner's URL (TOLLGATE_DATABASE_URL or
the embedded server's); `run` migrates with it, makes the gateway's logins where it may, and serves over
the metering, payments and operator logins only; the ledger commands (`user`, `topup`, `pricing`, `rate`,
`apikey`, `ledger`, `payments review`, `abuse`) log in as the operator, `payments reconcile` as payments.

Adding a command takes two pieces: a `cmd_<name>(args, settings) -> int` function, and a block
in `build_parser` that adds its parser and sets `handler=cmd_<name>`. Expected failures (bad
settings, an unreachable database, a migration that fails) print one line to stderr and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.conninfo
from psycopg.rows import dict_row

from api.gateway.config import Settings, load_settings
from api.ledger import db, roles
from api.ledger import sync as ledger
from api.ledger.errors import BillingError
from api.ledger.queries import QUERIES
from api.ledger.roles import Authority
from api.ops import embedded, migrate
from api.ops.logins import login_url, login_urls, owner_url

EXIT_ERROR = 2

Handler = Callable[[argparse.Namespace, Settings], int]


class UsageError(Exception):
    """A command was asked for something that does not apply to this configuration."""


# Failures a user can cause and fix; they get a one-line message instead of a traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    ValueError,
    migrate.MigrationError,
    embedded.EmbeddedServerError,
    psycopg.Error,
    BillingError,
    roles.UnsafeLogin,
)


def redact(url: str) -> str:
    """`url` with its password, if any, replaced by ***, for printing."""
    if "password" not in psycopg.conninfo.conninfo_to_dict(url):
        return url
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql") and parts.password is not None:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))
    return psycopg.conninfo.make_conninfo(url, password="***")  # noqa: S106 - a mask, not a secret


def _require_embedded(settings: Settings, action: str) -> None:
    if not settings.embedded:
        raise UsageError(f"a database URL is configured, so there is no embedded server to {action}")


def _provision(settings: Settings, owner: str) -> None:
    """Make the gateway's logins whose URL is derived from the owner's (a configured one is the
    deployment's own), where the owner may; say what it could not do."""
    derived = [authority for authority in Authority if authority not in settings.login_urls]
    for problem in roles.provision_login_roles(owner, derived, settings.login_password):
        print(f"tollgate: warning: cannot make login role {problem}", file=sys.stderr, flush=True)


# --- tollgate migrate ---------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    url = owner_url(settings)
    if args.action == "status":
        for migration_id, applied in migrate.status(url, settings.db_dir):
            print(f"{'applied' if applied else 'pending'}  {migration_id}")
    elif args.action == "down":
        rolled_back = migrate.downgrade(url, settings.db_dir, args.to)
        for migration_id in rolled_back:
            print(f"rolled back {migration_id}")
        if not rolled_back:
            print("nothing to roll back")
    else:
        for migration_id in migrate.upgrade(url, settings.db_dir):
            print(f"applied {migration_id}")
        print("functions, views and grants re-applied")
        _provision(settings, url)
    return 0


# --- tollgate db --------------------------------------------------------------------------------


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "url":
        print(owner_url(settings))
    elif args.action == "psql":
        psql = str(embedded.psql_path())
        url = owner_url(settings)
        sys.stdout.flush()
        # exec, not a child process: psql must own the terminal and its Ctrl-C (query cancel).
        os.execv(psql, [psql, url, *args.passthrough])  # noqa: S606 - argv list, no shell
    elif args.action == "start":
        _require_embedded(settings, "start")
        print(embedded.database_url(settings))
    elif args.action == "stop":
        _require_embedded(settings, "stop")
        print("stopped" if embedded.stop(settings) else "not running")
    else:
        _require_embedded(settings, "inspect")
        running = embedded.status(settings)
        print(f"running: {running}" if running else "not running")
        return 0 if running else 1
    return 0


# --- tollgate run -------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api.abuse import connections
    from api.gateway.app import create_app
    from api.logs import configure_logging

    gateway = settings.gateway
    host = args.host or gateway.host
    port = gateway.port if args.port is None else args.port
    if host != gateway.host:
        settings = replace(settings, gateway=replace(gateway, host=host))
    # Stop the embedded server at the end only if this process started it: another
    # `tollgate run`, or a `tollgate db start`, may be relying on it.
    started_here = settings.embedded and embedded.status(settings) is None
    try:
        # The owner's URL migrates and makes the gateway's logins, then is done with: nothing serves
        # requests over it. --no-migrate: it is at most the base the login URLs are derived from.
        owner = None if settings.database_url is None and not settings.embedded else owner_url(settings)
        if not args.no_migrate:
            if owner is None:
                raise UsageError(
                    "tollgate run migrates first, as the owner: set TOLLGATE_DATABASE_URL, or pass --no-migrate"
                    " (then `tollgate migrate` is run separately, with the owner's URL)"
                )
            applied = migrate.upgrade(owner, settings.db_dir)
            if applied:
                print(f"tollgate: applied migrations {', '.join(applied)}", flush=True)
            _provision(settings, owner)
        logins = login_urls(settings, owner)
        where = "embedded PostgreSQL" if settings.embedded else "PostgreSQL"
        print(f"tollgate: ledger on {where} at {redact(logins[Authority.METERING])}", flush=True)
        names = ", ".join(
            f"{authority.value} as {psycopg.conninfo.conninfo_to_dict(url).get('user', '(default user)')}"
            for authority, url in logins.items()
        )
        print(f"tollgate: logging in for {names}", flush=True)
        configure_logging(gateway.log_level)
        app = create_app(settings, logins)
        print(f"tollgate: serving on http://{host}:{port} (MCP: /sse and /mcp, API: /api; Ctrl-C stops)", flush=True)
        # uvicorn stops accepting on SIGINT/SIGTERM and lets in-flight calls finish (and settle) for
        # up to 30 s before closing what is left (long-lived SSE streams). Afterwards it re-raises the
        # signal under the handlers it found; these record it, so that we still stop the embedded
        # server and exit 0 instead of dying by the signal.
        received: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda number, _frame: received.append(number))
        # Connection hygiene (api.abuse.connections): a deadline and a size cap on each request head, a
        # backstop on bodies, a cap on open connections.
        hygiene = connections.server_options(
            connections.effective(settings.abuse), app.state.gateway.metrics.count_refusal
        )
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=30,
            backlog=4096,
            lifespan="on",
            **hygiene,
            # uvicorn would rewrite the peer from X-Forwarded-For for any loopback client by default: the
            # client address is decided in one place, api.abuse.clientip, from [abuse] trusted_proxies.
            proxy_headers=False,
        )
    finally:
        if started_here and embedded.stop(settings):
            print("tollgate: embedded PostgreSQL stopped", flush=True)
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from api.gateway.auth import load_jwt_key, mint_token

    gateway = settings.gateway
    if not gateway.jwt_algorithms[0].startswith("HS"):
        print("tollgate: token needs the HS secret; with a public key, tokens come from your identity provider",
              file=sys.stderr)
        return 2
    if args.hours < 1 or args.hours * 3600 > gateway.jwt_max_lifetime_seconds:
        print(
            f"tollgate: --hours must be from 1 to {gateway.jwt_max_lifetime_seconds // 3600}: the gateway refuses "
            "tokens that live longer (TOLLGATE_JWT_MAX_LIFETIME_SECONDS)",
            file=sys.stderr,
        )
        return 2
    key = load_jwt_key(gateway, settings.data_dir)
    token = mint_token(
        key,
        args.user,
        algorithm=gateway.jwt_algorithms[0],
        email=args.user if "@" in args.user else None,
        admin_scope=gateway.admin_scope if args.admin else None,
        issuer=gateway.jwt_issuer,
        audience=gateway.jwt_audience,
        lifetime_seconds=args.hours * 3600,
    )
    print(token)
    return 0


# --- ledger operations: tollgate user / topup / pricing / rate / ledger ----------------------------


@contextmanager
def _ledger_connection(
    settings: Settings, authority: Authority = Authority.OPERATOR
) -> Iterator[psycopg.Connection[Any]]:
    """A connection as ``authority``'s login (the operator's by default), refused if it is more than that."""
    with db.connect(login_url(settings, authority)) as conn:
        roles.check_login(conn, authority)
        yield conn


def decimal_arg(text: str) -> Decimal:
    """An argparse type: a finite decimal number, parsed exactly (the SQL functions check the rest)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal number") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _resolve_user(conn: psycopg.Connection[Any], user: str) -> uuid.UUID:
    """A user given as its uuid or its external subject; an unknown subject is an error, not a new user."""
    try:
        return uuid.UUID(user)
    except ValueError:
        pass
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(QUERIES["user_by_external_id"], {"external_id": user}).fetchone()
    if row is None:
        raise UsageError(f"no user with external id {user!r} (create it with `tollgate user create`)")
    user_id: uuid.UUID = row["user_id"]
    return user_id


def _plain(value: object) -> str:
    """Decimals in positional notation (0.00000000, not 0E-8)."""
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def _print_fields(prefix: str = "", **fields: object) -> None:
    for name, value in fields.items():
        if isinstance(value, dict):
            _print_fields(f"{prefix}{name}.", **value)
        else:
            print(f"{prefix}{name}: {_plain(value)}")


def cmd_user(args: argparse.Namespace, settings: Settings) -> int:
    with _ledger_connection(settings) as conn:
        if args.action == "create":
            user_id = ledger.ensure_account(conn, args.external_id, args.email, args.name)
            print(user_id)
            return 0
        user_id = _resolve_user(conn, args.user)
        summary = ledger.summary(conn, user_id)
    _print_fields(**summary)
    return 0


def cmd_topup(args: argparse.Namespace, settings: Settings) -> int:
    with _ledger_connection(settings) as conn:
        user_id = _resolve_user(conn, args.user)
        result = ledger.top_up(
            conn, user_id, args.amount, args.provider, args.payment_id, args.currency, args.description
        )
    _print_fields(
        transaction_id=result.transaction_id,
        amount_usd=result.amount_usd,
        balance_after_usd=result.balance_after_usd,
        replayed=result.replayed,
    )
    return 0


def cmd_pricing(args: argparse.Namespace, settings: Settings) -> int:
    with _ledger_connection(settings) as conn:
        if args.action == "set":
            rows = [
                ledger.set_tool_pricing(
                    conn,
                    args.tool,
                    args.base,
                    markup_percent=args.markup,
                    estimate_usd=args.estimate,
                    variable_cost=args.variable,
                    description=args.description,
                    max_price_usd=args.max_price,
                    per_input_char_usd=args.per_input_char,
                    anonymous=args.anonymous,
                )
            ]
        else:
            rows = ledger.list_tool_pricing(conn)
    print(
        f"{'tool':<32} {'base_usd':>16} {'markup_%':>10} {'estimate_usd':>16} {'max_price_usd':>16} "
        f"{'per_input_char_usd':>20} variable anonymous"
    )
    for row in rows:
        base, markup = _plain(row.base_price_usd), _plain(row.markup_percent)
        estimate, max_price, per_char = (
            "-" if value is None else _plain(value)
            for value in (row.estimate_usd, row.max_price_usd, row.per_input_char_usd)
        )
        print(
            f"{row.tool_name:<32} {base:>16} {markup:>10} {estimate:>16} "
            f"{max_price:>16} {per_char:>20} {'yes' if row.variable_cost else 'no':<8} {row.anonymous_label}"
        )
    return 0


def cmd_rate(args: argparse.Namespace, settings: Settings) -> int:
    with _ledger_connection(settings) as conn:
        rate = ledger.set_exchange_rate(conn, args.per_usd, args.currency)
    print(f"{rate.currency} per USD: {rate.per_usd} from {rate.valid_from.isoformat()}")
    return 0


def cmd_apikey(args: argparse.Namespace, settings: Settings) -> int:
    from api.gateway import apikeys

    with _ledger_connection(settings) as conn:
        if args.action == "create":
            key = apikeys.generate_key()
            # One transaction: a refused key does not leave a user created for it behind.
            with conn.transaction():
                user_id = None
                if args.user is not None:
                    try:
                        user_id = uuid.UUID(args.user)
                    except ValueError:
                        user_id = ledger.ensure_account(conn, args.user)
                created = ledger.create_api_key(
                    conn, args.name, apikeys.hash_key(key), apikeys.key_prefix(key), user_id
                )
            billed = f"bills user {created.user_id}" if created.user_id else "tracked, not charged"
            print(f"api key {created.name} created ({billed})")
            print(key)
            print("tollgate: store this key now: only its hash is kept, so it cannot be shown again", file=sys.stderr)
            return 0
        if args.action == "revoke":
            revoked = ledger.revoke_api_key(conn, args.name)
            when = revoked.revoked_at.isoformat()
            print(f"api key {revoked.name} {'was already revoked' if revoked.replayed else 'revoked'} at {when}")
            return 0
        keys = ledger.list_api_keys(conn)
    print(f"{'name':<32} {'prefix':<16} {'user_id':<36} {'created_at':<25} revoked_at")
    for row in keys:
        prefix = f"{row.key_prefix}…" if row.key_prefix else "-"
        print(
            f"{row.name:<32} {prefix:<16} {row.user_id or '-'!s:<36} "
            f"{row.created_at.isoformat(timespec='seconds'):<25} "
            f"{'-' if row.revoked_at is None else row.revoked_at.isoformat(timespec='seconds')}"
        )
    return 0


def cmd_ledger(args: argparse.Namespace, settings: Settings) -> int:
    from api.ledger import anchors

    if args.action == "reconcile":
        return reconcile(settings, args.fail_stale_minutes)
    anchored = None
    if args.action == "verify" and args.anchors is not None:
        try:
            anchored = anchors.parse_anchor(Path(args.anchors).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the anchor file {args.anchors}: {exc}") from None
        except anchors.AnchorFileError as exc:
            raise UsageError(f"{args.anchors}: {exc}") from None
    with _ledger_connection(settings) as conn:
        if args.action == "reap":
            print(f"expired holds reaped: {ledger.reap_expired_holds(conn)}")
            return 0
        if args.action == "prune-anonymous":
            if not 0 <= args.keep_days <= 36500:
                raise UsageError("--keep-days must be from 0 to 36500")
            before = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=args.keep_days)
            print(f"anonymous usage rows deleted (days before {before}): {ledger.prune_anonymous_usage(conn, before)}")
            return 0
        if args.action == "anchor":
            heads = ledger.ledger_heads(conn)
            taken = conn.execute("SELECT now()").fetchone()
            assert taken is not None
            sys.stdout.write(anchors.format_anchor(heads, taken[0]))
            return 0
        violations = ledger.verify_ledger(conn)
        broken = [] if anchored is None else ledger.verify_anchors(conn, anchored)
    for violation in violations:
        print(f"{violation.invariant}: user {violation.user_id} transaction {violation.transaction_id}: "
              f"{violation.detail}")
    for anchor in broken:
        print(f"anchor: user {anchor.user_id} version {anchor.version}: {anchor.problem} since it was anchored")
    print("ledger OK: every invariant holds" if not violations else f"{len(violations)} invariant violation(s)")
    if anchored is not None:
        held = f"anchors OK: all {len(anchored)} hold"
        print(held if not broken else f"{len(broken)} of {len(anchored)} anchors broken")
    return 0 if not violations and not broken else 1


def reconcile(settings: Settings, fail_stale_minutes: int | None) -> int:
    """Replay this installation's spool (idempotent), then report what is still unbilled.

    The spool holds the outcome of every call whose completion could not be written; replaying it
    bills each call once (``complete_request`` is idempotent on the request id). A call still
    pending with no spooled outcome lost its gateway mid-call; ``--fail-stale-minutes`` closes such
    calls as failed, which frees their holds and charges nothing.
    """
    import asyncio

    from api.gateway.metering import permanent_failure
    from api.gateway.spool import PendingCompletion, Spool
    from api.ledger import aio as aledger

    url = login_url(settings, Authority.OPERATOR)
    spool = Spool(settings.data_dir / "spool")

    async def replay_all() -> tuple[int, int, list[tuple[str, str]]]:
        async with await db.aconnect(url) as conn:  # configured: JSON rendered like the gateway's
            await roles.acheck_login(conn, Authority.OPERATOR)
            async def complete(entry: PendingCompletion) -> None:
                await aledger.complete_request(
                    conn, entry.request_id, entry.success, entry.total_cost_usd,
                    cost_breakdown=entry.cost_breakdown, execution_time_ms=entry.execution_time_ms,
                    error=entry.error, description=entry.description,
                )

            report = await spool.replay(complete, permanent_failure)
            return report.written, report.remaining, report.rejected

    written, remaining, rejected = asyncio.run(replay_all())
    print(f"spool: {written} completion(s) written, {remaining} kept for retry, {len(rejected)} rejected")
    for request_id, reason in rejected:
        print(f"  rejected {request_id}: {reason}")
    with _ledger_connection(settings) as conn:
        if fail_stale_minutes is not None:
            spooled = {entry.request_id for entry in spool.pending()}
            stale = [
                row for row in conn.execute(QUERIES["stale_unbilled_calls"], {"minutes": fail_stale_minutes})
                if row[0] not in spooled  # their outcome is known and will be billed by a later replay
            ]
            for (request_id,) in stale:
                ledger.complete_request(
                    conn, request_id, False, error="outcome lost: the gateway stopped before the call finished"
                )
            print(f"closed {len(stale)} stale call(s) as failed")
        rows = ledger.unbilled_calls(conn)
    for row in rows:
        print(f"unbilled: {row.request_id} {row.tool_name} user {row.user_id} key {row.client_key} "
              f"since {row.created_at:%Y-%m-%d %H:%M:%S%z} (hold {row.hold_usd} {row.hold_status})")
    print(f"{len(rows)} call(s) still unbilled" if rows else "no unbilled calls")
    return 0 if remaining == 0 else 1


def _operator() -> str:
    """Who runs this command, for the audit trail: cli:<login name>."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def cmd_payments(args: argparse.Namespace, settings: Settings) -> int:
    """`tollgate payments reconcile`: ask the providers about open and recent payments, apply what
    they report (crediting a payment whose webhook never came, clawing back refunds), expire the rest.
    `tollgate payments review`: what an operator must look at (billing.payments_needing_review).
    `tollgate payments credit`: credit a payment in review after looking (billing.credit_reviewed_payment)."""
    import asyncio

    from api.payments.service import Payments

    if args.action == "review":
        with _ledger_connection(settings) as conn:
            rows = conn.execute(QUERIES["payments_needing_review"]).fetchall()
        for row in rows:
            print(" ".join(_plain(value) for value in row))
        print(f"{len(rows)} payment(s) need review" if rows else "no payment needs review")
        return 0
    if args.action == "credit":
        with _ledger_connection(settings) as conn:
            credit = ledger.credit_reviewed_payment(
                conn, args.intent_id, args.actor or _operator(), args.reason, args.amount, args.currency
            )
        _print_fields(
            intent_id=credit.intent_id,
            status=credit.status,
            transaction_id=credit.transaction_id,
            amount=credit.amount,
            currency=credit.currency,
            credited_usd=credit.credited_usd,
            reversed_usd=credit.reversed_usd,
            replayed=credit.replayed,
        )
        return 0

    url = login_url(settings, Authority.PAYMENTS)

    async def run() -> int:
        async with await db.aconnect(url) as conn:
            await roles.acheck_login(conn, Authority.PAYMENTS)
        pool = db.make_async_pool(url, min_size=1, max_size=2, timeout=30)
        await pool.open(wait=True, timeout=30)
        try:
            payments = Payments.from_env(pool, settings.payment_env)
            try:
                if not payments.providers:
                    raise UsageError("no payment provider is configured (TOLLGATE_STRIPE_* / TOLLGATE_FONDY_*)")
                report = await payments.reconcile(
                    args.provider,
                    min_age=dt.timedelta(minutes=args.min_age_minutes),
                    lookback=dt.timedelta(days=args.lookback_days),
                    grace=dt.timedelta(minutes=args.grace_minutes),
                )
            finally:
                await payments.aclose()
        finally:
            await pool.close()
        print(
            f"payments: {report.checked} checked, {report.events_applied} new event(s) applied "
            f"({report.credited} credited, {report.review} to review, {report.reversed} reversed), "
            f"{report.expired} expired"
        )
        for error in report.errors:
            print(f"  not checked: {error}")
        return 0 if not report.errors else 1

    return asyncio.run(run())


# --- tollgate abuse -----------------------------------------------------------------------------


def iso_time_arg(text: str) -> dt.datetime:
    """An argparse type: an ISO 8601 date or time (UTC unless it names a zone)."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def cmd_abuse(args: argparse.Namespace, settings: Settings) -> int:
    """`tollgate abuse events`: the audit trail of the abuse rules (billing.list_abuse_events), newest first.
    `tollgate abuse policy`: the figures the ledger enforces (billing.list_abuse_policy; a rule with no row
    uses its documented default)."""
    from api.jsonio import dumps

    with _ledger_connection(settings) as conn:
        if args.action == "policy":
            policy = ledger.list_abuse_policy(conn)
            for item in policy:
                print(f"{item.name}  {_plain(item.value)}  (set by {item.updated_by} at {item.updated_at.isoformat()})")
            if not policy:
                print("no figures stored: every rule uses its documented default (docs/abuse.md)")
            return 0
        user_id = None if args.user is None else _resolve_user(conn, args.user)
        events = ledger.list_abuse_events(conn, user_id=user_id, rule=args.rule, since=args.since, limit=args.limit)
    for event in events:
        print(
            f"{event.id}  {event.created_at.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}  {event.rule}  {event.action}"
            f"  user={event.user_id or '-'}  ip={event.client_ip or '-'}  actor={event.actor}"
        )
        message = event.detail.get("message")
        if message:
            print(f"    {message}")
        figures = {key: value for key, value in event.detail.items() if key != "message"}
        if figures:
            print(f"    {dumps(figures)}")
    print(f"{len(events)} event(s)" if events else "no abuse events")
    return 0


# --- tollgate abuse detect / flags (velocity flags) --------------------------------------------------


def cmd_abuse_detect(args: argparse.Namespace, settings: Settings) -> int:
    """`tollgate abuse detect`: run the velocity detector once (billing.detect_velocity), as the operator."""
    with _ledger_connection(settings) as conn:
        run = ledger.detect_velocity(conn, force=not args.unless_recent)
    print(
        f"velocity: {run.status}; {run.flags_raised} flag(s) raised, {run.accounts_paused} account(s) paused "
        f"({run.spike_candidates} spend(s) over the floor, {run.fanout_candidates} fan-out(s) over a limit)"
    )
    return 0


def cmd_abuse_flags(args: argparse.Namespace, settings: Settings) -> int:
    """`tollgate abuse flags list|clear|confirm`: the flags the velocity detector raised, and the decisions."""
    with _ledger_connection(settings) as conn:
        if args.flags_action == "list":
            user_id = None if args.user is None else _resolve_user(conn, args.user)
            status = None if args.status == "all" else args.status
            flags = ledger.list_account_flags(conn, user_id=user_id, status=status, limit=args.limit)
            for flag in flags:
                figures = " ".join(f"{key}={_plain(value)}" for key, value in sorted(flag.detail.items()))
                decision = f" {flag.decided_by}: {flag.reason}" if flag.decided_by else ""
                print(
                    f"#{flag.id} {flag.raised_at:%Y-%m-%d %H:%M:%S%z} {flag.status} {flag.rule} "
                    f"user {flag.user_id} ({flag.external_id}) {'paused' if flag.paused else 'not paused'}, "
                    f"account {'active' if flag.account_active else 'inactive'}: {figures}{decision}"
                )
            print(f"{len(flags)} flag(s)" if flags else "no flags")
            return 0
        decided = ledger.decide_account_flag(
            conn, args.flag_id, args.flags_action, args.actor or _operator(), args.reason
        )
    _print_fields(
        flag_id=decided.id,
        user_id=decided.user_id,
        rule=decided.rule,
        status=decided.status,
        decided_by=decided.decided_by,
        reason=decided.reason,
        account_active=decided.account_active,
        replayed=decided.replayed,
    )
    return 0


def add_velocity_commands(abuse_actions: Any) -> None:
    """`tollgate abuse detect` and `tollgate abuse flags ...`, added to the `abuse` command group."""
    detect = abuse_actions.add_parser("detect", help="run the velocity detector once (spend spikes, fan-out)")
    detect.add_argument(
        "--unless-recent", action="store_true", help="do nothing if a gateway ran it within half its interval"
    )
    detect.set_defaults(handler=cmd_abuse_detect)
    flags = abuse_actions.add_parser("flags", help="list, clear or confirm velocity flags raised on accounts")
    flags.set_defaults(handler=cmd_abuse_flags)
    flag_actions = flags.add_subparsers(dest="flags_action", required=True, metavar="ACTION")
    flags_list = flag_actions.add_parser("list", help="flags, newest first (open ones by default)")
    flags_list.add_argument("--status", choices=["open", "cleared", "confirmed", "all"], default="open")
    flags_list.add_argument("--user", help="only this user's flags (id or external subject)")
    flags_list.add_argument("--limit", type=int, default=100, help="at most this many (1-1000; default 100)")
    for decision, text in (
        ("clear", "a false alarm: reactivates an account the flag paused"),
        ("confirm", "the suspicion holds: the account stays (or is now) deactivated"),
    ):
        action = flag_actions.add_parser(decision, help=f"{decision} a flag ({text}); audited")
        action.add_argument("flag_id", type=int, help="the flag (tollgate abuse flags list shows them)")
        action.add_argument("--reason", required=True, help="why (recorded on the flag and in the audit trail)")
        action.add_argument("--actor", help="who decides, for the audit trail (default: cli:<login name>)")


# --- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollgate",
        description="Prepaid, usage-based billing gateway with its ledger in PostgreSQL.",
        epilog="Configured by TOLLGATE_* environment variables; without TOLLGATE_DATABASE_URL (or the "
        "TOLLGATE_{METERING,PAYMENTS,OPERATOR}_DATABASE_URL logins) an embedded PostgreSQL in "
        "TOLLGATE_DATA_DIR (default ./.tollgate) is used.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="migrate, then serve the gateway until SIGINT/SIGTERM")
    run.add_argument("--host", help="listen address (default TOLLGATE_HOST or 127.0.0.1)")
    run.add_argument("--port", type=int, help="listen port (default TOLLGATE_PORT or 8000)")
    run.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not migrate or make logins first (`tollgate migrate` does, as the owner)",
    )
    token = commands.add_parser("token", help="mint a development JWT signed with the local secret")
    token.add_argument("--user", required=True, help="the subject (sub); an e-mail address is also put in `email`")
    token.add_argument("--admin", action="store_true", help="include the admin scope")
    token.add_argument(
        "--hours", type=int, default=24, help="lifetime in hours (default 24; capped, see README)"
    )
    token.set_defaults(handler=cmd_token)
    run.set_defaults(handler=cmd_run)

    migrate_parser = commands.add_parser("migrate", help="apply or roll back schema migrations (default: up)")
    migrate_parser.set_defaults(handler=cmd_migrate, action="up")
    migrate_actions = migrate_parser.add_subparsers(dest="action", metavar="ACTION")
    migrate_actions.add_parser("up", help="apply pending migrations, re-apply functions, views and grants")
    down = migrate_actions.add_parser("down", help="roll back migrations")
    down.add_argument("--to", metavar="ID", help="keep migration ID applied (default: roll back all)")
    migrate_actions.add_parser("status", help="list migrations and whether each is applied")

    db = commands.add_parser("db", help="the database: embedded server control, URL, SQL shell")
    db.set_defaults(handler=cmd_db)
    db_actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    db_actions.add_parser("start", help="start the embedded server (creating it on first use); print its URL")
    db_actions.add_parser("stop", help="stop the embedded server")
    db_actions.add_parser("status", help="print the embedded server's URL if running (exit 1 if not)")
    db_actions.add_parser("url", help="print the database URL (starting the embedded server if needed)")
    psql = db_actions.add_parser(
        "psql",
        help="open psql on the database; further arguments go to psql (after -- if one is -h)",
        usage="tollgate db psql [--] [PSQL ARGUMENTS ...]",
    )
    psql.set_defaults(passthrough=[])

    user = commands.add_parser("user", help="create a user or show a user's billing summary")
    user.set_defaults(handler=cmd_user)
    user_actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    user_create = user_actions.add_parser("create", help="create (or find) the user of an external subject")
    user_create.add_argument("external_id", help="the identity provider's subject (JWT sub), e.g. an e-mail")
    user_create.add_argument("--email")
    user_create.add_argument("--name")
    user_show = user_actions.add_parser("show", help="print the billing summary of a user")
    user_show.add_argument("user", help="user id (uuid) or external subject")

    topup = commands.add_parser("topup", help="credit a user (operator action, idempotent per payment id)")
    topup.set_defaults(handler=cmd_topup)
    topup.add_argument("user", help="user id (uuid) or external subject")
    topup.add_argument("amount", type=decimal_arg, help="amount in --currency, e.g. 10.00")
    topup.add_argument("--payment-id", required=True, help="unique id of this payment (replays are ignored)")
    topup.add_argument("--provider", default="manual", help="payment provider (default: manual)")
    topup.add_argument("--currency", default="USD", choices=["USD", "UAH"])
    topup.add_argument("--description")

    pricing = commands.add_parser("pricing", help="set or list tool prices")
    pricing.set_defaults(handler=cmd_pricing)
    pricing_actions = pricing.add_subparsers(dest="action", required=True, metavar="ACTION")
    pricing_set = pricing_actions.add_parser("set", help="create or replace a tool's price")
    pricing_set.add_argument("tool")
    pricing_set.add_argument("--base", type=decimal_arg, required=True, help="USD per call")
    pricing_set.add_argument("--markup", type=decimal_arg, default=Decimal(0), help="percent on metered cost")
    pricing_set.add_argument(
        "--estimate", type=decimal_arg, help="USD held before a call, when no bound is declared (default: --base)"
    )
    pricing_set.add_argument(
        "--max-price", type=decimal_arg, help="the most one call is charged (the rest is written off); also its hold"
    )
    pricing_set.add_argument(
        "--per-input-char",
        type=decimal_arg,
        help="hold = base + characters of the arguments' strings x this x (1 + markup), at most --max-price",
    )
    pricing_set.add_argument("--variable", action="store_true", help="cost known only after the call")
    pricing_set.add_argument(
        "--anonymous",
        metavar="POLICY",
        help='callers without credentials: "deny", "free" or "free:N/day" (N calls a day per client address); '
        "default: deny when the tool can cost money, free otherwise",
    )
    pricing_set.add_argument("--description")
    pricing_actions.add_parser("list", help="list tool prices")

    rate = commands.add_parser("rate", help="record the UAH/USD exchange rate")
    rate.set_defaults(handler=cmd_rate)
    rate.add_argument("currency", choices=["UAH"])
    rate.add_argument("per_usd", type=decimal_arg, help="UAH per 1 USD, e.g. 41.25")

    apikey = commands.add_parser("apikey", help="create, revoke or list API keys (only their hashes are stored)")
    apikey.set_defaults(handler=cmd_apikey)
    apikey_actions = apikey.add_subparsers(dest="action", required=True, metavar="ACTION")
    apikey_create = apikey_actions.add_parser("create", help="create a key and print it once")
    apikey_create.add_argument("name", help="client name recorded on the key's calls (letters, digits, . _ -)")
    apikey_create.add_argument(
        "--user", help="bill this user (id or external subject, created if new); default: tracked, not charged"
    )
    apikey_revoke = apikey_actions.add_parser("revoke", help="revoke a key (idempotent)")
    apikey_revoke.add_argument("name")
    apikey_actions.add_parser("list", help="list keys (names and prefixes, never the keys)")

    ledger_parser = commands.add_parser("ledger", help="check the ledger's invariants, reap expired holds")
    ledger_parser.set_defaults(handler=cmd_ledger)
    ledger_actions = ledger_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify_parser = ledger_actions.add_parser("verify", help="list invariant violations (exit 1 if any)")
    verify_parser.add_argument(
        "--anchors", metavar="FILE", help="also check the heads anchored in FILE (`tollgate ledger anchor`)"
    )
    ledger_actions.add_parser(
        "anchor", help="print every account's hash-chain head, to keep elsewhere (verify --anchors checks it)"
    )
    ledger_actions.add_parser("reap", help="expire holds past their expiry")
    prune_parser = ledger_actions.add_parser(
        "prune-anonymous", help="delete the daily aggregate of anonymous calls older than --keep-days (never today's)"
    )
    prune_parser.add_argument(
        "--keep-days", type=int, default=90, metavar="N", help="days of billing.anonymous_usage to keep (90)"
    )
    reconcile_parser = ledger_actions.add_parser(
        "reconcile", help="bill spooled completions (calls that ran while the ledger was unreachable); list the rest"
    )
    reconcile_parser.add_argument(
        "--fail-stale-minutes",
        type=int,
        metavar="N",
        help="also close calls pending for over N minutes whose outcome no spool holds, as failed (not charged)",
    )

    payments = commands.add_parser("payments", help="reconcile payments with the providers, list what needs review")
    payments.set_defaults(handler=cmd_payments)
    payment_actions = payments.add_subparsers(dest="action", required=True, metavar="ACTION")
    reconcile_payments = payment_actions.add_parser(
        "reconcile", help="apply what the providers report about open/recent payments (idempotent); expire stale ones"
    )
    reconcile_payments.add_argument("--provider", help="only this provider (default: every configured one)")
    reconcile_payments.add_argument(
        "--min-age-minutes", type=int, default=5, metavar="N", help="skip open payments younger than N minutes (5)"
    )
    reconcile_payments.add_argument(
        "--lookback-days", type=int, default=7, metavar="N",
        help="also re-check payments created in the last N days: late successes, refunds (7)",
    )
    reconcile_payments.add_argument(
        "--grace-minutes", type=int, default=60, metavar="N",
        help="expire open payments N minutes past their expiry that no provider reports paid (60)",
    )
    payment_actions.add_parser(
        "review", help="payments an operator must look at (in review, mismatches, unmatched, unknown intents)"
    )
    credit = payment_actions.add_parser(
        "credit", help="credit a payment in review, after looking at it (once; audited with --reason)"
    )
    credit.add_argument("intent_id", type=uuid.UUID, help="the payment intent (tollgate payments review lists them)")
    credit.add_argument("--reason", required=True, help="why it is credited (recorded on the intent and ledger row)")
    credit.add_argument(
        "--amount", type=decimal_arg, help="amount to credit in --currency (default: what the provider reported paid)"
    )
    credit.add_argument("--currency", choices=["USD", "UAH"], help="currency to credit in (default: the paid one)")
    credit.add_argument("--actor", help="who credits it, for the audit trail (default: cli:<login name>)")

    abuse = commands.add_parser("abuse", help="the abuse controls: the audit trail of their rules, their figures")
    abuse.set_defaults(handler=cmd_abuse)
    abuse_actions = abuse.add_subparsers(dest="action", required=True, metavar="ACTION")
    abuse_events = abuse_actions.add_parser(
        "events", help="every refusal, limit, flag and pause a rule caused, newest first, with its figures"
    )
    abuse_events.add_argument("--user", help="only this user (uuid or external subject)")
    abuse_events.add_argument("--rule", help="only this rule, or a dotted prefix (payments)")
    abuse_events.add_argument("--since", type=iso_time_arg, help="only events at or after this time (ISO 8601)")
    abuse_events.add_argument("--limit", type=int, default=100, help="at most N events (1-1000, default 100)")
    abuse_actions.add_parser("policy", help="the figures the ledger enforces (billing.abuse_policy)")
    add_velocity_commands(abuse_actions)

    return parser


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Commands that hand their arguments to another program set a `passthrough` default.
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "passthrough"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if hasattr(args, "passthrough"):
        args.passthrough = extra[1:] if extra[:1] == ["--"] else extra
    handler: Handler = args.handler
    try:
        return handler(args, load_settings())
    except EXPECTED_ERRORS as exc:
        print(f"tollgate: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
