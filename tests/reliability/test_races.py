"""Races under load: one key from many connections, and spend limits while the clock crosses midnight.

tests/sql/test_concurrency.py fires each idempotent call alone, once, from K connections. This module adds:

* a storm of *all four* keyed calls at once — the same ``charge`` request id, the same ``reserve`` request
  id, the same ``begin_request`` request id and the same ``(provider, payment_id)`` top-up — from
  ``RACERS`` (>= 16) connections, each running the four in its own random order, round after round for
  ``PARAMS.duration`` seconds (every other round queued on the account's row lock first, so the race is
  certain; the others only released by a barrier, so some calls find the winner committed): exactly one
  effect per key, every replay answers the original result, ``verify_ledger()`` empty;
* spend limits under concurrent charges while the test clock (``billing.config.clock_override``, moved by
  the owner, never by sleeping) crosses a local midnight, a DST change (Europe/Kyiv, 2031-03-30 is 23 hours
  long) and a month end, in UTC and in Europe/Kyiv: no window ever passes its limit, the new day opens
  with fresh allowance while the month's limit still binds, and the first of the month resets both. Some
  waves move the clock while every charge is already queued on the account's lock ("in flight").
  Totals are exact Decimals, checked per local day and per local month from the ledger itself.

Every worker connection is a run-time role (EXECUTE only), one per thread: ``api_url`` (metering, payments and
operator) for the same-key storms, which top up as well as charge; ``metering_url`` for the limit races.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from api.ledger import db as api_db
from api.ledger import sync as ledger
from api.ledger.errors import BillingError, DailyLimitExceeded, MonthlyLimitExceeded
from tests.helpers_concurrency import (
    Connect,
    Outcome,
    RowGate,
    account,
    assert_ledger_ok,
    assert_no_deadlock,
    assert_only,
    count_rows,
    open_connections,
    run_together,
    set_clock,
    values_of,
)
from tests.reliability.params import PARAMS, report

pytestmark = pytest.mark.timeout(300)

D = Decimal
RACERS = 16
NOON = dt.datetime(2031, 5, 14, 12, 0, tzinfo=dt.UTC)


def _waiting_on_locks(probe: psycopg.Connection[Any]) -> int:
    row = probe.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    ).fetchone()
    assert row is not None
    return int(row[0])


class ClockMovingGate(RowGate):
    """A RowGate that, once every racer is queued on the account's lock, moves the test clock and only
    then lets them go: the calls are in flight (their statements started) when the day changes."""

    def __init__(
        self, connect: Connect, user_ids: Sequence[uuid.UUID], owner: psycopg.Connection[Any], move_to: dt.datetime
    ) -> None:
        super().__init__(connect, user_ids)
        self.owner = owner
        self.move_to = move_to

    def open(self, expected: int, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done():
            self.waiters = max(self.waiters, _waiting_on_locks(self.probe))
            if self.waiters >= expected:
                break
            time.sleep(0.01)
        set_clock(self.owner, self.move_to)
        self.conn.commit()


def _close(gate: RowGate) -> None:
    gate.conn.close()
    gate.probe.close()


# --- (1) one key from many connections, all four keyed calls at once ----------------------------------------


@dataclass(frozen=True)
class RoundKeys:
    charge: str
    hold: str
    call: str
    payment: str


OPS = ("charge", "reserve", "begin_request", "top_up")
CHARGE, HOLD, ESTIMATE, PAYMENT, FUNDS = D("1.25"), D("2.5"), D("0.75"), D("25"), D(100)


Work = Callable[[int, psycopg.Connection[Any]], dict[str, Any]]


def _storm_work(user: uuid.UUID, keys: RoundKeys, orders: list[list[str]]) -> Work:
    def work(i: int, c: psycopg.Connection[Any]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for op in orders[i]:
            if op == "charge":
                results[op] = ledger.charge(c, user, keys.charge, CHARGE, "storm")
            elif op == "reserve":
                results[op] = ledger.reserve(c, user, keys.hold, HOLD)
            elif op == "begin_request":
                results[op] = ledger.begin_request(c, keys.call, "search", user, estimate_usd=ESTIMATE)
            else:
                results[op] = ledger.top_up(c, user, PAYMENT, "stripe", keys.payment)
        return results

    return work


def _one_effect(outcomes: list[Outcome], op: str, answer: Callable[[Any], Any]) -> Any:
    results = [value[op] for value in values_of(outcomes)]
    firsts = [r for r in results if not r.replayed]
    assert len(firsts) == 1, f"{op}: {len(firsts)} calls did the work (replayed flags {[r.replayed for r in results]})"
    answers = {answer(r) for r in results}
    assert len(answers) == 1, f"{op}: callers got different answers: {answers}"
    return answers.pop()


def test_same_keys_from_many_connections_have_one_effect_each(db, connect, api_url):
    set_clock(db, NOON)
    conns = open_connections(connect, api_url, RACERS)
    rng = random.Random(PARAMS.seed)
    deadline = time.monotonic() + PARAMS.duration
    rounds = 0
    started = time.monotonic()
    while rounds < 2 or time.monotonic() < deadline:
        user = ledger.ensure_account(db, f"storm-{rounds}")
        ledger.top_up(db, user, FUNDS, "setup", f"fund-storm-{rounds}")
        keys = RoundKeys(f"charge-{rounds}", f"hold-{rounds}", f"call-{rounds}", f"pi-{rounds}")
        orders = [rng.sample(OPS, len(OPS)) for _ in range(RACERS)]
        gated = rounds % 2 == 0
        gate = RowGate(connect, [user]) if gated else None

        outcomes = run_together(conns, _storm_work(user, keys, orders), gate=gate)
        if gate is not None:
            _close(gate)  # long runs fire hundreds of rounds: never keep a round's connections open

        assert_no_deadlock(outcomes)
        assert_only(outcomes)
        if gate is not None:
            assert gate.waiters == RACERS, f"round {rounds}: only {gate.waiters} of {RACERS} calls were queued"
        charge_tx, charged, status = _one_effect(
            outcomes, "charge", lambda r: (r.transaction_id, r.amount_usd, r.status)
        )
        hold_id, held = _one_effect(outcomes, "reserve", lambda r: (r.reservation_id, r.amount_usd))
        call = _one_effect(outcomes, "begin_request", lambda r: (r.tracking_id, r.reservation_id, r.estimate_usd))
        payment = _one_effect(outcomes, "top_up", lambda r: (r.transaction_id, r.amount_usd))
        assert (status, charged, held, call[2], payment[1]) == ("charged", CHARGE, HOLD, ESTIMATE, PAYMENT)
        assert charge_tx is not None and hold_id is not None and call[1] is not None

        assert count_rows(db, "billing_transactions", "request_id = %s AND type = 'charge'", [keys.charge]) == 1
        assert count_rows(db, "billing_transactions", "payment_id = %s AND type = 'topup'", [keys.payment]) == 1
        assert count_rows(db, "reservations", "request_id = ANY(%s) AND status = 'held'", [[keys.hold, keys.call]]) == 2
        assert count_rows(db, "cost_tracking", "request_id = %s AND status = 'pending'", [keys.call]) == 1
        row = account(db, user)
        assert row["balance_usd"] == FUNDS + PAYMENT - CHARGE
        assert row["held_usd"] == HOLD + ESTIMATE
        assert (row["total_requests"], row["total_spent_usd"]) == (1, CHARGE)
        assert_ledger_ok(db)
        rounds += 1
    report(
        "races.same_keys",
        rounds=rounds,
        racers=RACERS,
        calls_fired=rounds * RACERS * len(OPS),
        seconds=round(time.monotonic() - started, 2),
    )


# --- (2) limit exhaustion across day, DST and month boundaries ------------------------------------------------

DAILY, MONTHLY, PRICE, PER_THREAD = D("1.00"), D("2.50"), D("0.07"), 2


@dataclass(frozen=True)
class Wave:
    """Every racer charges PRICE PER_THREAD times with the clock at `at` (local wall time); with `move_to`,
    the clock moves there while all the first charges are queued on the account's lock."""

    name: str
    at: dt.datetime
    move_to: dt.datetime | None
    charged: int  # how many charges succeed (exact)
    # What every other charge is refused with. None: either limit. In flight, a call that takes the lock
    # before any call acted at the new time still acts at the old one (refused by the old day's or month's
    # limit); once one has, the account's time never goes back and the rest act in the new window.
    refusal: type[BillingError] | None


def _local(tz: zoneinfo.ZoneInfo, year: int, month: int, day: int, hour: int, minute: int, second: int) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=tz)


def _waves(tz: zoneinfo.ZoneInfo) -> list[Wave]:
    # Counts at 0.07 a charge: a day allows 14 (0.98), a month 35 (2.45).
    return [
        Wave("old day", _local(tz, 2031, 3, 29, 23, 59, 50), None, 14, DailyLimitExceeded),
        Wave("new day", _local(tz, 2031, 3, 30, 0, 0, 10), None, 14, DailyLimitExceeded),
        # 2031-03-30 is the Kyiv DST day (23 hours); its room is 0.02, the month's 0.54: 7 charges, all on
        # the 31st, the month binds.
        Wave("in flight over midnight", _local(tz, 2031, 3, 30, 23, 59, 59), _local(tz, 2031, 3, 31, 0, 0, 5), 7, None),
        Wave("month spent", _local(tz, 2031, 3, 31, 23, 59, 50), None, 0, MonthlyLimitExceeded),
        Wave(
            "in flight over month end", _local(tz, 2031, 3, 31, 23, 59, 59), _local(tz, 2031, 4, 1, 0, 0, 5), 14, None
        ),
        Wave("new month, day spent", _local(tz, 2031, 4, 1, 0, 0, 30), None, 0, DailyLimitExceeded),
        # Room in the old day when the clock moves: some charges land on the 2nd, some on the 3rd. Exact
        # totals are not fixed, but neither day may pass its limit (checked from the ledger below).
        Wave(
            "in flight, room on both sides",
            _local(tz, 2031, 4, 2, 23, 59, 59),
            _local(tz, 2031, 4, 3, 0, 0, 5),
            -1,
            None,
        ),
    ]


def _charges_by(db: psycopg.Connection[Any], user: uuid.UUID, tz: str, unit: str) -> dict[dt.date, Decimal]:
    rows = db.execute(
        "SELECT date_trunc(%s, created_at AT TIME ZONE %s)::date, -sum(amount_usd) FROM billing.billing_transactions"
        " WHERE user_id = %s AND type = 'charge' GROUP BY 1 ORDER BY 1",
        (unit, tz, user),
    ).fetchall()
    return {day: total for day, total in rows}


@pytest.mark.parametrize("tz_name", ["UTC", "Europe/Kyiv"])
def test_concurrent_charges_never_pass_a_limit_across_day_and_month_boundaries(db, connect, metering_url, tz_name):
    ledger.configure(db, time_zone=tz_name)
    conns = open_connections(connect, metering_url, RACERS)
    summary_conn = connect(metering_url)
    api_db.configure(summary_conn)
    started = time.monotonic()
    deadline = started + PARAMS.duration
    passes = fired = 0
    by_day: dict[dt.date, Decimal] = {}
    while passes < 1 or time.monotonic() < deadline:
        # Each pass is a new account: the clock goes back to 2031-03-29 for it.
        by_day = _limit_pass(db, connect, conns, summary_conn, tz_name, f"limits-{tz_name}-{passes}")
        fired += RACERS * PER_THREAD * len(_waves(zoneinfo.ZoneInfo(tz_name)))
        passes += 1
    report(
        "races.limits",
        time_zone=tz_name,
        racers=RACERS,
        passes=passes,
        charges_fired=fired,
        charged_by_local_day_last_pass={str(k): str(v) for k, v in by_day.items()},
        seconds=round(time.monotonic() - started, 2),
    )


def _limit_pass(
    db: psycopg.Connection[Any],
    connect: Connect,
    conns: list[psycopg.Connection[Any]],
    summary_conn: psycopg.Connection[Any],
    tz_name: str,
    subject: str,
) -> dict[dt.date, Decimal]:
    tz = zoneinfo.ZoneInfo(tz_name)
    set_clock(db, _local(tz, 2031, 3, 29, 12, 0, 0))
    user = ledger.ensure_account(db, subject)
    ledger.top_up(db, user, D(1000), "setup", f"fund-{subject}")
    ledger.update_settings(db, user, daily_limit_usd=DAILY, monthly_limit_usd=MONTHLY)
    for number, wave in enumerate(_waves(tz)):
        set_clock(db, wave.at)
        gate: RowGate = (
            RowGate(connect, [user]) if wave.move_to is None else ClockMovingGate(connect, [user], db, wave.move_to)
        )

        def work(i: int, c: psycopg.Connection[Any], number: int = number) -> list[Outcome]:
            results: list[Outcome] = []
            for k in range(PER_THREAD):
                outcome = Outcome(k)
                try:
                    outcome.value = ledger.charge(c, user, f"{subject}-w{number}-t{i}-c{k}", PRICE)
                except BillingError as error:
                    outcome.error = error
                results.append(outcome)
            return results

        outcomes = run_together(conns, work, gate=gate)
        _close(gate)
        assert_no_deadlock(outcomes)
        assert_only(outcomes)
        assert gate.waiters == RACERS, f"{wave.name}: only {gate.waiters} of {RACERS} charges were queued"
        charges = [o for thread in values_of(outcomes) for o in thread]
        wins = [o.value for o in charges if o.ok]
        refusals = [o.error for o in charges if not o.ok]
        assert all(w.status == "charged" and w.amount_usd == PRICE and not w.replayed for w in wins)
        allowed_refusals = (DailyLimitExceeded, MonthlyLimitExceeded) if wave.refusal is None else (wave.refusal,)
        odd = [e for e in refusals if not isinstance(e, allowed_refusals)]
        assert not odd, f"{wave.name}: unexpected refusals {odd[:3]}"
        if wave.charged >= 0:
            assert len(wins) == wave.charged, f"{wave.name}: {len(wins)} charges succeeded, expected {wave.charged}"
        assert_ledger_ok(db)

        # Never past a limit in any window, per the ledger itself (local days and months of created_at).
        for day, total in _charges_by(db, user, tz_name, "day").items():
            assert total <= DAILY, f"{wave.name}: {total} USD charged on {day} (daily limit {DAILY})"
        for month, total in _charges_by(db, user, tz_name, "month").items():
            assert total <= MONTHLY, f"{wave.name}: {total} USD charged in {month:%Y-%m} (monthly limit {MONTHLY})"
        # ... and the account's own view of its windows agrees with the ledger.
        now_local = (wave.move_to or wave.at).astimezone(tz)
        usage = ledger.summary(summary_conn, user)["usage"]
        by_day = _charges_by(db, user, tz_name, "day")
        by_month = _charges_by(db, user, tz_name, "month")
        assert usage["today_usd"] == by_day.get(now_local.date(), 0), (wave.name, usage, by_day)
        assert usage["month_usd"] == by_month.get(now_local.date().replace(day=1), 0), (wave.name, usage, by_month)

    by_day = _charges_by(db, user, tz_name, "day")
    expected_fixed = {
        dt.date(2031, 3, 29): D("0.98"),
        dt.date(2031, 3, 30): D("0.98"),
        dt.date(2031, 3, 31): D("0.49"),
        dt.date(2031, 4, 1): D("0.98"),
    }
    assert {day: by_day[day] for day in expected_fixed} == expected_fixed
    # The last wave: 32 attempts, each day at most 14 of them; together more than one day's worth.
    last_two = [by_day.get(dt.date(2031, 4, 2), D(0)), by_day.get(dt.date(2031, 4, 3), D(0))]
    assert all(total <= DAILY for total in last_two)
    assert sum(last_two) >= D("0.98"), last_two
    assert _charges_by(db, user, tz_name, "month") == {
        dt.date(2031, 3, 1): D("2.45"),
        dt.date(2031, 4, 1): D("0.98") + sum(last_two),
    }
    row = account(db, user)
    assert row["total_spent_usd"] == sum(by_day.values())
    assert row["balance_usd"] == D(1000) - row["total_spent_usd"]
    assert_ledger_ok(db)
    return by_day
