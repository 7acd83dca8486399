"""Races on the billing functions: many real connections (one per thread) released together.

Every test opens its worker connections as the role that calls its functions in production
(``metering_url`` for holds and charges, ``operator_url`` for credits, refunds and adjustments; ``api_url``,
a member of all three run-time roles, where a test mixes them): EXECUTE on the functions only, no table.
Each releases the threads with a ``threading.Barrier`` and, where the race is on one account, first parks
every call on a lock of that account's row (``RowGate``) so that all of them are queued on it at the same
moment. Every test ends with ``billing.verify_ledger()`` empty.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import threading
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from api.ledger import db as api_db
from api.ledger import sync as ledger
from api.ledger.errors import (
    DailyLimitExceeded,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidState,
    LimitExceeded,
    MonthlyLimitExceeded,
    RefundExceedsCharge,
)
from tests.helpers_concurrency import (
    Connect,
    Outcome,
    RowGate,
    account,
    assert_ledger_ok,
    assert_no_deadlock,
    assert_only,
    billing_error,
    count_rows,
    funded_user,
    open_connections,
    run_together,
    set_clock,
    values_of,
)

pytestmark = pytest.mark.timeout(120)

N = 50  # racers in the "many calls" tests
K = 20  # racers in the "same key" tests
NOW = dt.datetime(2031, 5, 14, 12, 0, tzinfo=dt.UTC)  # mid-day, mid-month: no window rolls during a test
D = Decimal


@pytest.fixture(autouse=True)
def _pinned_clock(conn: psycopg.Connection[Any]) -> None:
    api_db.configure(conn)
    set_clock(conn, NOW)


def _racers(connect: Connect, url: str, n: int) -> list[psycopg.Connection[Any]]:
    return open_connections(connect, url, n)


def _gated(
    connect: Connect, conns: list[psycopg.Connection[Any]], users: list[uuid.UUID], work: Callable[..., Any]
) -> list[Outcome]:
    """Run `work` on all `conns` at once, every call first queued on the lock of `users`' rows."""
    gate = RowGate(connect, users)
    outcomes = run_together(conns, work, gate=gate)
    assert_no_deadlock(outcomes)
    assert gate.waiters == len(conns), f"only {gate.waiters} of {len(conns)} calls were queued on the lock"
    return outcomes


# --- many calls, one account ---------------------------------------------------------------------------


def test_charges_of_the_whole_balance_exactly_one_wins(conn, connect, metering_url):
    x = D("7.31250001")
    user = funded_user(conn, "alice", x)
    conns = _racers(connect, metering_url, N)

    outcomes = _gated(connect, conns, [user], lambda i, c: ledger.charge(c, user, f"charge-{i}", x))

    assert_only(outcomes, InsufficientFunds)
    wins = values_of(outcomes)
    assert len(wins) == 1, f"{len(wins)} charges of the whole balance succeeded"
    assert (wins[0].status, wins[0].amount_usd, wins[0].replayed) == ("charged", x, False)
    assert (wins[0].balance_before_usd, wins[0].balance_after_usd) == (x, 0)
    for outcome in outcomes:
        if outcome.error is not None:
            detail = billing_error(outcome.error).detail
            assert (detail["available_usd"], detail["shortfall_usd"]) == (0, x)
    row = account(conn, user)
    assert (row["balance_usd"], row["held_usd"], row["total_requests"], row["total_spent_usd"]) == (0, 0, 1, x)
    assert count_rows(conn, "billing_transactions", "user_id = %s AND type = 'charge'", [user]) == 1
    assert_ledger_ok(conn)


@pytest.mark.parametrize(
    ("binding", "settings", "refusal"),
    [
        ("daily", {}, DailyLimitExceeded),  # defaults: $10 a day, $100 a month
        ("monthly", {"daily_limit_usd": D(1000), "monthly_limit_usd": D(10)}, MonthlyLimitExceeded),
        ("funds", {"daily_limit_usd": D(1000), "monthly_limit_usd": D(1000)}, InsufficientFunds),
    ],
)
def test_reserves_never_pass_the_binding_bound(conn, connect, metering_url, binding, settings, refusal):
    user = funded_user(conn, "bob", D(10) if binding == "funds" else D(1000))
    if settings:
        ledger.update_settings(conn, user, **settings)
    conns = _racers(connect, metering_url, N)
    hold = D("0.30")

    outcomes = _gated(connect, conns, [user], lambda i, c: ledger.reserve(c, user, f"hold-{i}", hold))

    assert_only(outcomes, refusal)
    accepted = values_of(outcomes)
    assert len(accepted) == 33, f"{len(accepted)} holds of $0.30 accepted under a $10 {binding} bound"
    assert all(r.status == "held" and not r.replayed and r.available_usd >= 0 for r in accepted)
    for outcome in outcomes:
        if outcome.error is not None:
            detail = billing_error(outcome.error).detail
            if isinstance(outcome.error, LimitExceeded):
                assert detail["limit"] == binding
                assert detail["spent_usd"] + detail["held_usd"] == D("9.90")
                assert detail["remaining_usd"] == D("0.10")
            else:
                assert detail["available_usd"] == D("0.10")
    row = account(conn, user)
    assert row["held_usd"] == D("9.90")
    assert count_rows(conn, "reservations", "user_id = %s AND status = 'held'", [user]) == 33
    assert_ledger_ok(conn)


def _ensure(subject: str, i: int, c: psycopg.Connection[Any]) -> uuid.UUID:
    return ledger.ensure_account(c, subject, email=f"{subject}@example.com")


def test_first_calls_of_ensure_account_make_one_account(conn, connect, metering_url):
    conns = _racers(connect, metering_url, N)
    for round_ in range(3):
        subject = f"newcomer-{round_}"
        first_call = functools.partial(_ensure, subject)
        outcomes = run_together(conns, first_call)
        assert_only(outcomes)
        ids = set(values_of(outcomes))
        assert len(ids) == 1, f"{len(ids)} different ids for one subject"
        (user,) = ids
        assert count_rows(conn, "users", "external_id = %s", [subject]) == 1
        assert count_rows(conn, "user_billing", "user_id = %s", [user]) == 1
        row = account(conn, user)
        assert (row["balance_usd"], row["daily_limit_usd"], row["monthly_limit_usd"]) == (0, 10, 100)
    assert count_rows(conn, "users") == 3
    assert count_rows(conn, "user_billing") == 3
    assert_ledger_ok(conn)


# --- one key from many connections: one effect, the same answer for everyone ----------------------------


def _same_answer(outcomes: list[Outcome], key: Callable[[Any], Any]) -> Any:
    """All calls succeeded, exactly one did the work, the others replayed it; returns the shared key."""
    assert_only(outcomes)
    results = values_of(outcomes)
    assert sorted(r.replayed for r in results) == [False] + [True] * (len(results) - 1), [r.replayed for r in results]
    keys = {key(r) for r in results}
    assert len(keys) == 1, f"callers got different answers: {keys}"
    return keys.pop()


def test_same_charge_request_from_many_connections(conn, connect, metering_url):
    user = funded_user(conn, "carol", 100)
    conns = _racers(connect, metering_url, K)
    outcomes = _gated(connect, conns, [user], lambda i, c: ledger.charge(c, user, "req-1", D("1.25")))
    tx = _same_answer(outcomes, lambda r: (r.transaction_id, r.amount_usd, r.balance_after_usd))
    assert tx[1:] == (D("1.25"), D("98.75"))
    assert count_rows(conn, "billing_transactions", "request_id = 'req-1'") == 1
    assert account(conn, user)["total_requests"] == 1
    assert_ledger_ok(conn)


def test_same_reserve_request_from_many_connections(conn, connect, metering_url):
    user = funded_user(conn, "dave", 100)
    conns = _racers(connect, metering_url, K)
    outcomes = _gated(connect, conns, [user], lambda i, c: ledger.reserve(c, user, "req-1", D("2.5")))
    _same_answer(outcomes, lambda r: (r.reservation_id, r.amount_usd))
    assert count_rows(conn, "reservations", "request_id = 'req-1'") == 1
    assert account(conn, user)["held_usd"] == D("2.5")
    assert_ledger_ok(conn)


def test_same_settle_from_many_connections(conn, connect, metering_url):
    user = funded_user(conn, "erin", 100)
    ledger.reserve(conn, user, "req-1", D("2.5"))
    conns = _racers(connect, metering_url, K)
    outcomes = _gated(connect, conns, [user], lambda i, c: ledger.settle(c, "req-1", D("1.75")))
    _same_answer(outcomes, lambda r: (r.transaction_id, r.charged_usd, r.released_usd))
    assert count_rows(conn, "billing_transactions", "request_id = 'req-1' AND type = 'charge'") == 1
    row = account(conn, user)
    assert (row["balance_usd"], row["held_usd"], row["total_requests"]) == (D("98.25"), 0, 1)
    assert_ledger_ok(conn)


def test_same_release_from_many_connections(conn, connect, metering_url):
    user = funded_user(conn, "erin", 100)
    ledger.reserve(conn, user, "req-1", D("2.5"))
    conns = _racers(connect, metering_url, K)
    outcomes = _gated(connect, conns, [user], lambda i, c: ledger.release(c, "req-1"))
    _same_answer(outcomes, lambda r: (r.status, r.released_usd))
    assert account(conn, user)["held_usd"] == 0
    assert_ledger_ok(conn)


def test_same_payment_from_many_connections(conn, connect, operator_url):
    user = ledger.ensure_account(conn, "frank")
    conns = _racers(connect, operator_url, K)
    outcomes = _gated(connect, conns, [user], lambda i, c: ledger.top_up(c, user, D("25"), "stripe", "pi_1"))
    _same_answer(outcomes, lambda r: (r.transaction_id, r.balance_after_usd))
    assert count_rows(conn, "billing_transactions", "type = 'topup'") == 1
    assert account(conn, user)["balance_usd"] == 25
    assert_ledger_ok(conn)


def test_same_refund_from_many_connections(conn, connect, operator_url):
    user = funded_user(conn, "grace", 100)
    charge = ledger.charge(conn, user, "req-1", D("4"))
    assert charge.transaction_id is not None
    tx = charge.transaction_id
    conns = _racers(connect, operator_url, K)
    outcomes = _gated(connect, conns, [user], lambda i, c: ledger.refund(c, tx, D("1.5"), "sorry", "refund-1"))
    _same_answer(outcomes, lambda r: (r.transaction_id, r.amount_usd, r.balance_after_usd))
    assert count_rows(conn, "billing_transactions", "type = 'refund'") == 1
    assert account(conn, user)["balance_usd"] == D("97.5")
    assert_ledger_ok(conn)


def test_same_adjustment_from_many_connections(conn, connect, operator_url):
    user = funded_user(conn, "heidi", 100)
    conns = _racers(connect, operator_url, K)
    outcomes = _gated(
        connect, conns, [user], lambda i, c: ledger.adjust(c, user, D("-3.5"), "fix", "ops@example", "adj-1")
    )
    _same_answer(outcomes, lambda r: (r.transaction_id, r.balance_after_usd))
    assert count_rows(conn, "billing_transactions", "type = 'adjustment'") == 1
    assert account(conn, user)["balance_usd"] == D("96.5")
    assert_ledger_ok(conn)


@pytest.mark.parametrize("with_hold", [True, False], ids=["settles-hold", "direct-charge"])
def test_same_completion_from_many_connections(conn, connect, metering_url, with_hold):
    user = funded_user(conn, "ivan", 100)
    ledger.start_request(conn, "call-1", "search", user)
    if with_hold:
        ledger.reserve(conn, user, "call-1", D("1"))
    conns = _racers(connect, metering_url, K)
    outcomes = _gated(
        connect, conns, [user], lambda i, c: ledger.complete_request(c, "call-1", True, D("0.42"), execution_time_ms=7)
    )
    tx = _same_answer(outcomes, lambda r: (r.transaction_id, r.status, r.price_usd, r.billed))
    assert tx[1:] == ("completed", D("0.42"), True)
    assert count_rows(conn, "billing_transactions", "type = 'charge'") == 1
    row = account(conn, user)
    assert (row["balance_usd"], row["held_usd"], row["total_requests"]) == (D("99.58"), 0, 1)
    assert_ledger_ok(conn)


def test_same_start_request_from_many_connections(conn, connect, metering_url):
    user = ledger.ensure_account(conn, "judy")
    conns = _racers(connect, metering_url, K)
    outcomes = run_together(conns, lambda i, c: ledger.start_request(c, "call-1", "search", user))
    _same_answer(outcomes, lambda r: r.tracking_id)
    assert count_rows(conn, "cost_tracking") == 1
    assert_ledger_ok(conn)


# --- one key, different parameters: one winner, the rest conflict --------------------------------------


def _setup_charge(conn: psycopg.Connection[Any], user: uuid.UUID) -> int:
    charge = ledger.charge(conn, user, "the-charge", D("9"))
    assert charge.transaction_id is not None
    return charge.transaction_id


CONFLICTING: dict[str, Callable[..., Any]] = {
    # op -> (conn, user, i, setup) -> call with the shared key and an amount that differs per racer
    "charge": lambda c, u, i, _: ledger.charge(c, u, "req-x", D("1.00") + D(i) / 100),
    "reserve": lambda c, u, i, _: ledger.reserve(c, u, "req-x", D("1.00") + D(i) / 100),
    "settle": lambda c, u, i, _: ledger.settle(c, "held-x", D("1.00") + D(i) / 100),
    "top_up": lambda c, u, i, _: ledger.top_up(c, u, D("10.00") + D(i) / 100, "stripe", "pi_x"),
    "refund": lambda c, u, i, tx: ledger.refund(c, tx, D("1.00") + D(i) / 100, "sorry", "refund-x"),
    "adjust": lambda c, u, i, _: ledger.adjust(c, u, D("1.00") + D(i) / 100, "fix", "ops", "adj-x"),
    "complete_request": lambda c, u, i, _: ledger.complete_request(c, "call-x", True, D("1.00") + D(i) / 100),
}


@pytest.mark.parametrize("op", sorted(CONFLICTING))
def test_same_key_with_different_parameters_one_wins(conn, connect, api_url, op):
    user = funded_user(conn, "kim", 100)
    ledger.update_settings(conn, user, daily_limit_usd=D(100))
    charge_tx = _setup_charge(conn, user)
    ledger.reserve(conn, user, "held-x", D("5"))
    ledger.start_request(conn, "call-x", "search", user)
    before = count_rows(conn, "billing_transactions")
    conns = _racers(connect, api_url, K)

    outcomes = _gated(connect, conns, [user], lambda i, c: CONFLICTING[op](c, user, i, charge_tx))

    assert_only(outcomes, IdempotencyConflict)
    winners = [o for o in outcomes if o.ok]
    assert len(winners) == 1, f"{len(winners)} calls with different parameters succeeded under one key"
    assert not winners[0].value.replayed
    amount = D("1.00") + D(winners[0].index) / 100
    if op == "top_up":
        amount += 9
    assert count_rows(conn, "billing_transactions") == before + (0 if op == "reserve" else 1)
    if op == "reserve":
        assert count_rows(conn, "reservations", "request_id = 'req-x' AND amount_usd = %s", [amount]) == 1
    else:
        assert count_rows(conn, "billing_transactions", "id > %s AND abs(amount_usd) = %s", [charge_tx, amount]) == 1
    assert_ledger_ok(conn)


# --- one key, two users ----------------------------------------------------------------------------------

CROSS_USER: dict[str, Callable[..., Any]] = {
    "top_up": lambda c, u: ledger.top_up(c, u, D("10"), "stripe", "pi_shared"),
    "charge": lambda c, u: ledger.charge(c, u, "req-shared", D("1")),
    "reserve": lambda c, u: ledger.reserve(c, u, "req-shared", D("1")),
    "adjust": lambda c, u: ledger.adjust(c, u, D("1"), "fix", "ops", "adj-shared"),
}


@pytest.mark.parametrize("op", sorted(CROSS_USER))
def test_same_key_for_two_users_credits_one(conn, connect, api_url, op):
    users = [funded_user(conn, "lena", 50), funded_user(conn, "mike", 50)]
    conns = _racers(connect, api_url, K)

    outcomes = _gated(connect, conns, users, lambda i, c: CROSS_USER[op](c, users[i % 2]))

    assert_only(outcomes, IdempotencyConflict)
    winner_users = {users[o.index % 2] for o in outcomes if o.ok}
    assert len(winner_users) == 1, "both users got the effect of one key"
    (winner,) = winner_users
    loser = users[0] if winner == users[1] else users[1]
    for o in outcomes:
        assert o.ok == (users[o.index % 2] == winner), f"thread {o.index}: {o.error!r}"
    assert sorted(o.value.replayed for o in outcomes if o.ok) == [False] + [True] * (K // 2 - 1)
    if op == "reserve":
        assert count_rows(conn, "reservations", "request_id = 'req-shared'") == 1
        assert (account(conn, winner)["held_usd"], account(conn, loser)["held_usd"]) == (1, 0)
    else:
        assert count_rows(conn, "billing_transactions", "user_id = %s AND version > 1", [winner]) == 1
        assert count_rows(conn, "billing_transactions", "user_id = %s AND version > 1", [loser]) == 0
        assert account(conn, loser)["balance_usd"] == 50
    assert_ledger_ok(conn)


# --- interleavings -----------------------------------------------------------------------------------------


def test_reserve_settle_release_interleavings_keep_holds_and_limits(conn, connect, metering_url, db_url):
    user = funded_user(conn, "nina", D(6))
    ledger.update_settings(conn, user, daily_limit_usd=D("4.5"), monthly_limit_usd=D(100))
    threads, rounds = 12, 30
    conns = open_connections(connect, [metering_url, db_url], threads)  # the owner takes part too
    monitor_conn = connect()
    stop = threading.Event()
    breaches: list[str] = []

    def monitor() -> None:
        while not stop.is_set():
            row = account(monitor_conn, user)
            if row["balance_usd"] - row["held_usd"] < 0:
                breaches.append(f"available below zero: {row['balance_usd']} - {row['held_usd']}")
            if row["day_spent_usd"] + row["held_usd"] > row["daily_limit_usd"]:
                breaches.append(f"daily limit passed: {row['day_spent_usd']} + {row['held_usd']}")

    def work(i: int, c: psycopg.Connection[Any]) -> list[Decimal]:
        rng = random.Random(1000 + i)
        charged: list[Decimal] = []
        for n in range(rounds):
            request = f"w{i}-{n}"
            hold = D(rng.randint(1, 50)) / 100
            try:
                reservation = ledger.reserve(c, user, request, hold)
            except (InsufficientFunds, DailyLimitExceeded):
                continue
            assert reservation.available_usd >= 0
            choice = rng.random()
            if choice < 0.3:
                assert ledger.release(c, request).released_usd == hold
            else:
                actual = hold if choice < 0.6 else (0 if choice < 0.7 else D(rng.randint(0, int(hold * 100))) / 100)
                settlement = ledger.settle(c, request, actual)
                assert (settlement.charged_usd, settlement.released_usd) == (actual, hold - actual)
                charged.append(D(actual))
        return charged

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    try:
        outcomes = run_together(conns, work)
    finally:
        stop.set()
        watcher.join(10)
    assert_no_deadlock(outcomes)
    assert_only(outcomes)
    assert not breaches, breaches[:5]
    charges = [amount for result in values_of(outcomes) for amount in result]
    row = account(conn, user)
    assert row["held_usd"] == 0
    assert row["balance_usd"] == D(6) - sum(charges, D(0))
    assert row["balance_usd"] >= 0
    assert row["total_requests"] == sum(1 for amount in charges if amount > 0)
    assert row["day_spent_usd"] == sum(charges, D(0)) <= D("4.5")
    assert count_rows(conn, "reservations", "status = 'held'") == 0
    assert_ledger_ok(conn)


def test_small_balance_reserve_and_settle_two_of_ten(conn, connect, metering_url):
    user = funded_user(conn, "olga", D("0.05"))
    conns = _racers(connect, metering_url, 10)

    def work(i: int, c: psycopg.Connection[Any]) -> Any:
        ledger.reserve(c, user, f"small-{i}", D("0.02"))
        return ledger.settle(c, f"small-{i}", D("0.02"))

    outcomes = _gated(connect, conns, [user], work)
    assert_only(outcomes, InsufficientFunds)
    assert len(values_of(outcomes)) == 2
    row = account(conn, user)
    assert (row["balance_usd"], row["held_usd"], row["total_requests"]) == (D("0.01"), 0, 2)
    assert count_rows(conn, "reservations") == 2
    assert_ledger_ok(conn)


def test_twenty_variable_cost_calls_on_twenty_cents_never_spend_more_than_twenty_cents(conn, connect, metering_url):
    """20 concurrent `summarize` calls (held at the 0.01 estimate, each priced 0.156 once it ran) on a 0.20
    balance with 0.20 day and month limits, charged past their holds without bound, would charge 3.12 and
    leave -2.92. Settlement charges at most what the balance and the limits cover; the rest is written off,
    visibly."""
    user = funded_user(conn, "vera", D("0.20"))
    ledger.update_settings(conn, user, daily_limit_usd=D("0.20"), monthly_limit_usd=D("0.20"))
    ledger.set_tool_pricing(conn, "summarize", D(0), markup_percent=D(20), estimate_usd=D("0.01"), variable_cost=True)
    conns = _racers(connect, metering_url, 20)
    monitor_conn = connect()
    stop = threading.Event()
    breaches: list[str] = []

    def monitor() -> None:
        while not stop.is_set():
            row = account(monitor_conn, user)
            if row["balance_usd"] < 0 or row["balance_usd"] - row["held_usd"] < 0:
                breaches.append(f"balance {row['balance_usd']} with {row['held_usd']} held")
            if row["day_spent_usd"] + row["held_usd"] > D("0.20") or row["month_spent_usd"] > D("0.20"):
                breaches.append(f"spent {row['day_spent_usd']} / {row['month_spent_usd']}, held {row['held_usd']}")

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    try:
        starts = _gated(connect, conns, [user], lambda i, c: ledger.begin_request(c, f"sum-{i}", "summarize", user))
        assert_only(starts)
        assert {s.estimate_usd for s in values_of(starts)} == {D("0.01")}
        # each call read 65000 tokens: 0.13 of cost, 0.156 with the 20% markup
        done = _gated(
            connect, conns, [user], lambda i, c: ledger.complete_request(c, f"sum-{i}", True, D("0.13"))
        )
    finally:
        stop.set()
        watcher.join(10)
    assert_only(done)
    assert not breaches, breaches[:5]
    row = account(conn, user)
    assert row["balance_usd"] == 0
    assert (row["held_usd"], row["day_spent_usd"], row["month_spent_usd"]) == (0, D("0.20"), D("0.20"))
    completions = values_of(done)
    assert sum((c.charged_usd for c in completions), D(0)) == D("0.20")
    for completion in completions:
        assert completion.price_usd == D("0.156")
        assert completion.charged_usd + completion.written_off_usd == D("0.156")
    written_off = conn.execute(
        "SELECT count(*), sum(written_off_usd), min(tool_name), max(tool_name) FROM billing.written_off_calls"
        " WHERE user_id = %s",
        (user,),
    ).fetchone()
    assert written_off == (20, D("2.92"), "summarize", "summarize")
    assert_ledger_ok(conn)


def test_settle_and_release_of_one_hold_race_to_one_outcome(conn, connect, metering_url):
    user = funded_user(conn, "rosa", 100)
    ledger.reserve(conn, user, "req-1", D(2))
    conns = _racers(connect, metering_url, K)

    def work(i: int, c: psycopg.Connection[Any]) -> Any:
        return ledger.settle(c, "req-1", D("1.5")) if i % 2 else ledger.release(c, "req-1")

    outcomes = _gated(connect, conns, [user], work)
    assert_only(outcomes, InvalidState)
    winners = {o.index % 2 for o in outcomes if o.ok}
    assert len(winners) == 1, "the hold was both settled and released"
    settled = winners == {1}
    for o in outcomes:
        assert o.ok == (o.index % 2 == int(settled)), f"thread {o.index}: {o.error!r}"
    assert sorted(o.value.replayed for o in outcomes if o.ok) == [False] + [True] * (K // 2 - 1)
    row = account(conn, user)
    assert (row["held_usd"], row["balance_usd"]) == (0, D("98.5") if settled else 100)
    expected = "settled" if settled else "released"
    assert count_rows(conn, "reservations", "request_id = 'req-1' AND status = %s", [expected]) == 1
    assert_ledger_ok(conn)


def test_expired_holds_reaped_settled_and_released_at_once(conn, connect, metering_url, db_url):
    """Holds of 3 users expire; sweeps, late settlements (charged in full: the work was done, and the balance
    covers it even with no hold left) and releases (which find the hold expired) race. Each hold ends settled
    or expired, holds drop to 0, no deadlock."""
    users = [funded_user(conn, f"late-{k}", 100) for k in range(3)]
    for user in users:
        ledger.update_settings(conn, user, daily_limit_usd=D(1000))
        for n in range(10):
            ledger.reserve(conn, user, f"{user}-{n}", D(1))
    set_clock(conn, NOW + dt.timedelta(minutes=20))  # past the 15-minute hold TTL
    holds = [(user, f"{user}-{n}") for user in users for n in range(10)]
    settle_these = set(holds[0::3])
    release_these = set(holds[1::3])
    threads = 12
    conns = open_connections(connect, [metering_url, db_url], threads)

    workers = [i for i in range(threads) if i % 3]  # the others sweep

    def work(i: int, c: psycopg.Connection[Any]) -> int:
        if i not in workers:
            return sum(ledger.reap_expired_holds(c) for _ in range(3))
        for hold in holds[workers.index(i) :: len(workers)]:
            if hold in settle_these:
                assert ledger.settle(c, hold[1], D("0.5")).charged_usd == D("0.5")
            elif hold in release_these:
                freed = ledger.release(c, hold[1])
                assert (freed.status, freed.released_usd) == ("expired", D(0))
        return 0

    outcomes = run_together(conns, work)
    assert_no_deadlock(outcomes)
    assert_only(outcomes)
    assert sum(o.value for o in outcomes) <= len(holds)
    settled_by_user = {user: sum(1 for u, _ in settle_these if u == user) for user in users}
    for user in users:
        row = account(conn, user)
        assert row["held_usd"] == 0
        assert row["balance_usd"] == 100 - D("0.5") * settled_by_user[user]
    assert count_rows(conn, "reservations", "status = 'settled'") == len(settle_these)
    assert count_rows(conn, "reservations", "status = 'expired'") == len(holds) - len(settle_these)
    assert_ledger_ok(conn)


# --- refunds racing ------------------------------------------------------------------------------------------


def test_refunds_of_one_charge_never_exceed_it(conn, connect, operator_url):
    user = funded_user(conn, "pat", 10)
    tx = _setup_charge(conn, user)  # $9
    conns = _racers(connect, operator_url, K)
    outcomes = _gated(connect, conns, [user], lambda i, c: ledger.refund(c, tx, D("0.70"), "partial", f"r-{i}"))
    assert_only(outcomes, RefundExceedsCharge)
    assert len(values_of(outcomes)) == 12  # 12 x 0.70 = 8.40 <= 9 < 13 x 0.70
    assert account(conn, user)["balance_usd"] == D(1) + D("8.40")
    assert_ledger_ok(conn)


def test_concurrent_refunds_of_different_charges_do_not_deadlock(conn, connect, operator_url):
    user = funded_user(conn, "quinn", 100)
    txs = []
    for i in range(K):
        charge = ledger.charge(conn, user, f"c-{i}", D("0.25") + D(i) / 100)
        assert charge.transaction_id is not None
        txs.append((charge.transaction_id, charge.amount_usd))
    conns = _racers(connect, operator_url, K)
    outcomes = _gated(
        connect, conns, [user], lambda i, c: ledger.refund(c, txs[i][0], txs[i][1], "all of it", f"r-{i}")
    )
    assert_only(outcomes)
    assert account(conn, user)["balance_usd"] == 100
    assert_ledger_ok(conn)


def test_mixed_operations_on_four_users_do_not_deadlock(conn, connect, api_url, db_url):
    """8 threads, random order, 4 users, real clock: top-ups, charges, adjustments, refunds of any user's charges,
    reserve/settle/release, tracked tool calls and two-user "transfers" (one transaction, adjusting both
    users in user-id order, as a well-behaved caller composes them). No deadlock, no unexpected error,
    and each balance is what the acknowledged operations add up to."""
    set_clock(conn, None)  # the real clock: times are read after each account lock is granted
    users = sorted(funded_user(conn, f"mix-{k}", 20) for k in range(4))
    for user in users:
        ledger.update_settings(conn, user, daily_limit_usd=D(1000), monthly_limit_usd=D(1000))
    threads, ops = 8, 60
    conns = open_connections(connect, [api_url, db_url], threads)
    charges: list[tuple[int, uuid.UUID, Decimal]] = []
    charges_lock = threading.Lock()

    def work(i: int, c: psycopg.Connection[Any]) -> dict[uuid.UUID, Decimal]:
        rng = random.Random(7000 + i)
        delta = dict.fromkeys(users, D(0))

        def record_charge(tx: int | None, user: uuid.UUID, amount: Decimal) -> None:
            delta[user] -= amount
            if tx is not None:
                with charges_lock:
                    charges.append((tx, user, amount))

        for n in range(ops):
            user = rng.choice(users)
            amount = D(rng.randint(1, 300)) / 100
            key = f"t{i}-{n}"
            kind = rng.choice(["top_up", "charge", "adjust", "refund", "hold", "call", "transfer"])
            try:
                if kind == "top_up":
                    delta[user] += ledger.top_up(c, user, amount, "stripe", key).amount_usd
                elif kind == "charge":
                    result = ledger.charge(c, user, key, amount)
                    record_charge(result.transaction_id, user, result.amount_usd)
                elif kind == "adjust":
                    signed = amount if rng.random() < 0.5 else -amount
                    delta[user] += ledger.adjust(c, user, signed, "mix", "ops", key).amount_usd
                elif kind == "refund":
                    with charges_lock:
                        picked = rng.choice(charges) if charges else None
                    if picked is not None:
                        tx, owner, charged = picked
                        part = min(charged, amount)
                        delta[owner] += ledger.refund(c, tx, part, "mix", key).amount_usd
                elif kind == "hold":
                    ledger.reserve(c, user, key, amount)
                    if rng.random() < 0.3:
                        ledger.release(c, key)
                    else:
                        settled = ledger.settle(c, key, amount * rng.choice([D(0), D("0.5"), D(1), D("1.5")]))
                        record_charge(settled.transaction_id, user, settled.charged_usd)
                elif kind == "call":
                    ledger.start_request(c, key, "search", user)
                    done = ledger.complete_request(c, key, rng.random() < 0.8, amount)
                    if done.billed:  # what was charged: the price, or what the balance covered of it
                        assert done.charged_usd + done.written_off_usd == done.price_usd
                        record_charge(done.transaction_id, user, done.charged_usd)
                else:
                    a, b = sorted(rng.sample(users, 2))
                    with c.transaction():
                        ledger.adjust(c, a, -amount, "transfer out", "ops", key + "-out")
                        ledger.adjust(c, b, amount, "transfer in", "ops", key + "-in")
                    delta[a] -= amount
                    delta[b] += amount
            except (InsufficientFunds, RefundExceedsCharge):
                pass
        return delta

    outcomes = run_together(conns, work)
    assert_no_deadlock(outcomes)
    assert_only(outcomes)
    for user in users:
        expected = D(20) + sum((o.value[user] for o in outcomes), D(0))
        assert account(conn, user)["balance_usd"] == expected
        assert account(conn, user)["held_usd"] == 0
    # Successive holders of an account's lock see non-decreasing times: the ledger is in time order.
    out_of_order = conn.execute(
        "SELECT user_id, version FROM (SELECT user_id, version, created_at,"
        " lag(created_at) OVER (PARTITION BY user_id ORDER BY version) AS previous"
        " FROM billing.billing_transactions) t WHERE created_at < previous"
    ).fetchall()
    assert out_of_order == []
    assert_ledger_ok(conn)
