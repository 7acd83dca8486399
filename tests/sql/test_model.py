"""Randomized workloads checked against a plain Python model of the ledger.

* ``test_threaded_workload_matches_the_model``: ~1500 seeded-random operations from 6 threads (each with its
  own connection, as a login of the three run-time roles) on 5 users. Every thread records only what the database
  acknowledged; at the end the model computed from those acknowledgements must equal user_billing exactly
  (balance = top-ups - charges + refunds + adjustments; held = holds neither settled nor released;
  total_requests = number of charges), the ledger must hold exactly the acknowledged rows, and
  ``verify_ledger()`` must be empty. The seed comes from TOLLGATE_TEST_SEED (printed on failure).
* ``test_ledger_state_machine``: a Hypothesis RuleBasedStateMachine on one connection that predicts every
  answer and refusal of the SQL API exactly (funds, daily/monthly limits in a configured time zone, flags,
  hold expiry and lazy reaping, refunds, idempotent replays and conflicts, tracked tool calls, and the
  settlement rule: a price is charged up to its hold and above it only as far as the available balance and
  the limit room cover, never past a tool's declared maximum, the rest written off) while the
  test clock (billing.config.clock_override) moves through hold expiries and day/month rollovers; the
  model is compared with the database after every step. Each example runs in its own database cloned
  from the migrated template.

Both run twice: on the fast paths of charge, reserve and settle, and with the test-only switch
``tollgate.force_exact_path = on`` that sends every call down the exact path (db/README.md, "Testing hooks").
``test_fast_and_exact_paths_answer_alike`` runs one seeded operation sequence on two clones of one database,
one per path, and compares every answer and the final state row for row; ``test_the_switch_forces_the_exact_path``
proves the switch is not a no-op (the exact path is the one that calls billing._load_account).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import random
import threading
import uuid
import zoneinfo
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, ClassVar

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg import sql
from psycopg.rows import dict_row

from api.ledger import db as api_db
from api.ledger import sync as ledger
from api.ledger.errors import (
    AccountInactive,
    BillingError,
    DailyLimitExceeded,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidState,
    LimitExceeded,
    MonthlyLimitExceeded,
    RefundExceedsCharge,
)
from tests.helpers_concurrency import (
    account,
    assert_ledger_ok,
    cloned_database,
    count_rows,
    funded_user,
    open_connections,
    run_together,
    set_clock,
)

D = Decimal
CENT = D("0.01")
Q8 = D("1E-8")
SEED = int(os.environ.get("TOLLGATE_TEST_SEED", "20310514"))
# The fast paths, and every call forced down the exact path by the test-only switch (db/README.md).
PATHS = ("fast", "exact")
FORCE_EXACT = "tollgate.force_exact_path"


def q8(value: Decimal) -> Decimal:
    """Round half away from zero to 8 places, as PostgreSQL's round(numeric, 8) does."""
    return value.quantize(Q8, rounding=ROUND_HALF_UP)


# =========================================================================================================
# Threaded workload
# =========================================================================================================

USERS, THREADS, OPS_PER_THREAD = 5, 6, 250
WORKLOAD_NOW = dt.datetime(2031, 5, 14, 12, 0, tzinfo=dt.UTC)
REFUSALS: dict[str, tuple[type[BillingError], ...]] = {
    "charge": (InsufficientFunds, DailyLimitExceeded, MonthlyLimitExceeded),
    "reserve": (InsufficientFunds, DailyLimitExceeded, MonthlyLimitExceeded),
    "refund": (RefundExceedsCharge,),
}


@dataclass
class Replay:
    """An acknowledged call, to be sent again: `same` must replay it, `different` must conflict."""

    same: Callable[[], Any]
    attr: str
    expected: Any
    different: Callable[[], Any]


@dataclass
class Acked:
    """What one thread's calls were acknowledged as, per user (signed effects on the balance)."""

    topups: list[tuple[uuid.UUID, Decimal, int]] = field(default_factory=list)
    charges: list[tuple[uuid.UUID, Decimal, int]] = field(default_factory=list)
    refunds: list[tuple[uuid.UUID, Decimal, int]] = field(default_factory=list)
    adjustments: list[tuple[uuid.UUID, Decimal, int]] = field(default_factory=list)
    open_holds: dict[str, tuple[uuid.UUID, Decimal]] = field(default_factory=dict)
    replays: int = 0
    conflicts: int = 0
    refusals: int = 0


def _check_refusal(error: BillingError) -> None:
    """A refusal's figures must justify it."""
    detail = error.detail
    if isinstance(error, InsufficientFunds):
        assert detail["available_usd"] < detail["required_usd"], detail
    elif isinstance(error, LimitExceeded):
        assert detail["spent_usd"] + detail["held_usd"] + detail["required_usd"] > detail["limit_usd"], detail


def _workload(
    i: int,
    c: psycopg.Connection[Any],
    users: list[uuid.UUID],
    tag: str,
    charge_pool: list[tuple[int, uuid.UUID, Decimal]],
    pool_lock: threading.Lock,
) -> Acked:
    rng = random.Random(SEED * 100 + i)
    acked = Acked()
    replays: list[Replay] = []
    settled: dict[str, tuple[uuid.UUID, Decimal, Decimal]] = {}

    def money(low: int, high: int) -> Decimal:
        if rng.random() < 0.2:  # sometimes use all 8 decimals
            return D(rng.randint(low * 10**6, high * 10**6)) * Q8
        return D(rng.randint(low, high)) * CENT

    def other(user: uuid.UUID) -> uuid.UUID:
        return rng.choice([u for u in users if u != user])

    def charged(user: uuid.UUID, amount: Decimal, tx: int | None) -> None:
        assert tx is not None
        acked.charges.append((user, amount, tx))
        with pool_lock:
            charge_pool.append((tx, user, amount))

    weights = {
        "top_up": 10, "charge": 22, "reserve": 16, "settle": 14, "release": 5, "refund": 8,
        "adjust": 6, "settings": 3, "replay": 9, "conflict": 7,
    }  # fmt: skip
    kinds, cum = list(weights), list(weights.values())
    for n in range(OPS_PER_THREAD):
        kind = rng.choices(kinds, cum)[0]
        if kind == "settle" and not acked.open_holds:
            kind = "reserve"
        if kind == "release" and not acked.open_holds:
            kind = "reserve"
        if kind in ("replay", "conflict") and not replays:
            kind = "charge"
        user = rng.choice(users)
        key = f"{tag}-t{i}-{n}"
        try:
            if kind == "top_up":
                amount = money(100, 2000)
                top = ledger.top_up(c, user, amount, "card", key)
                assert (top.replayed, top.amount_usd) == (False, amount)
                acked.topups.append((user, amount, top.transaction_id))
                replays.append(
                    Replay(
                        functools.partial(ledger.top_up, c, user, amount, "card", key),
                        "transaction_id",
                        top.transaction_id,
                        functools.partial(ledger.top_up, c, user, amount + 1, "card", key),
                    )
                )
            elif kind == "charge":
                amount = money(1, 300)
                result = ledger.charge(c, user, key, amount)
                assert (result.replayed, result.status, result.amount_usd) == (False, "charged", amount)
                assert result.balance_after_usd == result.balance_before_usd - amount
                charged(user, amount, result.transaction_id)
                replays.append(
                    Replay(
                        functools.partial(ledger.charge, c, user, key, amount),
                        "transaction_id",
                        result.transaction_id,
                        rng.choice(
                            [
                                functools.partial(ledger.charge, c, user, key, amount + CENT),
                                functools.partial(ledger.charge, c, other(user), key, amount),
                            ]
                        ),
                    )
                )
            elif kind == "reserve":
                amount = money(1, 300)
                hold = ledger.reserve(c, user, key, amount)
                assert (hold.replayed, hold.status, hold.amount_usd) == (False, "held", amount)
                assert hold.available_usd >= 0
                acked.open_holds[key] = (user, amount)
                replays.append(
                    Replay(
                        functools.partial(ledger.reserve, c, user, key, amount),
                        "reservation_id",
                        hold.reservation_id,
                        functools.partial(ledger.reserve, c, user, key, amount + CENT),
                    )
                )
            elif kind == "settle":
                request = rng.choice(sorted(acked.open_holds))
                owner, held = acked.open_holds.pop(request)
                actual = q8(held * rng.choice([D(0), D("0.5"), D(1), D("1.7")]))
                settlement = ledger.settle(c, request, actual)
                # Above its hold a price is charged only as far as the balance and limits cover it (other
                # threads move both): whatever was not charged is written off, and the two add up.
                paid = settlement.charged_usd
                assert settlement.replayed is False
                assert D(0) <= paid <= actual and paid + settlement.written_off_usd == actual, settlement
                assert settlement.released_usd == max(held - paid, D(0))
                if paid > 0:
                    charged(owner, paid, settlement.transaction_id)
                settled[request] = (owner, held, paid)
                replays.append(
                    Replay(
                        functools.partial(ledger.settle, c, request, actual),
                        "transaction_id",
                        settlement.transaction_id,
                        functools.partial(ledger.settle, c, request, actual + CENT),
                    )
                )
            elif kind == "release":
                request = rng.choice(sorted(acked.open_holds))
                owner, held = acked.open_holds.pop(request)
                freed = ledger.release(c, request)
                assert (freed.replayed, freed.status, freed.released_usd) == (False, "released", held)
                replays.append(
                    Replay(
                        functools.partial(ledger.release, c, request),
                        "released_usd",
                        held,
                        functools.partial(ledger.settle, c, request, held),  # a released hold: refused
                    )
                )
            elif kind == "refund":
                with pool_lock:
                    picked = rng.choice(charge_pool) if charge_pool else None
                if picked is None:
                    continue
                tx, owner, amount = picked
                part = q8(amount * rng.choice([D("0.25"), D("0.5"), D(1)]))
                refunded = ledger.refund(c, tx, part, "workload", key)
                assert (refunded.replayed, refunded.refund_of, refunded.amount_usd) == (False, tx, part)
                assert refunded.refunded_total_usd <= amount
                acked.refunds.append((owner, part, refunded.transaction_id))
                replays.append(
                    Replay(
                        functools.partial(ledger.refund, c, tx, part, "workload", key),
                        "transaction_id",
                        refunded.transaction_id,
                        functools.partial(ledger.refund, c, tx, part + Q8, "workload", key),
                    )
                )
            elif kind == "adjust":
                amount = money(1, 500) * rng.choice([1, -1])
                adjusted = ledger.adjust(c, user, amount, "workload", "ops@example", key)
                assert (adjusted.replayed, adjusted.amount_usd) == (False, amount)
                acked.adjustments.append((user, amount, adjusted.transaction_id))
                replays.append(
                    Replay(
                        functools.partial(ledger.adjust, c, user, amount, "workload", "ops@example", key),
                        "transaction_id",
                        adjusted.transaction_id,
                        functools.partial(ledger.adjust, c, user, -amount, "workload", "ops@example", key),
                    )
                )
            elif kind == "settings":
                daily, monthly = D(rng.choice([5, 10, 25, 60])), D(rng.choice([40, 100, 300]))
                changed = ledger.update_settings(c, user, daily_limit_usd=daily, monthly_limit_usd=monthly)
                assert (changed.daily_limit_usd, changed.monthly_limit_usd) == (daily, monthly)
            elif kind == "replay":
                replay = rng.choice(replays)
                again = replay.same()
                assert again.replayed is True, again
                assert getattr(again, replay.attr) == replay.expected, (again, replay.expected)
                acked.replays += 1
            else:
                replay = rng.choice(replays)
                with pytest.raises((IdempotencyConflict, InvalidState)):
                    replay.different()
                acked.conflicts += 1
        except BillingError as error:
            if not isinstance(error, REFUSALS.get(kind, ())):
                raise AssertionError(f"seed {SEED}, thread {i}, op {n} ({kind}): {error!r}") from error
            _check_refusal(error)
            acked.refusals += 1
    return acked


def force_exact_path(conn: psycopg.Connection[Any]) -> None:
    """Every connection to `conn`'s database from now on, and `conn` itself, takes the exact paths."""
    dbname = conn.execute("SELECT current_database()").fetchone()
    assert dbname is not None
    switch = sql.Identifier(FORCE_EXACT)
    conn.execute(sql.SQL("ALTER DATABASE {} SET {} = on").format(sql.Identifier(dbname[0]), switch))
    conn.execute(sql.SQL("SET {} = on").format(switch))


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", PATHS)
def test_threaded_workload_matches_the_model(conn, connect, api_url, path):
    print(f"TOLLGATE_TEST_SEED={SEED}")
    if path == "exact":
        force_exact_path(conn)
    api_db.configure(conn)
    set_clock(conn, WORKLOAD_NOW)
    users = [ledger.ensure_account(conn, f"model-{k}") for k in range(USERS)]
    seed_topups = [
        (user, D(30), ledger.top_up(conn, user, D(30), "seed", f"seed-{user}").transaction_id) for user in users
    ]
    conns = open_connections(connect, api_url, THREADS)  # top-ups, charges, refunds: every run-time role
    charge_pool: list[tuple[int, uuid.UUID, Decimal]] = []
    pool_lock = threading.Lock()
    tag = f"s{SEED}"

    outcomes = run_together(conns, lambda i, c: _workload(i, c, users, tag, charge_pool, pool_lock), timeout=90)

    for outcome in outcomes:
        if outcome.error is not None:
            raise AssertionError(f"seed {SEED}: thread {outcome.index} failed: {outcome.error!r}") from outcome.error
    acks: list[Acked] = [o.value for o in outcomes]
    topups = seed_topups + [t for a in acks for t in a.topups]
    charges = [t for a in acks for t in a.charges]
    refunds = [t for a in acks for t in a.refunds]
    adjustments = [t for a in acks for t in a.adjustments]
    assert sum(a.replays for a in acks) > 50 and sum(a.conflicts for a in acks) > 50, f"seed {SEED}: too few replays"

    def total(rows: list[tuple[uuid.UUID, Decimal, int]], user: uuid.UUID) -> Decimal:
        return sum((amount for owner, amount, _ in rows if owner == user), D(0))

    for user in users:
        row = account(conn, user)
        spent = total(charges, user)
        model = {
            "balance_usd": total(topups, user) - spent + total(refunds, user) + total(adjustments, user),
            "held_usd": sum((amt for a in acks for owner, amt in a.open_holds.values() if owner == user), D(0)),
            "total_requests": sum(1 for owner, _, _ in charges if owner == user),
            "total_spent_usd": spent,
            "day_spent_usd": spent,  # the clock is pinned: every charge is today's and this month's
            "month_spent_usd": spent,
        }
        stored = {name: row[name] for name in model}
        assert stored == model, f"seed {SEED}: user {user}: database {stored} != model {model}"
    acked_ids = {tx for rows in (topups, charges, refunds, adjustments) for _, _, tx in rows}
    ledger_ids = {r[0] for r in conn.execute("SELECT id FROM billing.billing_transactions").fetchall()}
    assert ledger_ids == acked_ids, (
        f"seed {SEED}: not acknowledged: {sorted(ledger_ids - acked_ids)[:5]}, "
        f"lost: {sorted(acked_ids - ledger_ids)[:5]}"
    )
    open_holds = sum(len(a.open_holds) for a in acks)
    assert count_rows(conn, "reservations", "status = 'held'") == open_holds, f"seed {SEED}"
    assert_ledger_ok(conn)


# =========================================================================================================
# Replaying a settle made while billing was off
# =========================================================================================================


def test_settle_replay_after_settling_with_billing_disabled(conn):
    """docs/design.md §3: a replay with the same key and parameters returns the original result. settle() of a hold
    while the user's billing is disabled charges nothing; replaying that exact call must say replayed,
    not 'already settled at 0 USD, not 0.5 USD' (a replay is compared with the price settle was called with,
    not with the amount charged), and a settle at 0 USD is then a different request, so a conflict."""
    api_db.configure(conn)
    user = ledger.ensure_account(conn, "disabled-billing")
    ledger.top_up(conn, user, D(10), "card", "pay-1")
    ledger.reserve(conn, user, "req-1", D(1))
    ledger.update_settings(conn, user, billing_enabled=False)
    first = ledger.settle(conn, "req-1", D("0.5"))
    assert (first.status, first.charged_usd, first.transaction_id) == ("settled", D(0), None)
    again = ledger.settle(conn, "req-1", D("0.5"))
    assert again.replayed
    assert (again.charged_usd, again.transaction_id) == (first.charged_usd, first.transaction_id)
    with pytest.raises(IdempotencyConflict):
        ledger.settle(conn, "req-1", D(0))
    assert_ledger_ok(conn)


# =========================================================================================================
# Hypothesis state machine
# =========================================================================================================

MACHINE_START = dt.datetime(2031, 1, 31, 21, 30, tzinfo=dt.UTC)  # local month ends within hours in each zone
# base price, markup percent, max_price_usd (the most a call is charged; the rest is written off)
TOOL_PRICING = {"plain": None, "priced": (D("0.01"), D(50), None), "capped": (D(0), D(20), D("0.3"))}
HOLD_TTL = dt.timedelta(minutes=15)

money_st = st.one_of(
    st.integers(1, 800).map(lambda n: D(n) * CENT),
    st.integers(1, 8 * 10**8).map(lambda n: D(n) * Q8),
)
user_st = st.integers(0, 2)


@dataclass(eq=False)
class MUser:
    id: uuid.UUID
    balance: Decimal = field(default_factory=Decimal)
    daily: Decimal = field(default_factory=lambda: D(10))
    monthly: Decimal = field(default_factory=lambda: D(100))
    active: bool = True
    billing: bool = True
    override: bool = False
    charges: list[tuple[dt.datetime, Decimal]] = field(default_factory=list)


@dataclass(eq=False)
class MHold:
    request_id: str
    user: MUser
    amount: Decimal
    expires_at: dt.datetime
    reservation_id: int
    status: str = "held"  # held | settled | released | expired ('held' past expires_at is expired too)
    raw: str = "held"  # the stored status: an expired hold stays 'held' until a call on the account reaps it
    settled_with: Decimal | None = None
    charged: Decimal = field(default_factory=Decimal)
    written_off: Decimal = field(default_factory=Decimal)
    tx: int | None = None


@dataclass(eq=False)
class MCharge:
    tx: int
    user: MUser
    amount: Decimal
    request_id: str
    refunded: Decimal = field(default_factory=Decimal)


@dataclass(eq=False)
class Act:
    """An acknowledged call for the replay rules."""

    name: str
    same: Callable[[], Any]
    check: Callable[..., bool]
    conflicts: Sequence[Callable[[], Any]]
    locks: MUser | None  # whose account a replay locks (and so reaps)


OUTCOMES: Counter[str] = Counter()


def note(outcome: str) -> None:
    """Count what the machine exercised (printed by the test: `pytest -s` shows the mix)."""
    OUTCOMES[outcome] += 1


class LedgerMachine(RuleBasedStateMachine):
    server_url: ClassVar[str] = ""
    template: ClassVar[str] = ""
    path: ClassVar[str] = "fast"

    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()
        url = self._stack.enter_context(cloned_database(self.server_url, self.template))
        self.conn = self._stack.enter_context(api_db.connect(url))
        if self.path == "exact":
            force_exact_path(self.conn)
        self.now = MACHINE_START
        self.tz = zoneinfo.ZoneInfo("UTC")
        self.users: list[MUser] = []
        self.holds: dict[str, MHold] = {}
        self.charges: dict[int, MCharge] = {}
        self.txs: dict[int, tuple[str, MUser, Decimal]] = {}
        self.acts: list[Act] = []
        self.write_offs: dict[str, tuple[Decimal, Decimal]] = {}  # request id -> (charged, written off)
        self.seq = 0

    def teardown(self) -> None:
        self._stack.close()

    # --- model helpers -------------------------------------------------------------------------------

    def key(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq}"

    def effective(self, hold: MHold) -> str:
        return "expired" if hold.status == "held" and hold.expires_at <= self.now else hold.status

    def held(self, user: MUser) -> Decimal:
        return sum((h.amount for h in self.holds.values() if h.user is user and self.effective(h) == "held"), D(0))

    def local(self, when: dt.datetime) -> dt.datetime:
        return when.astimezone(self.tz)

    def day_spent(self, user: MUser) -> Decimal:
        today = self.local(self.now).date()
        return sum((a for t, a in user.charges if self.local(t).date() == today), D(0))

    def month_spent(self, user: MUser) -> Decimal:
        now = self.local(self.now)
        return sum(
            (a for t, a in user.charges if (self.local(t).year, self.local(t).month) == (now.year, now.month)), D(0)
        )

    def touch(self, user: MUser) -> None:
        """A committed call locked the account: its expired holds were reaped."""
        for hold in self.holds.values():
            if hold.user is user and hold.raw == "held" and hold.expires_at <= self.now:
                hold.raw = hold.status = "expired"

    def refusal(self, user: MUser, amount: Decimal) -> type[BillingError] | None:
        """What billing._refuse_unaffordable says about a new hold or charge (None: accepted)."""
        if not user.active:
            return AccountInactive
        held = self.held(user)
        if user.balance - held < amount:
            return InsufficientFunds
        if user.override:
            return None
        if user.daily - self.day_spent(user) - held < amount:
            return DailyLimitExceeded
        if user.monthly - self.month_spent(user) - held < amount:
            return MonthlyLimitExceeded
        return None

    def cover(self, user: MUser, own_hold: Decimal, price: Decimal) -> Decimal:
        """What billing._settlement_cover charges of `price` for a call holding `own_hold` (0: none or expired):
        its hold, and above it what is free of the balance and (without the override) of the limit room,
        other open holds counted; never into a negative balance."""
        others = self.held(user) - own_hold
        free = user.balance - others
        if not user.override:
            free = min(free, user.daily - self.day_spent(user) - others, user.monthly - self.month_spent(user) - others)
        bound = max(D(0), min(max(own_hold, free), max(user.balance, D(0))))
        return min(price, bound)

    def record_charge(self, user: MUser, tx: int | None, amount: Decimal, request_id: str) -> None:
        assert tx is not None and tx not in self.txs
        user.balance -= amount
        user.charges.append((self.now, amount))
        self.charges[tx] = MCharge(tx, user, amount, request_id)
        self.txs[tx] = ("charge", user, -amount)

    def record_tx(self, kind: str, user: MUser, tx: int, amount: Decimal) -> None:
        assert tx not in self.txs
        user.balance += amount
        self.txs[tx] = (kind, user, amount)

    def set_now(self, when: dt.datetime) -> None:
        self.now = when
        set_clock(self.conn, when)

    # --- setup ----------------------------------------------------------------------------------------

    @initialize(
        tz=st.sampled_from(["UTC", "Europe/Kyiv", "America/Los_Angeles"]),
        funds=st.lists(st.integers(0, 200).map(D), min_size=3, max_size=3),
    )
    def setup(self, tz: str, funds: list[Decimal]) -> None:
        self.tz = zoneinfo.ZoneInfo(tz)
        ledger.configure(self.conn, time_zone=tz)
        self.set_now(MACHINE_START)
        for tool, pricing in TOOL_PRICING.items():
            if pricing is not None:
                ledger.set_tool_pricing(
                    self.conn, tool, pricing[0], markup_percent=pricing[1], max_price_usd=pricing[2]
                )
        for k, amount in enumerate(funds):
            user = MUser(ledger.ensure_account(self.conn, f"user-{k}"))
            self.users.append(user)
            if amount:
                top = ledger.top_up(self.conn, user.id, amount, "seed", f"seed-{k}")
                self.record_tx("topup", user, top.transaction_id, amount)

    # --- money in ---------------------------------------------------------------------------------------

    @rule(k=user_st, amount=money_st)
    def top_up(self, k: int, amount: Decimal) -> None:
        user, payment = self.users[k], self.key("pay")
        top = ledger.top_up(self.conn, user.id, amount, "card", payment)
        assert (top.replayed, top.amount_usd, top.balance_before_usd) == (False, amount, user.balance)
        self.record_tx("topup", user, top.transaction_id, amount)
        self.touch(user)
        other = self.users[(k + 1) % 3]
        self.acts.append(
            Act(
                "top_up",
                functools.partial(ledger.top_up, self.conn, user.id, amount, "card", payment),
                lambda r, t=top: (r.transaction_id, r.balance_after_usd) == (t.transaction_id, t.balance_after_usd),
                [
                    functools.partial(ledger.top_up, self.conn, user.id, amount + CENT, "card", payment),
                    functools.partial(ledger.top_up, self.conn, other.id, amount, "card", payment),
                ],
                user,
            )
        )

    @rule(k=user_st, amount=money_st, credit=st.booleans())
    def adjust(self, k: int, amount: Decimal, credit: bool) -> None:
        user, key = self.users[k], self.key("adj")
        signed = amount if credit else -amount
        adjusted = ledger.adjust(self.conn, user.id, signed, "model", "ops", key)
        assert (adjusted.replayed, adjusted.amount_usd, adjusted.balance_before_usd) == (False, signed, user.balance)
        self.record_tx("adjustment", user, adjusted.transaction_id, signed)
        self.touch(user)
        self.acts.append(
            Act(
                "adjust",
                functools.partial(ledger.adjust, self.conn, user.id, signed, "model", "ops", key),
                lambda r, t=adjusted.transaction_id: r.transaction_id == t,
                [functools.partial(ledger.adjust, self.conn, user.id, -signed, "model", "ops", key)],
                user,
            )
        )

    # --- charges and holds -------------------------------------------------------------------------------

    @rule(k=user_st, amount=money_st)
    def charge(self, k: int, amount: Decimal) -> None:
        user, request = self.users[k], self.key("chg")
        if not user.billing:
            result = ledger.charge(self.conn, user.id, request, amount)
            assert (result.status, result.transaction_id, result.amount_usd) == ("not_billed", None, D(0))
            self.touch(user)
            note("charge: not billed")
            return
        refusal = self.refusal(user, amount)
        note(f"charge: {'accepted' if refusal is None else refusal.__name__}")
        if refusal is not None:
            with pytest.raises(refusal):
                ledger.charge(self.conn, user.id, request, amount)
            return
        result = ledger.charge(self.conn, user.id, request, amount)
        assert (result.replayed, result.status, result.amount_usd) == (False, "charged", amount)
        assert result.balance_before_usd == user.balance
        self.touch(user)
        self.record_charge(user, result.transaction_id, amount, request)
        other = self.users[(k + 1) % 3]
        self.acts.append(
            Act(
                "charge",
                functools.partial(ledger.charge, self.conn, user.id, request, amount),
                lambda r, t=result: (r.transaction_id, r.balance_after_usd) == (t.transaction_id, t.balance_after_usd),
                [
                    functools.partial(ledger.charge, self.conn, user.id, request, amount + Q8),
                    functools.partial(ledger.charge, self.conn, other.id, request, amount),
                ],
                user,
            )
        )

    def _reserve(self, user: MUser, request: str, amount: Decimal, ttl: dt.timedelta | None) -> MHold | None:
        if not user.billing:
            result = ledger.reserve(self.conn, user.id, request, amount, ttl)
            assert (result.status, result.reservation_id) == ("not_billed", None)
            self.touch(user)
            note("reserve: not billed")
            return None
        refusal = self.refusal(user, amount)
        note(f"reserve: {'accepted' if refusal is None else refusal.__name__}")
        if refusal is not None:
            with pytest.raises(refusal):
                ledger.reserve(self.conn, user.id, request, amount, ttl)
            return None
        result = ledger.reserve(self.conn, user.id, request, amount, ttl)
        self.touch(user)
        expires = self.now + (ttl or HOLD_TTL)
        assert (result.replayed, result.status, result.amount_usd, result.expires_at) == (
            False,
            "held",
            amount,
            expires,
        )
        assert result.reservation_id is not None
        hold = MHold(request, user, amount, expires, result.reservation_id)
        self.holds[request] = hold
        assert result.available_usd == user.balance - self.held(user)
        return hold

    @rule(
        k=user_st,
        amount=money_st,
        ttl=st.sampled_from([None, dt.timedelta(minutes=1), dt.timedelta(hours=2)]),
    )
    def reserve(self, k: int, amount: Decimal, ttl: dt.timedelta | None) -> None:
        user, request = self.users[k], self.key("hold")
        hold = self._reserve(user, request, amount, ttl)
        if hold is None:
            return
        other = self.users[(k + 1) % 3]

        def check(r: Any, h: MHold = hold) -> bool:
            return (r.reservation_id, r.status, r.amount_usd) == (h.reservation_id, self.effective(h), h.amount)

        self.acts.append(
            Act(
                "reserve",
                functools.partial(ledger.reserve, self.conn, user.id, request, amount, ttl),
                check,
                [
                    functools.partial(ledger.reserve, self.conn, user.id, request, amount + CENT, ttl),
                    functools.partial(ledger.reserve, self.conn, other.id, request, amount, ttl),
                ],
                user,
            )
        )

    def _settle_hold(self, hold: MHold, actual: Decimal) -> Any:
        """Settle a held or expired hold; the model follows. Returns the settlement."""
        user = hold.user
        own = hold.amount if self.effective(hold) == "held" else D(0)
        charged = self.cover(user, own, actual) if actual > 0 and user.billing else D(0)
        written_off = actual - charged if actual > 0 and user.billing else D(0)
        note(f"settle: {'within the hold' if actual <= own else 'over the hold'}, "
             f"{'part written off' if written_off else 'charged in full'}")
        result = ledger.settle(self.conn, hold.request_id, actual)
        self.touch(user)
        assert (result.replayed, result.status, result.charged_usd, result.written_off_usd) == (
            False, "settled", charged, written_off)
        assert result.released_usd == max(hold.amount - charged, D(0))
        hold.status = hold.raw = "settled"
        hold.settled_with, hold.charged, hold.written_off, hold.tx = actual, charged, written_off, result.transaction_id
        if charged:
            self.record_charge(user, result.transaction_id, charged, hold.request_id)
        else:
            assert result.transaction_id is None
        if written_off:
            self.write_offs[hold.request_id] = (charged, written_off)
        assert result.balance_after_usd == user.balance
        return result

    @precondition(lambda self: bool(self.holds))
    # 40: a tool that reported far more than its hold, past any balance and limit the machine draws
    @rule(data=st.data(), factor=st.sampled_from([D(0), D("0.5"), D(1), D("1.7"), D(3), D(40)]))
    def settle(self, data: st.DataObject, factor: Decimal) -> None:
        hold = data.draw(st.sampled_from(sorted(self.holds.values(), key=lambda h: h.request_id)), label="hold")
        actual = q8(hold.amount * factor)
        state = self.effective(hold)
        note(f"settle: {state} hold")
        if state == "released":
            with pytest.raises(InvalidState):
                ledger.settle(self.conn, hold.request_id, actual)
        elif state == "settled":
            if actual == hold.settled_with:  # a replay, also when billing was off and nothing was charged
                result = ledger.settle(self.conn, hold.request_id, actual)
                assert (result.replayed, result.transaction_id, result.charged_usd, result.written_off_usd) == (
                    True, hold.tx, hold.charged, hold.written_off)
                assert result.released_usd == max(hold.amount - hold.charged, D(0))
                self.touch(hold.user)
            else:
                with pytest.raises(IdempotencyConflict):
                    ledger.settle(self.conn, hold.request_id, actual)
        else:
            result = self._settle_hold(hold, actual)
            self.acts.append(
                Act(
                    "settle",
                    functools.partial(ledger.settle, self.conn, hold.request_id, actual),
                    lambda r, t=result.transaction_id, c=hold.charged, w=hold.written_off: (
                        r.transaction_id, r.charged_usd, r.written_off_usd) == (t, c, w),
                    [functools.partial(ledger.settle, self.conn, hold.request_id, actual + CENT)],
                    hold.user,
                )
            )

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from(sorted(self.holds.values(), key=lambda h: h.request_id)), label="hold")
        state = self.effective(hold)
        note(f"release: {state} hold")
        if state == "settled":
            with pytest.raises(InvalidState):
                ledger.release(self.conn, hold.request_id)
            return
        result = ledger.release(self.conn, hold.request_id)
        self.touch(hold.user)
        if state == "held":
            assert (result.status, result.released_usd, result.replayed) == ("released", hold.amount, False)
            hold.status = hold.raw = "released"
            self.acts.append(
                Act(
                    "release",
                    functools.partial(ledger.release, self.conn, hold.request_id),
                    lambda r, h=hold: (r.status, r.released_usd) == ("released", h.amount),
                    [functools.partial(ledger.settle, self.conn, hold.request_id, hold.amount)],
                    hold.user,
                )
            )
        elif state == "released":
            assert (result.status, result.released_usd, result.replayed) == ("released", hold.amount, True)
        else:
            assert (result.status, result.released_usd, result.replayed) == ("expired", D(0), False)
            assert hold.raw == "expired"

    @precondition(lambda self: bool(self.charges))
    @rule(data=st.data(), fraction=st.sampled_from([D("0.1"), D("0.5"), D(1), D("1.2")]))
    def refund(self, data: st.DataObject, fraction: Decimal) -> None:
        charge = data.draw(st.sampled_from(sorted(self.charges.values(), key=lambda c: c.tx)), label="charge")
        amount = max(q8(charge.amount * fraction), Q8)
        key = self.key("refund")
        note(f"refund: {'too large' if charge.refunded + amount > charge.amount else 'accepted'}")
        if charge.refunded + amount > charge.amount:
            with pytest.raises(RefundExceedsCharge):
                ledger.refund(self.conn, charge.tx, amount, "model", key)
            return
        result = ledger.refund(self.conn, charge.tx, amount, "model", key)
        self.touch(charge.user)
        charge.refunded += amount
        assert (result.replayed, result.refund_of, result.amount_usd) == (False, charge.tx, amount)
        assert (result.balance_before_usd, result.refunded_total_usd) == (charge.user.balance, charge.refunded)
        self.record_tx("refund", charge.user, result.transaction_id, amount)
        conflicts: list[Callable[[], Any]] = [
            functools.partial(ledger.refund, self.conn, charge.tx, amount + Q8, "model", key)
        ]
        others = [c for c in self.charges.values() if c is not charge]
        if others:
            conflicts.append(functools.partial(ledger.refund, self.conn, others[0].tx, amount, "model", key))
        self.acts.append(
            Act(
                "refund",
                functools.partial(ledger.refund, self.conn, charge.tx, amount, "model", key),
                lambda r, t=result.transaction_id: r.transaction_id == t,
                conflicts,
                charge.user,
            )
        )

    # --- tracked tool calls --------------------------------------------------------------------------------

    @rule(
        k=st.one_of(st.none(), user_st),
        tool=st.sampled_from(sorted(TOOL_PRICING)),
        with_hold=st.booleans(),
        estimate=money_st,
        success=st.booleans(),
        cost=st.one_of(st.just(D(0)), money_st),
    )
    def tool_call(
        self, k: int | None, tool: str, with_hold: bool, estimate: Decimal, success: bool, cost: Decimal
    ) -> None:
        user = None if k is None else self.users[k]
        request = self.key("call")
        started = ledger.start_request(self.conn, request, tool, None if user is None else user.id)
        assert (started.status, started.replayed) == ("pending", False)
        hold = None
        if user is not None and with_hold:
            hold = self._reserve(user, request, estimate, None)
            if hold is None and self.refusal(user, estimate) is not None and user.billing:
                success = False  # a refused hold: the tool does not run
        pricing = TOOL_PRICING[tool]
        price = cost if pricing is None else pricing[0] + q8(cost * (1 + pricing[1] / 100))
        capped = price if pricing is None or pricing[2] is None else min(price, pricing[2])
        charged = written_off = D(0)
        if success and user is not None and user.billing and price > 0:
            charged = self.cover(user, D(0) if hold is None else hold.amount, capped)
            written_off = price - charged
        result = ledger.complete_request(self.conn, request, success, cost)
        assert (result.status, result.replayed) == ("completed" if success else "failed", False)
        expected_tx: int | None = None
        if success:
            assert (result.price_usd, result.charged_usd, result.written_off_usd) == (price, charged, written_off)
            if user is not None and hold is not None:
                self.touch(user)
                hold.status = hold.raw = "settled"
                hold.settled_with, hold.charged, hold.tx = capped, charged, result.transaction_id
                hold.written_off = capped - charged if user.billing and price > 0 else D(0)
                if charged:
                    self.record_charge(user, result.transaction_id, charged, request)
                    expected_tx = result.transaction_id
            elif user is not None and price > 0:
                self.touch(user)
                if charged:
                    self.record_charge(user, result.transaction_id, charged, request)
                    expected_tx = result.transaction_id
            if written_off:
                self.write_offs[request] = (charged, written_off)
                note(f"tool call: {'capped at its maximum' if charged == capped else 'bounded by funds or limits'}")
        elif hold is not None:
            if hold.raw == "held":
                self.touch(user)  # type: ignore[arg-type]
            hold.status = hold.raw = "released" if self.effective(hold) == "held" else "expired"
        assert result.transaction_id == expected_tx
        note(f"tool call: {result.status}, {'billed' if expected_tx else 'not billed'}")
        assert result.billed == (expected_tx is not None)
        self.acts.append(
            Act(
                "complete_request",
                functools.partial(ledger.complete_request, self.conn, request, success, cost),
                lambda r, t=expected_tx, s=result.status, c=charged, w=written_off: (
                    r.transaction_id, r.status, r.charged_usd, r.written_off_usd) == (t, s, c, w),
                [
                    functools.partial(ledger.complete_request, self.conn, request, not success, cost),
                    functools.partial(ledger.complete_request, self.conn, request, success, cost + CENT),
                ],
                None,
            )
        )

    # --- settings and the clock ----------------------------------------------------------------------------

    @rule(
        k=user_st,
        daily=st.sampled_from([None, None, D(0), D(1), D(5), D(10), D(50)]),
        monthly=st.sampled_from([None, None, D(0), D(5), D(20), D(100), D(1000)]),
        active=st.sampled_from([None, None, None, True, False]),
        billing=st.sampled_from([None, None, None, True, False]),
        override=st.sampled_from([None, None, None, True, False]),
    )
    def update_settings(
        self,
        k: int,
        daily: Decimal | None,
        monthly: Decimal | None,
        active: bool | None,
        billing: bool | None,
        override: bool | None,
    ) -> None:
        user = self.users[k]
        result = ledger.update_settings(
            self.conn, user.id, daily_limit_usd=daily, monthly_limit_usd=monthly, is_active=active,
            billing_enabled=billing, limit_override=override,
        )  # fmt: skip
        self.touch(user)
        user.daily = user.daily if daily is None else daily
        user.monthly = user.monthly if monthly is None else monthly
        user.active = user.active if active is None else active
        user.billing = user.billing if billing is None else billing
        user.override = user.override if override is None else override
        got = (result.daily_limit_usd, result.monthly_limit_usd, result.is_active, result.billing_enabled)
        assert (*got, result.limit_override) == (user.daily, user.monthly, user.active, user.billing, user.override)

    @rule(minutes=st.integers(1, 40), sweep=st.booleans())
    def advance_minutes(self, minutes: int, sweep: bool) -> None:
        """Time passes (holds expire); then, maybe, the operator's sweep of expired holds."""
        self.set_now(self.now + dt.timedelta(minutes=minutes))
        if sweep:
            due = [h for h in self.holds.values() if h.raw == "held" and h.expires_at <= self.now]
            note(f"reap: {'some' if due else 'none'} due")
            assert ledger.reap_expired_holds(self.conn) == len(due)
            for user in {h.user for h in due}:
                self.touch(user)

    @rule(hours=st.integers(1, 30))
    def advance_hours(self, hours: int) -> None:
        self.set_now(self.now + dt.timedelta(hours=hours))

    @rule(seconds=st.integers(0, 7200))
    def advance_to_next_month(self, seconds: int) -> None:
        local = self.local(self.now)
        first = dt.datetime(local.year + local.month // 12, local.month % 12 + 1, 1, tzinfo=self.tz)
        self.set_now(first.astimezone(dt.UTC) + dt.timedelta(seconds=seconds))

    # --- replays -------------------------------------------------------------------------------------------

    @precondition(lambda self: bool(self.acts))
    @rule(data=st.data())
    def replay_same(self, data: st.DataObject) -> None:
        act = data.draw(st.sampled_from(self.acts), label="act")
        note(f"replay: {act.name}")
        result = act.same()
        assert result.replayed is True, f"{act.name} replay: {result}"
        if act.locks is not None:
            self.touch(act.locks)
        assert act.check(result), f"{act.name} replay answered differently: {result}"

    @precondition(lambda self: bool(self.acts))
    @rule(data=st.data())
    def replay_different(self, data: st.DataObject) -> None:
        act = data.draw(st.sampled_from(self.acts), label="act")
        call = data.draw(st.sampled_from(act.conflicts), label="conflict")
        note(f"conflict: {act.name}")
        expected = InvalidState if act.name == "release" else IdempotencyConflict
        with pytest.raises(expected):
            call()

    # --- read-only answers ---------------------------------------------------------------------------------

    @rule(k=user_st, cost=st.one_of(st.just(D(0)), money_st))
    def check_balance_and_limits(self, k: int, cost: Decimal) -> None:
        user = self.users[k]
        held = self.held(user)
        balance = ledger.check_balance(self.conn, user.id, cost)
        available = user.balance - held
        assert (balance.balance_usd, balance.held_usd, balance.available_usd) == (user.balance, held, available)
        assert (balance.sufficient, balance.shortfall_usd) == (available >= cost, max(cost - available, D(0)))
        limits = ledger.check_limits(self.conn, user.id, cost)
        day_room = user.daily - self.day_spent(user) - held
        month_room = user.monthly - self.month_spent(user) - held
        local = self.local(self.now)
        if day_room < cost or (month_room >= cost and day_room <= month_room):
            kind, spent, limit, room = "daily", self.day_spent(user), user.daily, day_room
            resets = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), tzinfo=self.tz)
        else:
            kind, spent, limit, room = "monthly", self.month_spent(user), user.monthly, month_room
            resets = dt.datetime(local.year + local.month // 12, local.month % 12 + 1, 1, tzinfo=self.tz)
        allowed = user.override or (day_room >= cost and month_room >= cost)
        expected = (allowed, kind, spent, held, limit, max(room, D(0)), resets, user.override)
        got = (
            limits.allowed, limits.limit_type, limits.spent_usd, limits.held_usd, limits.limit_usd,
            limits.remaining_usd, limits.resets_at, limits.override,
        )  # fmt: skip
        assert got == expected

    # --- the model equals the database after every step ------------------------------------------------------

    @invariant()
    def database_matches_model(self) -> None:
        if not self.users:
            return
        for user in self.users:
            s = ledger.summary(self.conn, user.id)
            held = self.held(user)
            spent = sum((a for _, a in user.charges), D(0))
            last = max((t for t, _ in user.charges), default=None)
            expected = {
                "balance_usd": user.balance,
                "held_usd": held,
                "available_usd": user.balance - held,
                "total_spent_usd": spent,
                "total_requests": len(user.charges),
                "limits": {"daily_usd": user.daily, "monthly_usd": user.monthly},
                "usage": {"today_usd": self.day_spent(user), "month_usd": self.month_spent(user)},
                "is_active": user.active,
                "billing_enabled": user.billing,
                "limit_override": user.override,
                "last_request_at": None if last is None else last.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            got = {name: s[name] for name in expected}
            assert got == expected, f"user {self.users.index(user)} at {self.now.isoformat()}"
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT request_id, status FROM billing.reservations")
            stored = {r["request_id"]: r["status"] for r in cur.fetchall()}
            cur.execute("SELECT id, type, user_id, amount_usd FROM billing.billing_transactions")
            txs = {r["id"]: (r["type"], r["user_id"], r["amount_usd"]) for r in cur.fetchall()}
            cur.execute("SELECT request_id, charged_usd, written_off_usd FROM billing.write_offs")
            write_offs = {r["request_id"]: (r["charged_usd"], r["written_off_usd"]) for r in cur.fetchall()}
        assert stored == {h.request_id: h.raw for h in self.holds.values()}
        assert write_offs == self.write_offs
        assert txs == {tx: (kind, user.id, amount) for tx, (kind, user, amount) in self.txs.items()}
        assert_ledger_ok(self.conn)


MACHINE_EXAMPLES = int(os.environ.get("TOLLGATE_MACHINE_EXAMPLES", "30"))


@pytest.mark.slow
@pytest.mark.timeout(120 + 3 * MACHINE_EXAMPLES)
@pytest.mark.parametrize("path", PATHS)
def test_ledger_state_machine(pg_server_url: str, template_db: str, path: str) -> None:
    LedgerMachine.server_url = pg_server_url
    LedgerMachine.template = template_db
    LedgerMachine.path = path
    OUTCOMES.clear()
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=MACHINE_EXAMPLES,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            print_blob=True,
        ),
    )
    print("\n".join(f"{count:6d}  {outcome}" for outcome, count in sorted(OUTCOMES.items())))


# =========================================================================================================
# The two paths of charge, reserve and settle, side by side
# =========================================================================================================


def _load_account_calls(conn: psycopg.Connection[Any]) -> int:
    """How often this session's database ran billing._load_account (track_functions must be on)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    row = conn.execute(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
        "WHERE schemaname = 'billing' AND funcname = '_load_account'"
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("path", PATHS)
def test_the_switch_forces_the_exact_path(db: psycopg.Connection[Any], path: str) -> None:
    """Only the exact path loads the account with billing._load_account (the fast paths are one UPDATE): with
    the switch on, a charge, a hold and its settlement each call it once; without it, none does."""
    user = funded_user(db, "switch", 50)
    if path == "exact":
        force_exact_path(db)
    with db.transaction():
        db.execute("SET LOCAL track_functions = 'pl'")
        charged = ledger.charge(db, user, "switch-charge", D(1))
        held = ledger.reserve(db, user, "switch-hold", D(2))
        settled = ledger.settle(db, "switch-hold", D("1.5"))
        row = db.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions "
            "WHERE schemaname = 'billing' AND funcname = '_load_account'"
        ).fetchone()
    assert row == (3 if path == "exact" else 0,)
    assert (charged.status, held.status, settled.status) == ("charged", "held", "settled")
    assert settled.charged_usd == D("1.5")
    assert_ledger_ok(db)


PATH_OPS = 400
STEP = dt.timedelta(seconds=1)
PATH_START = dt.datetime(2031, 3, 31, 20, 45, tzinfo=dt.UTC)  # a month ends within hours in Europe/Kyiv


@dataclass(frozen=True)
class Op:
    """One call of the sequence both paths run: `name` of an api.ledger function and its arguments."""

    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()


def _path_ops(rng: random.Random, users: list[uuid.UUID]) -> list[Op]:
    """A seeded sequence built without looking at any answer, so both databases get the very same calls:
    charges, holds and settlements (within, above and below the hold, of live, expired and released holds),
    replays and conflicts, refusals (funds, limits, inactive accounts), flags, refunds, and a clock that
    moves through hold expiries and day and month ends."""
    ops: list[Op] = []
    requests: list[tuple[uuid.UUID, str, Decimal]] = []  # every hold asked for (taken or refused)
    charges: list[tuple[uuid.UUID, str, Decimal]] = []
    now = PATH_START

    def money() -> Decimal:
        return D(rng.randint(1, 400)) * CENT if rng.random() < 0.8 else D(rng.randint(1, 4 * 10**8)) * Q8

    for n in range(PATH_OPS):
        user = rng.choice(users)
        kind = rng.choices(
            ["charge", "reserve", "settle", "release", "replay", "top_up", "settings", "refund", "clock", "read"],
            [20, 18, 20, 4, 10, 6, 5, 4, 8, 4],
        )[0]
        key = f"p-{n}"
        if kind == "charge":
            amount = money()
            charges.append((user, key, amount))
            ops.append(Op("charge", (user, key, amount)))
        elif kind == "reserve":
            amount = money()
            ttl = dt.timedelta(minutes=rng.choice([1, 5, 15, 60]))
            requests.append((user, key, amount))
            ops.append(Op("reserve", (user, key, amount), (("ttl", ttl),)))
        elif kind == "settle" and requests:
            _, request, held = rng.choice(requests[-4:] if rng.random() < 0.8 else requests)
            factor = rng.choice([D(0), D("0.5"), D(1), D("1.5"), D(3)])
            ops.append(Op("settle", (request, (held * factor).quantize(Q8))))
        elif kind == "release" and requests:
            ops.append(Op("release", (rng.choice(requests)[1],)))
        elif kind == "replay" and (requests or charges):
            owner, request, amount = rng.choice(requests + charges)
            same = (owner, request, amount) in charges
            if rng.random() < 0.3:  # a conflict: another user, or another amount
                owner, amount = (rng.choice(users), amount) if rng.random() < 0.5 else (owner, amount + CENT)
            ops.append(Op("charge" if same else "reserve", (owner, request, amount)))
        elif kind == "top_up":
            ops.append(Op("top_up", (user, D(rng.randint(1, 5)), "card", key)))
        elif kind == "settings":
            setting = rng.choices(
                ["daily_limit_usd", "monthly_limit_usd", "is_active", "billing_enabled", "limit_override"],
                [4, 3, 1, 1, 1],
            )[0]
            # Flags mostly back to their defaults, so that an account is not switched off for good.
            value: Any = (
                D(rng.randint(0, 30) if setting == "daily_limit_usd" else rng.randint(20, 200))
                if setting.endswith("_usd")
                else rng.random() < (0.3 if setting == "limit_override" else 0.8)
            )
            ops.append(Op("update_settings", (user,), ((setting, value),)))
        elif kind == "refund" and charges:
            ops.append(Op("refund_request", (rng.choice(charges)[1], money(), "model", key)))
        elif kind == "clock":
            now += rng.choice([STEP * 30, STEP * 420, STEP * 3 * 3600, STEP * 86400])
            ops.append(Op("set_clock", (now,)))
        else:
            ops.append(Op(rng.choice(["check_limits", "check_balance"]), (user, money())))
    return ops


def _run_ops(conn: psycopg.Connection[Any], ops: list[Op]) -> list[Any]:
    """Every answer: the result row, or the refusal's SQLSTATE, message and figures."""
    answers: list[Any] = []
    for op in ops:
        try:
            if op.name == "set_clock":
                set_clock(conn, op.args[0])
                answers.append(None)
                continue
            if op.name == "refund_request":
                request, amount, reason, key = op.args
                row = conn.execute(
                    "SELECT id FROM billing.billing_transactions WHERE request_id = %s AND type = 'charge'", (request,)
                ).fetchone()
                if row is None:
                    answers.append("not charged")
                    continue
                answers.append(ledger.refund(conn, row[0], amount, reason, key))
                continue
            answers.append(getattr(ledger, op.name)(conn, *op.args, **dict(op.kwargs)))
        except BillingError as error:
            answers.append((error.sqlstate, error.message, error.detail))
    return answers


def _final_state(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the calls wrote, in a stable order (hash chain and times included)."""
    tables = {
        "user_billing": "user_id",
        "billing_transactions": "id",
        "reservations": "id",
        "write_offs": "request_id",
    }
    return {
        table: conn.execute(
            sql.SQL("SELECT * FROM billing.{} ORDER BY {}").format(sql.Identifier(table), sql.Identifier(order))
        ).fetchall()
        for table, order in tables.items()
    }


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fast_and_exact_paths_answer_alike(pg_server_url: str, template_db: str) -> None:
    print(f"TOLLGATE_TEST_SEED={SEED}")
    rng = random.Random(SEED)
    answers: dict[str, list[Any]] = {}
    states: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    load_account_calls: dict[str, int] = {}
    # One seeded database (the same user ids, hence the same hash chains), cloned once per path.
    with cloned_database(pg_server_url, template_db) as seeded_url:
        with api_db.connect(seeded_url) as seed:
            ledger.configure(seed, time_zone="Europe/Kyiv", hold_ttl=dt.timedelta(minutes=15))
            set_clock(seed, PATH_START)
            users = [ledger.ensure_account(seed, f"path-{k}") for k in range(3)]
            for k, user in enumerate(users):
                ledger.top_up(seed, user, D(15), "seed", f"seed-{k}")
            seeded = seed.execute("SELECT current_database()").fetchone()
        assert seeded is not None
        ops = _path_ops(rng, users)
        for path in PATHS:
            with cloned_database(pg_server_url, seeded[0]) as url, api_db.connect(url) as conn:
                if path == "exact":
                    force_exact_path(conn)
                conn.execute("SET track_functions = 'pl'")
                answers[path] = _run_ops(conn, ops)
                states[path] = _final_state(conn)
                load_account_calls[path] = _load_account_calls(conn)
                assert_ledger_ok(conn)
    for n, (op, fast, exact) in enumerate(zip(ops, answers["fast"], answers["exact"], strict=True)):
        assert fast == exact, f"seed {SEED}, call {n} {op}: fast path {fast!r} != exact path {exact!r}"
    for table in states["fast"]:
        assert states["fast"][table] == states["exact"][table], f"seed {SEED}: {table} differs"
    # Not two runs of one path: the fast run skipped billing._load_account on many calls.
    assert load_account_calls["exact"] - load_account_calls["fast"] >= 50, load_account_calls
    outcomes = Counter(type(a).__name__ if not isinstance(a, tuple) else a[0] for a in answers["fast"])
    print(dict(outcomes))
    assert outcomes["Charge"] > 20 and outcomes["Settlement"] > 20, outcomes
    assert outcomes["BL001"] >= 3 and outcomes["BL002"] + outcomes["BL003"] > 5, outcomes
