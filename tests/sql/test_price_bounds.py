"""Spending beyond what was held, against a real PostgreSQL database.

* A tool's pricing may declare the most one call is charged (``max_price_usd``) and an estimate from its
  arguments (``per_input_char_usd``); the hold is that bound (billing.estimate_price, billing.begin_request).
* Settlement never charges more than the call's hold plus what the available balance and the day/month
  limit room cover at that moment (and never more than a declared maximum); the rest is written off, never
  charged, and shown in ``billing.written_off_calls``. Replays answer the same figures.
* billing.estimate_price learns only from billed calls, at most 5 samples per user, and only once 100
  samples are in: anonymous, API-key and billing-disabled calls cannot move it, and one billed user's
  outliers move it at most 5 ranks.

After every test, billing.verify_ledger() must be empty.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from api.gateway.metering import input_characters
from api.ledger import sync as ledger
from api.ledger.errors import IdempotencyConflict, InsufficientFunds, InvalidAmount, InvalidArgument
from tests import helpers as h
from tests.helpers import at

D = Decimal
NOW = at(2031, 5, 14, 12)  # mid-day, mid-month: no spend window rolls during a test


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)


@pytest.fixture(autouse=True)
def _pinned_clock(db):
    h.set_clock(db, NOW)


@pytest.fixture
def ledger_may_break():
    """Asked for by a test that breaks the ledger on purpose: no verify_ledger() check after it."""


def write_off_rows(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM billing.written_off_calls ORDER BY written_off_at, request_id").fetchall()


def written_off(db: psycopg.Connection[Any], request_id: str) -> dict[str, Any]:
    rows = [row for row in write_off_rows(db) if row["request_id"] == request_id]
    assert len(rows) == 1, f"write-offs of {request_id}: {rows}"
    return rows[0]


# --- settle: over the hold ----------------------------------------------------------------------------


def test_settle_above_the_hold_is_charged_in_full_when_it_fits(db):
    user_id = h.funded_user(db, 10)
    ledger.reserve(db, user_id, "req-1", D("0.5"))
    result = ledger.settle(db, "req-1", D(3))
    assert result == ledger.Settlement(result.transaction_id, "req-1", "settled", D(3), D(0), D(0), D(7), False)
    account = h.account_row(db, user_id)
    assert (account["balance_usd"], account["held_usd"], account["day_spent_usd"]) == (D(7), 0, D(3))
    assert write_off_rows(db) == []
    with h.nothing_written(db):
        assert ledger.settle(db, "req-1", D(3)) == dataclasses.replace(result, replayed=True)
    with h.nothing_written(db), pytest.raises(IdempotencyConflict):
        ledger.settle(db, "req-1", D("2.99"))


def test_settle_above_what_the_balance_covers_writes_the_rest_off(db):
    user_id = h.funded_user(db, 1)
    ledger.reserve(db, user_id, "req-a", D("0.5"))
    ledger.reserve(db, user_id, "req-b", D("0.3"))
    # req-a may take its own hold and what no other hold claims: 1 - 0.3 = 0.7 of its 3
    result = ledger.settle(db, "req-a", D(3))
    assert (result.charged_usd, result.written_off_usd, result.released_usd, result.balance_after_usd) == (
        D("0.7"), D("2.3"), D(0), D("0.3"))
    tx = h.ledger_rows(db, user_id)[-1]
    assert (tx["id"], tx["amount_usd"], tx["request_id"]) == (result.transaction_id, D("-0.7"), "req-a")
    row = written_off(db, "req-a")
    assert (row["user_id"], row["tool_name"], row["hold_usd"], row["price_usd"], row["max_price_usd"]) == (
        user_id, None, D("0.5"), D(3), None)
    assert (row["charged_usd"], row["written_off_usd"], row["reason"], row["transaction_id"]) == (
        D("0.7"), D("2.3"), "insufficient_funds", result.transaction_id)
    # the other hold is intact and settles in full
    other = ledger.settle(db, "req-b", D("0.3"))
    assert (other.charged_usd, other.written_off_usd, other.balance_after_usd) == (D("0.3"), D(0), D(0))
    account = h.account_row(db, user_id)
    assert (account["balance_usd"], account["held_usd"], account["total_spent_usd"]) == (D(0), 0, D(1))
    # replays answer the original figures; another price is a conflict
    with h.nothing_written(db):
        again = ledger.settle(db, "req-a", D(3))
    assert (again.transaction_id, again.charged_usd, again.written_off_usd, again.replayed) == (
        result.transaction_id, D("0.7"), D("2.3"), True)
    with h.nothing_written(db), pytest.raises(IdempotencyConflict):
        ledger.settle(db, "req-a", D("0.7"))
    with h.nothing_written(db), pytest.raises(InsufficientFunds):
        ledger.reserve(db, user_id, "req-c", D("0.01"))


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"daily_limit_usd": D(1), "monthly_limit_usd": D(100)}, "daily_limit"),
        ({"daily_limit_usd": D(100), "monthly_limit_usd": D(1)}, "monthly_limit"),
    ],
)
def test_settle_above_the_limit_room_writes_the_rest_off(db, settings, reason):
    user_id = h.funded_user(db, 50)
    ledger.update_settings(db, user_id, **settings)
    ledger.charge(db, user_id, "spent", D("0.4"))
    ledger.reserve(db, user_id, "req-1", D("0.2"))
    result = ledger.settle(db, "req-1", D(2))
    # room = 1 - 0.4 spent = 0.6 (the call's own hold counts as part of it)
    assert (result.charged_usd, result.written_off_usd) == (D("0.6"), D("1.4"))
    assert written_off(db, "req-1")["reason"] == reason
    account = h.account_row(db, user_id)
    assert (account["day_spent_usd"], account["month_spent_usd"], account["balance_usd"]) == (D(1), D(1), D(49))


def test_limit_override_exempts_settlement_from_the_limits_not_from_the_balance(db):
    user_id = h.funded_user(db, 5)
    ledger.update_settings(db, user_id, daily_limit_usd=D(1), limit_override=True)
    ledger.reserve(db, user_id, "req-1", D("0.5"))
    result = ledger.settle(db, "req-1", D(4))
    assert (result.charged_usd, result.written_off_usd) == (D(4), D(0))
    ledger.reserve(db, user_id, "req-2", D("0.5"))
    result = ledger.settle(db, "req-2", D(3))
    assert (result.charged_usd, result.written_off_usd) == (D(1), D(2))
    assert written_off(db, "req-2")["reason"] == "insufficient_funds"


def test_an_expired_hold_settles_only_at_what_fits_now(db):
    user_id = h.funded_user(db, 1)
    ledger.reserve(db, user_id, "slow", D("0.6"))
    h.set_clock(db, NOW + dt.timedelta(minutes=20))  # the hold lapsed, and another call took the money
    ledger.reserve(db, user_id, "fast", D("0.9"))
    result = ledger.settle(db, "slow", D("0.6"))
    assert (result.charged_usd, result.written_off_usd, result.released_usd) == (D("0.1"), D("0.5"), D("0.5"))
    assert h.reservation_row(db, "slow")["status"] == "settled"
    row = written_off(db, "slow")
    assert (row["hold_usd"], row["reason"]) == (D("0.6"), "insufficient_funds")
    assert ledger.settle(db, "fast", D("0.9")).charged_usd == D("0.9")
    assert h.account_row(db, user_id)["balance_usd"] == D(0)


def test_a_hold_the_balance_no_longer_covers_never_takes_it_below_zero(db):
    user_id = h.funded_user(db, 1)
    ledger.reserve(db, user_id, "req-1", D("0.8"))
    ledger.adjust(db, user_id, D("-0.9"), "chargeback by hand", "ops", "adj-1")  # 0.1 left under a 0.8 hold
    result = ledger.settle(db, "req-1", D("0.5"))  # within the hold, but not within the balance
    assert (result.charged_usd, result.written_off_usd, result.balance_after_usd) == (D("0.1"), D("0.4"), D(0))
    assert written_off(db, "req-1")["reason"] == "insufficient_funds"
    # an account already below zero (a debit) is charged nothing more, and the whole price is written off
    ledger.top_up(db, user_id, D("0.3"), "test", "back")
    ledger.reserve(db, user_id, "req-2", D("0.3"))
    ledger.adjust(db, user_id, D("-0.5"), "another debit", "ops", "adj-2")
    nothing = ledger.settle(db, "req-2", D("0.2"))
    assert (nothing.transaction_id, nothing.charged_usd, nothing.written_off_usd) == (None, D(0), D("0.2"))
    row = written_off(db, "req-2")
    assert (row["charged_usd"], row["transaction_id"]) == (D(0), None)
    assert h.account_row(db, user_id)["balance_usd"] == D("-0.2")
    with h.nothing_written(db):
        again = ledger.settle(db, "req-2", D("0.2"))
    assert (again.transaction_id, again.charged_usd, again.written_off_usd, again.replayed) == (
        None, D(0), D("0.2"), True)


def test_nothing_is_written_off_when_billing_is_disabled(db):
    user_id = h.funded_user(db, D("0.1"))
    ledger.reserve(db, user_id, "req-1", D("0.1"))
    ledger.update_settings(db, user_id, billing_enabled=False)
    result = ledger.settle(db, "req-1", D(5))
    assert (result.charged_usd, result.written_off_usd) == (D(0), D(0))
    assert write_off_rows(db) == []


# --- complete_request ---------------------------------------------------------------------------------


def test_complete_request_without_a_hold_charges_only_what_fits(db):
    user_id = h.funded_user(db, D("0.1"))
    ledger.start_request(db, "req-1", "search", user_id)
    done = ledger.complete_request(db, "req-1", True, D("0.35"))
    assert done == ledger.Completion(
        "req-1", "completed", D("0.35"), D("0.1"), D("0.25"), done.transaction_id, True, False)
    assert h.tracking_row(db, "req-1")["price_usd"] == D("0.35")  # the price as computed
    assert h.account_row(db, user_id)["balance_usd"] == D(0)
    row = written_off(db, "req-1")
    assert (row["tool_name"], row["hold_usd"], row["price_usd"], row["charged_usd"], row["written_off_usd"]) == (
        "search", None, D("0.35"), D("0.1"), D("0.25"))
    with h.nothing_written(db):
        assert ledger.complete_request(db, "req-1", True, D("0.35")) == ledger.Completion(
            "req-1", "completed", D("0.35"), D("0.1"), D("0.25"), done.transaction_id, True, True)
    # nothing left at all: the whole price is written off, and the call is not billed
    ledger.start_request(db, "req-2", "search", user_id)
    broke = ledger.complete_request(db, "req-2", True, D("0.2"))
    assert (broke.charged_usd, broke.written_off_usd, broke.transaction_id, broke.billed) == (D(0), D("0.2"), None,
                                                                                               False)
    assert written_off(db, "req-2")["transaction_id"] is None


def test_complete_request_settles_an_over_hold_price_that_fits_in_full(db):
    ledger.set_tool_pricing(db, "llm", D(0), markup_percent=D(20), estimate_usd=D("0.01"), variable_cost=True)
    user_id = h.funded_user(db, 1)
    start = ledger.begin_request(db, "req-1", "llm", user_id)
    assert start.estimate_usd == D("0.01")
    done = ledger.complete_request(db, "req-1", True, D("0.13"))
    assert (done.price_usd, done.charged_usd, done.written_off_usd, done.billed) == (D("0.156"), D("0.156"), D(0),
                                                                                      True)
    assert write_off_rows(db) == []


# --- declared bounds: max_price_usd and per_input_char_usd ---------------------------------------------


def test_a_declared_max_price_is_the_hold_and_caps_the_charge(db):
    row = ledger.set_tool_pricing(db, "llm", D(0), markup_percent=D(20), max_price_usd=D("0.1"))
    assert (row.max_price_usd, row.per_input_char_usd) == (D("0.1"), None)
    user_id = h.funded_user(db, 10)
    assert ledger.estimate_price(db, "llm") == D("0.1")
    assert ledger.estimate_price(db, "llm", 5000) == D("0.1")  # no estimator: the size does not matter
    start = ledger.begin_request(db, "req-1", "llm", user_id, input_chars=5000)
    assert (start.estimate_usd, h.reservation_row(db, "req-1")["amount_usd"]) == (D("0.1"), D("0.1"))
    done = ledger.complete_request(db, "req-1", True, D("0.5"))  # priced 0.6: above the declared maximum
    assert (done.price_usd, done.charged_usd, done.written_off_usd) == (D("0.6"), D("0.1"), D("0.5"))
    off = written_off(db, "req-1")
    assert (off["tool_name"], off["price_usd"], off["max_price_usd"], off["charged_usd"], off["reason"]) == (
        "llm", D("0.6"), D("0.1"), D("0.1"), "max_price")
    assert h.account_row(db, user_id)["balance_usd"] == D("9.9")
    # an explicit price is capped as well
    ledger.start_request(db, "req-2", "llm", user_id)
    explicit = ledger.complete_request(db, "req-2", True, D(0), price_usd=D(2))
    assert (explicit.price_usd, explicit.charged_usd, explicit.written_off_usd) == (D(2), D("0.1"), D("1.9"))
    with h.nothing_written(db):
        again = ledger.complete_request(db, "req-1", True, D("0.5"))
    assert (again.charged_usd, again.written_off_usd, again.replayed) == (D("0.1"), D("0.5"), True)


def test_max_price_and_funds_both_bound_the_charge(db):
    ledger.set_tool_pricing(db, "llm", D(0), max_price_usd=D("0.1"))
    user_id = h.funded_user(db, D("0.15"))
    ledger.begin_request(db, "req-1", "llm", user_id)
    ledger.begin_request(db, "req-2", "llm", user_id, estimate_usd=D("0.05"))
    done = ledger.complete_request(db, "req-2", True, D(1))
    # capped at 0.1, then bounded by the hold 0.05 + the 0.15 - 0.1 - 0.05 = 0 free: 0.05
    assert (done.charged_usd, done.written_off_usd) == (D("0.05"), D("0.95"))
    row = written_off(db, "req-2")
    assert (row["price_usd"], row["max_price_usd"], row["reason"]) == (D(1), D("0.1"), "insufficient_funds")
    assert ledger.complete_request(db, "req-1", True, D("0.02")).charged_usd == D("0.02")


def test_the_per_character_estimator_sets_the_hold(db):
    ledger.set_tool_pricing(
        db, "summ", D("0.001"), markup_percent=D(20), per_input_char_usd=D("0.0000013"), max_price_usd=D("0.16"))
    # base + characters x rate x (1 + markup), rounded up to 8 decimals, at most the maximum
    assert ledger.estimate_price(db, "summ", 1000) == D("0.001") + D("0.00156")
    assert ledger.estimate_price(db, "summ", 0) == D("0.001")
    assert ledger.estimate_price(db, "summ", 200_000) == D("0.16")
    assert ledger.estimate_price(db, "summ") == D("0.16")  # size unknown: the maximum
    ledger.set_tool_pricing(db, "tiny", D(0), per_input_char_usd=D("0.000000037"))
    assert ledger.estimate_price(db, "tiny", 3) == D("0.00000012")  # 0.000000111 rounded up
    assert ledger.estimate_price(db, "tiny") == D(0)  # no size and no maximum: the configured figure
    user_id = h.funded_user(db, 1)
    start = ledger.begin_request(db, "req-1", "summ", user_id, input_chars=1000)
    assert (start.estimate_usd, start.reservation_status) == (D("0.00256"), "held")
    # the tool reported more than the estimate: the excess fits, so it is charged in full
    done = ledger.complete_request(db, "req-1", True, D("0.0025"))
    assert (done.price_usd, done.charged_usd, done.written_off_usd) == (D("0.004"), D("0.004"), D(0))


def test_set_tool_pricing_checks_the_bounds(db):
    refused_overrides: list[dict[str, Any]] = [
        {"max_price_usd": D(0)},
        {"max_price_usd": D("-1")},
        {"max_price_usd": D("0.000000001")},
        {"max_price_usd": D("0.005")},  # below the base price
        {"max_price_usd": D("0.05"), "estimate_usd": D("0.06")},  # a hold above the maximum
        {"per_input_char_usd": D("-0.000001")},
        {"per_input_char_usd": D("0.0000000000001")},  # 13 decimals
        {"per_input_char_usd": D(1000000)},
        {"per_input_char_usd": D("NaN")},
    ]
    for override in refused_overrides:
        with h.nothing_written(db), pytest.raises(InvalidAmount) as refused:
            ledger.set_tool_pricing(db, "tool", D("0.01"), **override)
        assert refused.value.detail["field"] in override, refused.value.detail
    row = ledger.set_tool_pricing(db, "tool", D("0.01"), max_price_usd=D("0.01"), per_input_char_usd=D("1E-12"))
    assert ledger.list_tool_pricing(db) == [row]
    assert (row.max_price_usd, row.per_input_char_usd) == (D("0.01"), D("1E-12"))


def test_begin_request_refuses_a_negative_input_size(db):
    user_id = h.funded_user(db, 1)
    with h.nothing_written(db), pytest.raises(InvalidArgument) as refused:
        ledger.begin_request(db, "req-1", "search", user_id, input_chars=-1)
    assert refused.value.detail["field"] == "input_chars"
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.estimate_price(db, "search", -5)


def test_input_characters_counts_every_string_value_at_any_depth():
    assert input_characters({}) == 0
    assert input_characters({"text": "привіт", "n": 12345, "flag": True, "none": None}) == 6
    assert input_characters({"a": ["xy", {"b": "z", "c": [1, 2.5, "🙂"]}], "longkey": ""}) == 4
    assert input_characters("abc") == 3


# --- the write-off view ---------------------------------------------------------------------------------


def test_written_off_calls_explains_itself_and_only_the_analyst_reads_it(db, connect, analyst_url, app_url):
    rows = db.execute(
        """
        SELECT a.attname, col_description(a.attrelid, a.attnum)
          FROM pg_attribute a
         WHERE a.attrelid = 'billing.written_off_calls'::regclass AND a.attnum > 0
         ORDER BY a.attnum
        """
    ).fetchall()
    assert [name for name, _ in rows] == [
        "request_id", "written_off_at", "user_id", "tool_name", "hold_usd", "price_usd", "max_price_usd",
        "charged_usd", "written_off_usd", "reason", "transaction_id"]
    assert all(comment for _, comment in rows), rows
    assert db.execute("SELECT obj_description('billing.written_off_calls'::regclass, 'pg_class')").fetchone() != (
        None,)
    user_id = h.funded_user(db, D("0.1"))
    ledger.reserve(db, user_id, "req-1", D("0.1"))
    ledger.settle(db, "req-1", D(1))
    analyst = connect(analyst_url)
    assert analyst.execute("SELECT request_id, written_off_usd FROM billing.written_off_calls").fetchall() == [
        ("req-1", D("0.9"))]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        connect(app_url).execute("SELECT * FROM billing.written_off_calls")


def test_verify_ledger_checks_the_write_offs(db, ledger_may_break):
    user_id = h.funded_user(db, D("0.1"))
    ledger.reserve(db, user_id, "req-1", D("0.1"))
    ledger.settle(db, "req-1", D(1))
    assert h.violations(db) == []
    db.execute("UPDATE billing.write_offs SET charged_usd = 0.2, written_off_usd = 0.8")
    assert {v.invariant for v in h.violations(db)} == {"write_offs"}
    db.execute("UPDATE billing.write_offs SET charged_usd = 0.1, written_off_usd = 0.9")
    assert h.violations(db) == []
    db.execute("DELETE FROM billing.write_offs")
    assert {v.invariant for v in h.violations(db)} == {"write_offs"}  # charged below its price, unexplained


# --- estimate_price learns from billed calls only -------------------------------------------------------


class Calls:
    """Completed calls of one tool, oldest first; the model of what billing.estimate_price reads."""

    def __init__(self, db: psycopg.Connection[Any], tool: str) -> None:
        self.db = db
        self.tool = tool
        self.billed: list[tuple[uuid.UUID, Decimal]] = []
        self.seq = 0

    def _request(self) -> str:
        self.seq += 1
        return f"{self.tool}-{self.seq}"

    def billed_by(self, user_id: uuid.UUID, prices: list[Decimal]) -> None:
        for price in prices:
            request_id = self._request()
            ledger.start_request(self.db, request_id, self.tool, user_id)
            done = ledger.complete_request(self.db, request_id, True, D(0), price_usd=price)
            assert done.billed and done.charged_usd == price, done
            self.billed.append((user_id, price))

    def unbilled(self, prices: list[Decimal], user_id: uuid.UUID | None = None, client_key: str | None = None) -> None:
        for price in prices:
            request_id = self._request()
            ledger.start_request(self.db, request_id, self.tool, user_id, client_key)
            done = ledger.complete_request(self.db, request_id, True, D(0), price_usd=price)
            assert not done.billed

    def samples(self) -> list[Decimal]:
        """The newest 1000 billed calls, at most the newest 5 of each user, the newest 200 of those."""
        taken: dict[uuid.UUID, int] = {}
        kept: list[Decimal] = []
        for user_id, price in reversed(self.billed[-1000:]):
            if taken.get(user_id, 0) < 5:
                taken[user_id] = taken.get(user_id, 0) + 1
                kept.append(price)
        return kept[:200]

    def p95(self) -> Decimal | None:
        samples = sorted(self.samples())
        if len(samples) < 100:
            return None
        return samples[math.ceil(D("0.95") * len(samples)) - 1]


def _rich_users(db: psycopg.Connection[Any], n: int) -> list[uuid.UUID]:
    users = [h.funded_user(db, 1000) for _ in range(n)]
    for user_id in users:
        ledger.update_settings(db, user_id, daily_limit_usd=D(10000), monthly_limit_usd=D(10000))
    return users


def _spread(calls: Calls, users: list[uuid.UUID], per_user: int) -> None:
    """Each user makes `per_user` billed calls; prices 0.001, 0.002, … in order of arrival."""
    n = 0
    for user_id in users:
        prices = [D(n + k + 1) / 1000 for k in range(per_user)]
        n += per_user
        calls.billed_by(user_id, prices)


def test_estimate_ignores_anonymous_api_key_and_unbilled_calls(db):
    ledger.set_tool_pricing(db, "llm", D(0), estimate_usd=D("0.001"), variable_cost=True)
    calls = Calls(db, "llm")
    _spread(calls, _rich_users(db, 30), 4)  # 120 billed samples
    expected = calls.p95()
    assert expected == D("0.114")
    assert ledger.estimate_price(db, "llm") == expected
    calls.unbilled([D(50)] * 300)  # anonymous callers inflating
    assert ledger.estimate_price(db, "llm") == expected
    calls.unbilled([D("0.00000001")] * 300)  # ... or deflating
    calls.unbilled([D(50)] * 50, client_key="bot")  # an API key bound to no user
    disabled = h.funded_user(db, 1000)
    ledger.update_settings(db, disabled, billing_enabled=False)
    calls.unbilled([D(50)] * 50, user_id=disabled)  # an account whose calls are tracked, not charged
    assert ledger.estimate_price(db, "llm") == expected


def test_one_billed_user_moves_the_estimate_at_most_five_ranks(db):
    ledger.set_tool_pricing(db, "llm", D(0), estimate_usd=D("0.001"), variable_cost=True)
    calls = Calls(db, "llm")
    _spread(calls, _rich_users(db, 30), 4)
    honest = sorted(calls.samples())
    rank = math.ceil(D("0.95") * len(honest)) - 1
    [inflater, deflater] = _rich_users(db, 2)
    calls.billed_by(inflater, [D(9)] * 50)
    estimate = ledger.estimate_price(db, "llm")
    assert estimate == calls.p95()
    assert honest[rank] <= estimate <= honest[rank + 5] < D(9)
    calls.billed_by(deflater, [D("0.00000001")] * 50)
    estimate = ledger.estimate_price(db, "llm")
    assert estimate == calls.p95()
    assert D("0.00000001") < honest[rank - 5] <= estimate


def test_the_estimate_needs_100_samples_and_one_user_flooding_the_window_only_switches_it_off(db):
    ledger.set_tool_pricing(db, "llm", D(0), estimate_usd=D("0.002"), variable_cost=True)
    calls = Calls(db, "llm")
    users = _rich_users(db, 20)
    _spread(calls, users[:19], 5)  # 95 samples: too few, the configured figure alone
    assert calls.p95() is None
    assert ledger.estimate_price(db, "llm") == D("0.002")
    calls.billed_by(users[19], [D("0.5")] * 5)  # 100 samples
    assert ledger.estimate_price(db, "llm") == calls.p95() == D("0.095")
    # one user's 1000 newest calls fill the whole window: 5 samples left, so the configured figure again
    [flooder] = _rich_users(db, 1)
    calls.billed_by(flooder, [D("0.00000001")] * 1000)
    assert calls.p95() is None
    assert ledger.estimate_price(db, "llm") == D("0.002")



# --- migration 0008 -------------------------------------------------------------------------------------

OLD_SIGNATURES = {
    "settle": "p_request_id text, p_actual_usd numeric, p_description text, p_metadata jsonb",
    "complete_request": "p_request_id text, p_success boolean, p_total_cost_usd numeric, p_cost_breakdown jsonb,"
    " p_execution_time_ms integer, p_error text, p_price_usd numeric, p_description text",
    "begin_request": "p_request_id text, p_tool_name text, p_user_id uuid, p_client_key text,"
    " p_estimate_usd numeric, p_ttl interval",
    "estimate_price": "p_tool_name text",
    "set_tool_pricing": "p_tool_name text, p_base_price_usd numeric, p_markup_percent numeric,"
    " p_estimate_usd numeric, p_variable_cost boolean, p_description text",
}


def test_migration_0008_replaces_the_old_signatures_and_rolls_back_alone(db_url, conn):
    from api.ops import migrate
    from tests.conftest import DB_DIR
    from tests.helpers import catalog_snapshot, migration_ids

    before = catalog_snapshot(db_url)
    later = [m for m in migration_ids() if m > "0008_price_bounds"]  # 0009 ledger chain, ...: first, and back
    assert migrate.downgrade(db_url, DB_DIR, "0007_payment_review") == [*later[::-1], "0008_price_bounds"]
    gone = conn.execute(
        "SELECT to_regclass('billing.write_offs'), to_regclass('billing.written_off_calls'),"
        " to_regclass('billing.cost_tracking_billed_by_tool'), to_regclass('billing.cost_tracking_completed_by_tool')"
    ).fetchone()
    assert gone == (None, None, None, "billing.cost_tracking_completed_by_tool")
    # A database of the earlier code has the functions with their old signatures and results.
    for name, arguments in OLD_SIGNATURES.items():
        conn.execute(f"CREATE FUNCTION billing.{name}({arguments}) RETURNS integer LANGUAGE sql AS 'SELECT 1'")
    assert migrate.upgrade(db_url, DB_DIR) == ["0008_price_bounds", *later]
    overloads = conn.execute(
        "SELECT proname, count(*) FROM pg_proc WHERE pronamespace = 'billing'::regnamespace"
        " AND proname = ANY(%s) GROUP BY 1 ORDER BY 1",
        (list(OLD_SIGNATURES),),
    ).fetchall()
    assert overloads == [(name, 1) for name in sorted(OLD_SIGNATURES)]
    assert catalog_snapshot(db_url) == before
