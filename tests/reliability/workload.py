"""A mixed billing workload with a memory of everything it was told, and a checker of the database against it.

`Workload(url, users, clients, seed)` drives the SQL API (through `api.ledger.sync`, one call per function, as
the gateway does) from `clients` threads, each with one psycopg connection of its own, against `users`
accounts it creates and funds in `prepare`. Each client draws operations at random (seeded per client):

    reserve   a hold under a fresh request id
    settle    one of the client's own open holds, at a price below, at or above the hold (or 0); above the
              hold it is charged only as far as the balance and limits cover it, the rest written off
    release   one of the client's own open holds
    charge    a direct charge under a fresh request id
    top_up    a credit under a fresh (provider, payment_id)
    refund    part of one of the client's own acknowledged charges under a fresh idempotency key,
              sometimes deliberately more than is left of it (must be refused with BL011)

An operation is *acknowledged* when its call returned: a result (possibly a replay) or a business refusal
(a BLxxx SQLSTATE). Only then is it appended to the log. When the connection breaks, the client
reconnects (waiting for the server to come back, up to `reconnect_timeout` seconds) and retries the
*same* call with the same key until it gets an answer; a try that was running when the connection broke
makes the operation "in doubt", and the answer to the retry resolves it: `replayed = true` means the
lost try had committed, `replayed = false` (or a refusal) that it had not. Anything else — a refusal an
operation cannot legitimately get (e.g. BL008 for the client's own hold, BL005 for a retry with
identical parameters), a replay of a key never sent before, a non-business SQL error on a live
connection — is recorded in `anomalies`; a correct ledger produces none.

`check(conn)` (a connection that may read the billing tables: the owner or a superuser) compares the
database with the log: every acknowledged success present exactly once under its key with its user,
amount and transaction id; nothing under a key whose call was refused or never acknowledged; every hold
in the state its last acknowledged operation left it; every write-off (billing.write_offs) one that an
acknowledged settlement reported, with its figures; balances and held amounts equal to what the
acknowledged operations add up to, and no balance below zero (nothing here debits an account, and a
settlement never takes one below zero); and `billing.verify_ledger()` empty. Call it only while no client is
running (after `run`/`join` returned). Keys carry a random run id, so several workloads (or runs) can
share one database; `check` looks only at this workload's users.

Typical use:

    workload = Workload(api_url, users=100, clients=16, seed=7)
    with api.ledger.db.connect(api_url) as conn:
        workload.prepare(conn)
    stop = threading.Event()
    workload.start(stop); ...; stop.set(); workload.join()
    with api.ledger.db.connect(owner_url) as conn:
        assert workload.check(conn) == []
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg

from api.ledger import db as apidb
from api.ledger import sync as ledger
from api.ledger.errors import BillingError

PROVIDER = "crashtest"
HOLD_TTL = dt.timedelta(days=1)  # the longest hold reserve allows: no hold expires while a test runs
MAX_OPEN_HOLDS = 32  # per client; above it the client only settles and releases
RESERVE_OR_CHARGE_REFUSALS = frozenset({"BL001", "BL002", "BL003"})
# SQLSTATEs of a lost connection (the server went away, or is starting up / recovering).
CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "08000", "08001", "08003", "08004", "08006"})

Money = Decimal


class WorkloadError(RuntimeError):
    """A client could not go on (e.g. the server did not come back within reconnect_timeout)."""


@dataclass(frozen=True)
class Ack:
    """One acknowledged operation: what was asked, and the answer it got."""

    client: int  # -1 for the funding top-ups of `prepare`
    kind: str  # reserve, settle, release, charge, top_up, refund
    key: str  # request id (reserve/settle/release/charge), payment id (top_up), idempotency key (refund)
    user_id: uuid.UUID
    amount_usd: Money  # hold, actual price, charge, credit or refund asked for
    refused: str | None  # SQLSTATE of the refusal; None when the call succeeded
    status: str | None = None  # reserve/settle/release/charge status
    transaction_id: int | None = None  # the ledger row the answer names
    refund_of: int | None = None
    charged_usd: Money | None = None  # settle: what was charged of the price (the rest was written off)
    replayed: bool = False
    attempts: int = 1
    in_doubt: bool = False  # a try was running when the connection broke


@dataclass(frozen=True)
class Problem:
    """A difference between the database and the acknowledged operations."""

    kind: str  # lost, duplicate, phantom, mismatch, balance, held, invariant
    key: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.key}: {self.detail}"


@dataclass
class Stats:
    acknowledged: int = 0
    committed: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    retries: int = 0  # tries beyond the first
    reconnects: int = 0  # connections opened: each client's first, then one after every lost one
    in_doubt: int = 0  # operations whose try was cut by a lost connection (all resolved once acknowledged)
    in_doubt_committed: int = 0  # ... and the retry found it had committed (replayed)
    in_doubt_rolled_back: int = 0  # ... and the retry found it had not

    def add(self, other: Stats) -> None:
        self.acknowledged += other.acknowledged
        self.committed += other.committed
        self.refused.update(other.refused)
        self.by_kind.update(other.by_kind)
        self.retries += other.retries
        self.reconnects += other.reconnects
        self.in_doubt += other.in_doubt
        self.in_doubt_committed += other.in_doubt_committed
        self.in_doubt_rolled_back += other.in_doubt_rolled_back


@dataclass
class _Hold:
    request_id: str
    user_id: uuid.UUID
    amount_usd: Money


@dataclass
class _Charged:
    transaction_id: int
    user_id: uuid.UUID
    amount_usd: Money
    refunded_usd: Money = Decimal(0)


@dataclass
class _Op:
    kind: str
    key: str
    user_id: uuid.UUID
    amount_usd: Money
    call: Callable[[psycopg.Connection[Any]], Any]
    allowed_refusals: frozenset[str] = frozenset()
    must_refuse: bool = False  # a deliberate refusal (a refund above what is left of the charge)
    hold: _Hold | None = None
    charged: _Charged | None = None


@dataclass
class _Client:
    index: int
    rng: random.Random
    holds: list[_Hold] = field(default_factory=list)
    charges: list[_Charged] = field(default_factory=list)
    log: list[Ack] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    anomalies: list[str] = field(default_factory=list)
    seq: int = 0
    conn: psycopg.Connection[Any] | None = None


def _usd(rng: random.Random, low: Money, high: Money) -> Money:
    """A random amount in [low, high] with 8 decimals."""
    lo, hi = int(low.scaleb(8)), int(high.scaleb(8))
    return Decimal(rng.randint(lo, hi)).scaleb(-8)


class Workload:
    """`clients` threads running mixed billing operations on `users` accounts, and a log of their answers."""

    def __init__(
        self,
        url: str,
        users: int = 100,
        clients: int = 16,
        seed: int = 0,
        *,
        reconnect_timeout: float = 60.0,
        connect_timeout: int = 5,
    ) -> None:
        if users < 10 or clients < 1:
            raise ValueError("a workload needs at least 10 users and 1 client")
        self.url = url
        self.users = users
        self.clients = clients
        self.seed = seed
        self.reconnect_timeout = reconnect_timeout
        self.connect_timeout = connect_timeout
        self.run_id = uuid.uuid4().hex[:10]
        self.user_ids: list[uuid.UUID] = []
        self.poor: set[uuid.UUID] = set()  # never topped up after prepare: they keep meeting BL001
        self.funding: list[Ack] = []
        self._clients = [_Client(i, random.Random(f"{seed}/{i}")) for i in range(clients)]
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    # --- set-up ------------------------------------------------------------------------------------

    def prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Create and fund the users (through the API, as the connection's role; autocommit).

        Profiles, by index: 8 of 10 are ordinary (50 USD, limits out of reach); one in 10 is poor
        (0.05 USD, never topped up again: reserve/charge meet BL001); one in 10 is limited (daily limit
        0.20 USD, and every other one of those a monthly limit of 0.10 USD: BL002 and BL003).
        """
        if self.user_ids:
            raise RuntimeError("prepare() was already called")
        for i in range(self.users):
            user_id = ledger.ensure_account(conn, f"{self.run_id}-u{i}")
            self.user_ids.append(user_id)
            profile = i % 10
            if profile == 8:
                self.poor.add(user_id)
                funding = Decimal("0.05")
                ledger.update_settings(
                    conn, user_id, daily_limit_usd=Decimal(1000000), monthly_limit_usd=Decimal(1000000)
                )
            elif profile == 9:
                funding = Decimal(50)
                monthly = Decimal("0.10") if i % 20 == 19 else Decimal(100)
                ledger.update_settings(conn, user_id, daily_limit_usd=Decimal("0.20"), monthly_limit_usd=monthly)
            else:
                funding = Decimal(50)
                ledger.update_settings(
                    conn, user_id, daily_limit_usd=Decimal(1000000), monthly_limit_usd=Decimal(1000000)
                )
            payment_id = f"{self.run_id}-fund-{i}"
            result = ledger.top_up(conn, user_id, funding, PROVIDER, payment_id)
            self.funding.append(
                Ack(-1, "top_up", payment_id, user_id, funding, None, transaction_id=result.transaction_id)
            )

    # --- running -----------------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> None:
        """Start the client threads; they run until `stop` is set, then finish the operation in hand."""
        if not self.user_ids:
            raise RuntimeError("call prepare() first")
        if self._threads:
            raise RuntimeError("the workload is already running")
        self._errors = []
        self._threads = [
            threading.Thread(
                target=self._client_main, args=(client, stop), name=f"workload-{client.index}", daemon=True
            )
            for client in self._clients
        ]
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the clients (after `stop` was set); re-raise the first error a client met."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise WorkloadError(f"clients did not finish within {timeout} s: {alive}")
        self._threads = []
        if self._errors:
            raise WorkloadError(f"{len(self._errors)} client(s) failed: {self._errors[0]!r}") from self._errors[0]

    def run(self, stop: threading.Event, timeout: float | None = None) -> None:
        """`start`, then `join` (blocks until `stop` is set and every client has its last answer)."""
        self.start(stop)
        self.join(timeout)

    def close(self) -> None:
        """Close the clients' connections (they are kept open between runs)."""
        for client in self._clients:
            if client.conn is not None:
                client.conn.close()
                client.conn = None

    # --- results -----------------------------------------------------------------------------------

    @property
    def log(self) -> list[Ack]:
        """Every acknowledged operation: the funding first, then each client's in the order it got them."""
        return [*self.funding, *(ack for client in self._clients for ack in client.log)]

    @property
    def acknowledged(self) -> int:
        """Operations acknowledged so far (safe to read while the clients run)."""
        return sum(client.stats.acknowledged for client in self._clients)

    @property
    def stats(self) -> Stats:
        total = Stats()
        for client in self._clients:
            total.add(client.stats)
        return total

    @property
    def anomalies(self) -> list[str]:
        return [anomaly for client in self._clients for anomaly in client.anomalies]

    # --- one client --------------------------------------------------------------------------------

    def _client_main(self, client: _Client, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                op = self._next_op(client)
                self._record(client, op, self._perform(client, op))
        except BaseException as exc:  # handed to join(), which re-raises it in the caller's thread
            self._errors.append(exc)

    def _next_key(self, client: _Client, kind: str) -> str:
        client.seq += 1
        return f"{self.run_id}-c{client.index}-{client.seq}-{kind}"

    def _next_op(self, client: _Client) -> _Op:
        rng = client.rng
        weights: dict[str, int] = {}
        if len(client.holds) < MAX_OPEN_HOLDS:
            weights.update(reserve=24, charge=24, top_up=6)
        if client.holds:
            weights.update(settle=22, release=8)
        if client.charges:
            weights["refund"] = 8
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        user_id = rng.choice(self.user_ids)

        if kind == "reserve":
            key = self._next_key(client, kind)
            amount = _usd(rng, Decimal("0.00000001"), Decimal("0.05"))
            ttl = HOLD_TTL
            return _Op(
                kind,
                key,
                user_id,
                amount,
                lambda c: ledger.reserve(c, user_id, key, amount, ttl),
                RESERVE_OR_CHARGE_REFUSALS,
            )
        if kind == "charge":
            key = self._next_key(client, kind)
            amount = _usd(rng, Decimal("0.00000001"), Decimal("0.03"))
            return _Op(
                kind,
                key,
                user_id,
                amount,
                lambda c: ledger.charge(c, user_id, key, amount, "crash test"),
                RESERVE_OR_CHARGE_REFUSALS,
            )
        if kind == "top_up":
            while user_id in self.poor:
                user_id = rng.choice(self.user_ids)
            key = self._next_key(client, kind)
            amount = _usd(rng, Decimal("0.01"), Decimal("2"))
            target = user_id
            return _Op(kind, key, target, amount, lambda c: ledger.top_up(c, target, amount, PROVIDER, key))
        if kind in ("settle", "release"):
            hold = client.holds.pop(rng.randrange(len(client.holds)))
            if kind == "release":
                return _Op(
                    kind,
                    hold.request_id,
                    hold.user_id,
                    hold.amount_usd,
                    lambda c: ledger.release(c, hold.request_id),
                    hold=hold,
                )
            roll = rng.random()
            if roll < 0.1:
                actual = Decimal(0)
            elif roll < 0.2:  # overrun: the tool cost more than the hold (charged as far as it is covered)
                actual = _usd(rng, hold.amount_usd, hold.amount_usd * Decimal("1.5"))
            elif roll < 0.25:  # far past the hold: more than a poor or limited user has left
                actual = _usd(rng, hold.amount_usd, Decimal("0.5"))
            else:
                actual = _usd(rng, Decimal(0), hold.amount_usd)
            return _Op(
                kind,
                hold.request_id,
                hold.user_id,
                actual,
                lambda c: ledger.settle(c, hold.request_id, actual, "crash test"),
                hold=hold,
            )
        # refund
        charged = rng.choice(client.charges)
        left = charged.amount_usd - charged.refunded_usd
        key = self._next_key(client, kind)
        if rng.random() < 0.1:
            amount = left + _usd(rng, Decimal("0.00000001"), Decimal("0.01"))
            return _Op(
                kind,
                key,
                charged.user_id,
                amount,
                lambda c: ledger.refund(c, charged.transaction_id, amount, "crash test", key),
                frozenset({"BL011"}),
                must_refuse=True,
                charged=charged,
            )
        amount = left if rng.random() < 0.3 else _usd(rng, Decimal("0.00000001"), left)
        return _Op(
            kind,
            key,
            charged.user_id,
            amount,
            lambda c: ledger.refund(c, charged.transaction_id, amount, "crash test", key),
            charged=charged,
        )

    def _connection(self, client: _Client) -> psycopg.Connection[Any]:
        """The client's connection; a new one when it has none or it broke (waiting for the server)."""
        conn = client.conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            conn.close()
            client.conn = None
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.02
        while True:
            try:
                client.conn = apidb.connect(self.url, connect_timeout=self.connect_timeout)
                client.stats.reconnects += 1
                return client.conn
            except psycopg.Error as exc:
                if time.monotonic() > deadline:
                    raise WorkloadError(
                        f"client {client.index}: no connection within {self.reconnect_timeout} s: {exc}"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _perform(self, client: _Client, op: _Op) -> Ack:
        """Run `op` until it has an answer, retrying with the same key across lost connections."""
        attempts = 0
        in_doubt = False
        while True:
            conn = self._connection(client)
            attempts += 1
            try:
                result = op.call(conn)
            except BillingError as refusal:
                sqlstate = refusal.sqlstate
                if sqlstate not in op.allowed_refusals:
                    client.anomalies.append(f"{op.kind} {op.key}: unexpected refusal {sqlstate}: {refusal.message}")
                return _refused(client, op, sqlstate, attempts, in_doubt)
            except psycopg.Error as exc:
                if conn.broken or conn.closed or exc.sqlstate in CONNECTION_SQLSTATES:
                    in_doubt = True  # the call may or may not have committed: the retry will tell
                    conn.close()
                    continue
                # The connection is alive and the server said no, but not with a business refusal.
                client.anomalies.append(f"{op.kind} {op.key}: SQL error {exc.sqlstate}: {exc}")
                return _refused(client, op, exc.sqlstate or "?????", attempts, in_doubt)
            return self._ack(client, op, result, attempts, in_doubt)

    def _ack(self, client: _Client, op: _Op, result: Any, attempts: int, in_doubt: bool) -> Ack:
        replayed = bool(result.replayed)
        if replayed and not in_doubt:
            client.anomalies.append(f"{op.kind} {op.key}: replayed on its first answer (a key never used before)")
        if op.must_refuse:
            client.anomalies.append(f"{op.kind} {op.key}: {op.amount_usd} accepted, more than is left of the charge")
        status = getattr(result, "status", None)
        transaction_id = getattr(result, "transaction_id", None)
        if op.kind == "reserve" and status != "held":
            client.anomalies.append(f"reserve {op.key}: status {status}, expected held")
        if op.kind == "charge" and (status != "charged" or result.amount_usd != op.amount_usd):
            client.anomalies.append(f"charge {op.key}: {status} {result.amount_usd}, expected charged {op.amount_usd}")
        charged_usd = None
        if op.kind == "settle":
            charged_usd = result.charged_usd
            hold_usd = op.hold.amount_usd if op.hold is not None else Decimal(0)
            # Charged up to the price, at least what the hold covers (nothing here debits an account, so a
            # hold is always backed), and the rest written off.
            if status != "settled" or not min(op.amount_usd, hold_usd) <= charged_usd <= op.amount_usd:
                client.anomalies.append(f"settle {op.key}: {status} {charged_usd} for a price of {op.amount_usd}")
            if charged_usd + result.written_off_usd != op.amount_usd:
                client.anomalies.append(
                    f"settle {op.key}: charged {charged_usd} + written off {result.written_off_usd}"
                    f" is not the price {op.amount_usd}"
                )
            if (transaction_id is None) != (charged_usd == 0):
                client.anomalies.append(f"settle {op.key}: transaction {transaction_id} for a charge of {charged_usd}")
        if op.kind == "release" and status != "released":
            client.anomalies.append(f"release {op.key}: status {status}, expected released")
        if op.kind in ("top_up", "refund") and result.amount_usd != op.amount_usd:
            client.anomalies.append(f"{op.kind} {op.key}: amount {result.amount_usd}, expected {op.amount_usd}")
        return Ack(
            client.index,
            op.kind,
            op.key,
            op.user_id,
            op.amount_usd,
            None,
            status=status,
            transaction_id=transaction_id,
            refund_of=_refund_of(op),
            charged_usd=charged_usd,
            replayed=replayed,
            attempts=attempts,
            in_doubt=in_doubt,
        )

    def _record(self, client: _Client, op: _Op, ack: Ack) -> None:
        """Log the answer and update what the client may do next (its open holds, its refundable charges)."""
        client.log.append(ack)
        stats = client.stats
        stats.acknowledged += 1
        stats.by_kind[op.kind] += 1
        stats.retries += ack.attempts - 1
        if ack.in_doubt:
            stats.in_doubt += 1
            if ack.refused is None and ack.replayed:
                stats.in_doubt_committed += 1
            else:
                stats.in_doubt_rolled_back += 1
        if ack.refused is not None:
            stats.refused[ack.refused] += 1
            if op.hold is not None:  # an unexpected refusal to settle/release: the hold stays open
                client.holds.append(op.hold)
            return
        stats.committed += 1
        if op.kind == "reserve" and ack.status == "held":
            client.holds.append(_Hold(op.key, op.user_id, op.amount_usd))
        elif op.kind == "charge" and ack.transaction_id is not None:
            client.charges.append(_Charged(ack.transaction_id, op.user_id, op.amount_usd))
        elif op.kind == "settle" and ack.transaction_id is not None and ack.charged_usd is not None:
            client.charges.append(_Charged(ack.transaction_id, op.user_id, ack.charged_usd))
        elif op.kind == "refund" and op.charged is not None:
            op.charged.refunded_usd += op.amount_usd
            if op.charged.refunded_usd >= op.charged.amount_usd:
                client.charges.remove(op.charged)

    # --- the checker -------------------------------------------------------------------------------

    def expected(
        self,
    ) -> tuple[dict[tuple[str, str], _Entry], dict[str, _HoldState], set[tuple[str, str]], dict[str, _WriteOff]]:
        """What the database must hold, from the log: ledger rows by (type, key), holds by request id,
        the keys whose calls were refused (nothing may exist under them), and write-offs by request id."""
        entries: dict[tuple[str, str], _Entry] = {}
        holds: dict[str, _HoldState] = {}
        refused: set[tuple[str, str]] = set()
        write_offs: dict[str, _WriteOff] = {}
        for ack in self.log:
            if ack.refused is not None:
                if ack.kind in ("reserve", "charge", "refund"):
                    table = {"reserve": "reservation", "charge": "charge", "refund": "refund"}[ack.kind]
                    refused.add((table, ack.key))
                continue
            if ack.kind == "reserve" and ack.status == "held":
                holds[ack.key] = _HoldState(ack.user_id, ack.amount_usd, "held", None, None)
            elif ack.kind == "settle":
                hold = holds.get(ack.key)
                if hold is not None:
                    hold.status, hold.settled_usd, hold.transaction_id = "settled", ack.amount_usd, ack.transaction_id
                charged = ack.charged_usd if ack.charged_usd is not None else ack.amount_usd
                if ack.transaction_id is not None:
                    entries[("charge", ack.key)] = _Entry(ack.user_id, -charged, ack.transaction_id, None)
                if charged < ack.amount_usd:
                    write_offs[ack.key] = _WriteOff(ack.user_id, ack.amount_usd, charged, ack.transaction_id)
            elif ack.kind == "release":
                hold = holds.get(ack.key)
                if hold is not None:
                    hold.status = ack.status or "released"
            elif ack.kind == "charge" and ack.transaction_id is not None:
                entries[("charge", ack.key)] = _Entry(ack.user_id, -ack.amount_usd, ack.transaction_id, None)
            elif ack.kind == "top_up":
                entries[("topup", f"{PROVIDER}:{ack.key}")] = _Entry(
                    ack.user_id, ack.amount_usd, ack.transaction_id, None
                )
            elif ack.kind == "refund":
                entries[("refund", ack.key)] = _Entry(ack.user_id, ack.amount_usd, ack.transaction_id, ack.refund_of)
        return entries, holds, refused, write_offs

    def check(self, conn: psycopg.Connection[Any], *, verify_ledger: bool = True) -> list[Problem]:
        """Every difference between the database and the acknowledged operations (empty: all is well),
        and (unless `verify_ledger` is false, for a caller that runs it itself) every row of
        `billing.verify_ledger()`.

        `conn` must be able to read the billing tables (the owner or a superuser). Not while running.
        """
        if self._threads:
            raise RuntimeError("check() while clients are running")
        entries, holds, refused, write_offs = self.expected()
        problems: list[Problem] = []
        users = list(self.user_ids)

        rows = conn.execute(
            """SELECT id, user_id, type, amount_usd, refund_of,
                      CASE type WHEN 'charge' THEN request_id
                                WHEN 'topup' THEN payment_provider || ':' || payment_id
                                ELSE idempotency_key END AS key
                 FROM billing.billing_transactions WHERE user_id = ANY(%s) ORDER BY id""",
            (users,),
        ).fetchall()
        seen: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        for row in rows:
            seen.setdefault((row[2], row[5]), []).append(row)
        for (type_, key), found in seen.items():
            label = f"{type_} {key}"
            if len(found) > 1:
                problems.append(Problem("duplicate", label, f"{len(found)} ledger rows: ids {[r[0] for r in found]}"))
            want = entries.get((type_, key))
            if want is None:
                why = "its call was refused" if (type_, key) in refused else "no acknowledged operation made it"
                problems.append(Problem("phantom", label, f"ledger row {found[0][0]} exists but {why}"))
                continue
            tx_id, user_id, _, amount, refund_of, _ = found[0]
            if (user_id, amount, tx_id, refund_of) != (
                want.user_id,
                want.amount_usd,
                want.transaction_id,
                want.refund_of,
            ):
                problems.append(
                    Problem(
                        "mismatch",
                        label,
                        f"ledger has id {tx_id} user {user_id} amount {amount} refund_of {refund_of}; "
                        f"acknowledged id {want.transaction_id} user {want.user_id} amount {want.amount_usd} "
                        f"refund_of {want.refund_of}",
                    )
                )
        for (type_, key), want in entries.items():
            if (type_, key) not in seen:
                problems.append(
                    Problem(
                        "lost",
                        f"{type_} {key}",
                        f"acknowledged (transaction {want.transaction_id}) but not in the ledger",
                    )
                )

        reservations = conn.execute(
            """SELECT request_id, user_id, amount_usd, status, settled_usd, transaction_id
                 FROM billing.reservations WHERE user_id = ANY(%s)""",
            (users,),
        ).fetchall()
        found_holds: dict[str, int] = Counter(r[0] for r in reservations)
        for request_id, user_id, amount, status, settled, tx_id in reservations:
            label = f"reservation {request_id}"
            want_hold = holds.get(request_id)
            if want_hold is None:
                why = (
                    "its call was refused"
                    if ("reservation", request_id) in refused
                    else "no acknowledged reserve made it"
                )
                problems.append(Problem("phantom", label, f"exists ({status}) but {why}"))
                continue
            got = (user_id, amount, status, settled, tx_id)
            want_t = (
                want_hold.user_id,
                want_hold.amount_usd,
                want_hold.status,
                want_hold.settled_usd,
                want_hold.transaction_id,
            )
            if got != want_t:
                problems.append(Problem("mismatch", label, f"database {got}, acknowledged {want_t}"))
        for request_id in holds:
            if request_id not in found_holds:
                problems.append(
                    Problem("lost", f"reservation {request_id}", "acknowledged as held but not in the database")
                )

        found_write_offs = {
            request_id: _WriteOff(user_id, price, charged, tx_id)
            for request_id, user_id, price, charged, tx_id in conn.execute(
                """SELECT request_id, user_id, price_usd, charged_usd, transaction_id
                     FROM billing.write_offs WHERE user_id = ANY(%s)""",
                (users,),
            )
        }
        for request_id in sorted(set(found_write_offs) | set(write_offs)):
            got_w, want_w = found_write_offs.get(request_id), write_offs.get(request_id)
            if got_w != want_w:
                kind = "phantom" if want_w is None else "lost" if got_w is None else "mismatch"
                problems.append(Problem(kind, f"write-off {request_id}", f"database {got_w}, acknowledged {want_w}"))

        balances: dict[uuid.UUID, Money] = {user_id: Decimal(0) for user_id in users}
        for entry in entries.values():
            balances[entry.user_id] += entry.amount_usd
        held: dict[uuid.UUID, Money] = {user_id: Decimal(0) for user_id in users}
        for hold_state in holds.values():
            if hold_state.status == "held":
                held[hold_state.user_id] += hold_state.amount_usd
        accounts = conn.execute(
            "SELECT user_id, balance_usd, held_usd FROM billing.user_billing WHERE user_id = ANY(%s)", (users,)
        ).fetchall()
        if len(accounts) != len(users):
            problems.append(Problem("lost", "accounts", f"{len(accounts)} of {len(users)} accounts found"))
        for user_id, balance, held_usd in accounts:
            if balance < 0:
                problems.append(Problem("balance", str(user_id), f"balance {balance} below zero"))
            if balance != balances[user_id]:
                problems.append(
                    Problem(
                        "balance",
                        str(user_id),
                        f"balance {balance}, acknowledged operations add up to {balances[user_id]}",
                    )
                )
            if held_usd != held[user_id]:
                problems.append(
                    Problem("held", str(user_id), f"held {held_usd}, acknowledged open holds add up to {held[user_id]}")
                )

        if not verify_ledger:
            return problems
        for invariant, user_id, transaction_id, detail in conn.execute("SELECT * FROM billing.verify_ledger()"):
            problems.append(
                Problem("invariant", f"{invariant} user {user_id} transaction {transaction_id}", str(detail))
            )
        return problems


@dataclass
class _Entry:
    user_id: uuid.UUID
    amount_usd: Money  # signed, as in the ledger
    transaction_id: int | None
    refund_of: int | None


@dataclass(frozen=True)
class _WriteOff:
    user_id: uuid.UUID
    price_usd: Money
    charged_usd: Money
    transaction_id: int | None


@dataclass
class _HoldState:
    user_id: uuid.UUID
    amount_usd: Money
    status: str
    settled_usd: Money | None
    transaction_id: int | None



def _refused(client: _Client, op: _Op, sqlstate: str, attempts: int, in_doubt: bool) -> Ack:
    """The definite answer of a call the server refused (a business refusal, or an unexpected SQL error)."""
    return Ack(
        client.index,
        op.kind,
        op.key,
        op.user_id,
        op.amount_usd,
        sqlstate,
        attempts=attempts,
        in_doubt=in_doubt,
        refund_of=_refund_of(op),
    )


def _refund_of(op: _Op) -> int | None:
    return op.charged.transaction_id if op.kind == "refund" and op.charged is not None else None


def summarize(problems: Iterable[Problem], limit: int = 20) -> str:
    """The first `limit` problems, one a line, and how many of each kind there were."""
    problems = list(problems)
    kinds = Counter(p.kind for p in problems)
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return f"{dict(kinds)}\n" + "\n".join(lines)
