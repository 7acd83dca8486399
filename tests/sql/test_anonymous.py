"""The anonymous policy in the ledger (billing.begin_anonymous_call), against a real PostgreSQL database.

* Per tool, callers without credentials are denied (BL040, saying how to sign in), served free, or served
  up to N calls a day per client network (BL041 past it, with the limit and when it renews). The default
  follows the price: denied when the tool can cost money, free when it cannot or has no price.
* Anonymous calls are aggregated, never tracked one by one: one billing.anonymous_usage row per (day,
  tool, client network), no cost_tracking row, no hold; a refusal writes nothing at all.
* The quota is exact with many real connections racing; the day is the configured time zone's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from api.ledger import db as apidb
from api.ledger import sync as ledger
from api.ledger.errors import AnonymousDenied, AnonymousQuotaExceeded, BillingError, InvalidArgument
from tests import helpers as h
from tests.helpers import at

D = Decimal
NOW = at(2031, 5, 14, 12)
IP = ipaddress.ip_address("203.0.113.7")


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)


@pytest.fixture(autouse=True)
def _pinned_clock(db):
    h.set_clock(db, NOW)


def usage(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM billing.anonymous_usage ORDER BY day, tool_name, client_network").fetchall()


def policy_of(db: psycopg.Connection[Any], tool: str) -> tuple[str | None, int | None, str]:
    row = db.execute(
        "SELECT anonymous_policy, anonymous_daily_calls, anonymous_access FROM billing.tool_pricing"
        " WHERE tool_name = %s",
        (tool,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


@pytest.mark.parametrize(
    ("pricing", "expected"),
    [
        ({"base_price_usd": D("0.02")}, "deny"),
        ({"base_price_usd": D(0)}, "free"),
        ({"base_price_usd": D(0), "markup_percent": D(50)}, "deny"),
        ({"base_price_usd": D(0), "variable_cost": True}, "deny"),
        ({"base_price_usd": D(0), "max_price_usd": D("0.5")}, "deny"),
        ({"base_price_usd": D(0), "per_input_char_usd": D("0.000001")}, "deny"),
        ({"base_price_usd": D(0), "per_input_char_usd": D(0)}, "free"),
    ],
    ids=["base", "zero", "markup", "variable", "max-price", "per-char", "per-char-zero"],
)
def test_the_default_denies_a_tool_that_can_cost_money_and_serves_a_free_one(db, pricing, expected):
    row = ledger.set_tool_pricing(db, "t", **pricing)
    assert (row.anonymous_policy, row.anonymous_daily_calls, row.anonymous_access) == (None, None, expected)
    assert row.anonymous_label == f"{expected} (default)"


def test_the_default_follows_a_price_change(db):
    ledger.set_tool_pricing(db, "t", D(0))
    assert policy_of(db, "t")[2] == "free"
    ledger.set_tool_pricing(db, "t", D("0.01"))
    assert policy_of(db, "t")[2] == "deny"


@pytest.mark.parametrize(
    ("spec", "stored"),
    [
        ("deny", ("deny", None, "deny")),
        ("free", ("free", None, "free")),
        ("free:5/day", ("free", 5, "free:5/day")),
        (" FREE : 12 / day ", ("free", 12, "free:12/day")),
        ("free:999999999/day", ("free", 999999999, "free:999999999/day")),
    ],
)
def test_set_tool_pricing_stores_the_anonymous_policy(db, spec, stored):
    row = ledger.set_tool_pricing(db, "t", D("0.02"), anonymous=spec)
    assert (row.anonymous_policy, row.anonymous_daily_calls, row.anonymous_access) == stored
    assert policy_of(db, "t") == stored
    assert ledger.list_tool_pricing(db)[0].anonymous_access == stored[2]


@pytest.mark.parametrize(
    "spec",
    ["", "  ", "allow", "free:0/day", "free:-1/day", "free:1000000000/day", "free:5/hour", "free:5", "deny:5/day"],
)
def test_an_unknown_anonymous_policy_is_refused_and_nothing_is_written(db, spec):
    with h.nothing_written(db), pytest.raises(InvalidArgument) as refused:
        ledger.set_tool_pricing(db, "t", D("0.02"), anonymous=spec)
    assert refused.value.detail["field"] == "anonymous"
    assert "deny, free or free:N/day" in refused.value.message


def test_the_table_refuses_a_daily_cap_without_free(db):
    ledger.set_tool_pricing(db, "t", D(0))
    for policy in ("deny", None):
        with pytest.raises(psycopg.errors.CheckViolation):
            db.execute(
                "UPDATE billing.tool_pricing SET anonymous_policy = %s, anonymous_daily_calls = 5"
                " WHERE tool_name = 't'",
                (policy,),
            )


def test_a_denied_tool_refuses_with_a_sign_in_hint_and_writes_nothing(db):
    ledger.set_tool_pricing(db, "priced", D("0.02"))
    with h.nothing_written(db), pytest.raises(AnonymousDenied) as refused:
        ledger.begin_anonymous_call(db, "priced", IP)
    error = refused.value
    assert (error.status, error.code) == (401, "anonymous_denied")
    assert "Sign-in required" in error.message and "priced" in error.message
    assert error.hint is not None and "API key" in error.hint and "JWT" in error.hint
    assert error.detail == {"tool_name": "priced", "anonymous": "deny"}


def test_a_free_tool_is_counted_in_one_row_per_day_tool_and_network(db):
    ledger.set_tool_pricing(db, "priced", D("0.02"), anonymous="free")
    for _ in range(3):
        call = ledger.begin_anonymous_call(db, "priced", IP)
    assert (call.usage_day, call.access, call.calls_today, call.daily_calls) == (dt.date(2031, 5, 14), "free", 3, None)
    assert call.resets_at == at(2031, 5, 15)
    ledger.begin_anonymous_call(db, "unpriced", IP)  # no price row: free
    rows = usage(db)
    assert [(r["tool_name"], str(r["client_network"]), r["calls"], r["failures"]) for r in rows] == [
        ("priced", "203.0.113.7", 3, 0),
        ("unpriced", "203.0.113.7", 1, 0),
    ]
    assert rows[0]["first_call_at"] == rows[0]["last_call_at"] == NOW
    assert h.counts(db)["cost_tracking"] == 0 and h.counts(db)["reservations"] == 0


def test_ipv6_callers_are_counted_by_their_64_and_unknown_addresses_together(db):
    ledger.set_tool_pricing(db, "t", D(0), anonymous="free:2/day")
    ledger.begin_anonymous_call(db, "t", ipaddress.ip_address("2001:db8:1:2::1"))
    second = ledger.begin_anonymous_call(db, "t", ipaddress.ip_address("2001:db8:1:2:ffff::9"))
    assert (str(second.client_network), second.calls_today) == ("2001:db8:1:2::/64", 2)
    with pytest.raises(AnonymousQuotaExceeded):
        ledger.begin_anonymous_call(db, "t", ipaddress.ip_address("2001:db8:1:2:abcd::1"))
    other = ledger.begin_anonymous_call(db, "t", ipaddress.ip_address("2001:db8:1:3::1"))
    assert other.calls_today == 1
    unknown = ledger.begin_anonymous_call(db, "t", None)
    assert str(unknown.client_network) == "0.0.0.0/0"


def test_the_network_prefixes_are_abuse_policy_figures(db):
    ledger.set_abuse_policy(db, "anonymous.ipv4_prefix", 24, "test")
    ledger.set_tool_pricing(db, "t", D(0))
    call = ledger.begin_anonymous_call(db, "t", IP)
    assert str(call.client_network) == "203.0.113.0/24"
    ledger.set_abuse_policy(db, "anonymous.ipv4_prefix", 99, "test")  # clamped to the family's range
    assert str(ledger.begin_anonymous_call(db, "t", IP).client_network) == "203.0.113.7"


def test_the_quota_serves_n_calls_then_refuses_with_the_limit_and_the_reset(db):
    ledger.set_tool_pricing(db, "t", D("0.02"), anonymous="free:3/day")
    answers = [ledger.begin_anonymous_call(db, "t", IP).calls_today for _ in range(3)]
    assert answers == [1, 2, 3]
    with h.nothing_written(db), pytest.raises(AnonymousQuotaExceeded) as refused:
        ledger.begin_anonymous_call(db, "t", IP)
    error = refused.value
    assert (error.status, error.code) == (429, "anonymous_quota_exceeded")
    assert error.detail["daily_calls"] == 3 and error.detail["client_network"] == "203.0.113.7"
    assert dt.datetime.fromisoformat(error.detail["resets_at"]) == at(2031, 5, 15)
    assert "3 free calls a day" in error.message and "2031-05-15T00:00:00Z" in error.message
    assert error.hint is not None and "API key" in error.hint
    # another address has its own count
    assert ledger.begin_anonymous_call(db, "t", ipaddress.ip_address("198.51.100.1")).calls_today == 1


def test_the_quota_renews_at_midnight_of_the_configured_time_zone(db):
    ledger.configure(db, time_zone="Europe/Kyiv")  # UTC+3 in May: the day turns at 21:00 UTC
    ledger.set_tool_pricing(db, "t", D(0), anonymous="free:1/day")
    h.set_clock(db, at(2031, 5, 14, 20, 59, 59))
    first = ledger.begin_anonymous_call(db, "t", IP)
    assert (first.usage_day, first.resets_at) == (dt.date(2031, 5, 14), at(2031, 5, 14, 21))
    with pytest.raises(AnonymousQuotaExceeded) as refused:
        ledger.begin_anonymous_call(db, "t", IP)
    assert dt.datetime.fromisoformat(refused.value.detail["resets_at"]) == at(2031, 5, 14, 21)
    assert refused.value.detail["time_zone"] == "Europe/Kyiv"
    h.set_clock(db, at(2031, 5, 14, 21))
    renewed = ledger.begin_anonymous_call(db, "t", IP)
    assert (renewed.usage_day, renewed.calls_today) == (dt.date(2031, 5, 15), 1)
    assert [(r["day"], r["calls"]) for r in usage(db)] == [(dt.date(2031, 5, 14), 1), (dt.date(2031, 5, 15), 1)]


def test_twenty_concurrent_calls_on_a_quota_of_five_serve_exactly_five(db, connect, metering_url):
    ledger.set_tool_pricing(db, "t", D("0.02"), anonymous="free:5/day")
    connections = []
    for _ in range(20):
        connection = connect(metering_url)
        apidb.configure(connection)
        connections.append(connection)
    barrier = threading.Barrier(len(connections))
    served: list[int] = []
    refused: list[BillingError] = []
    lock = threading.Lock()

    def call(connection: psycopg.Connection[Any]) -> None:
        barrier.wait()
        try:
            answer = ledger.begin_anonymous_call(connection, "t", IP)
        except AnonymousQuotaExceeded as error:
            with lock:
                refused.append(error)
        else:
            with lock:
                served.append(answer.calls_today)

    threads = [threading.Thread(target=call, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(served) == [1, 2, 3, 4, 5]
    assert len(refused) == 15
    assert [r["calls"] for r in usage(db)] == [5]


def test_a_failure_is_marked_on_the_row_of_the_day_the_call_began(db):
    ledger.set_tool_pricing(db, "t", D(0), anonymous="free")
    call = ledger.begin_anonymous_call(db, "t", IP)
    h.set_clock(db, at(2031, 5, 15, 0, 0, 1))  # the tool ran past midnight
    assert ledger.record_anonymous_failure(db, call.usage_day, "t", call.client_network) is True
    # never more failures than calls
    assert ledger.record_anonymous_failure(db, call.usage_day, "t", call.client_network) is False
    assert ledger.record_anonymous_failure(db, dt.date(2031, 5, 15), "t", call.client_network) is False
    assert [(r["day"], r["calls"], r["failures"]) for r in usage(db)] == [(dt.date(2031, 5, 14), 1, 1)]


def test_two_thousand_anonymous_calls_are_one_row_and_no_tracking(db):
    """The attack of issue 14, at the ledger: 2,000 calls of a free tool from one address are one row; of a
    priced one, nothing."""
    ledger.set_tool_pricing(db, "priced", D("0.02"))
    ledger.set_tool_pricing(db, "free", D(0))
    for _ in range(2000):
        ledger.begin_anonymous_call(db, "free", IP)
    with h.nothing_written(db):
        for _ in range(2000):
            with pytest.raises(AnonymousDenied):
                ledger.begin_anonymous_call(db, "priced", IP)
    assert [(r["tool_name"], r["calls"]) for r in usage(db)] == [("free", 2000)]
    assert h.counts(db)["cost_tracking"] == 0


def test_prune_deletes_earlier_days_and_never_today(db):
    ledger.set_tool_pricing(db, "t", D(0))
    for day in (12, 13, 14):
        h.set_clock(db, at(2031, 5, day, 12))
        ledger.begin_anonymous_call(db, "t", IP)
    assert ledger.prune_anonymous_usage(db, dt.date(2031, 5, 13)) == 1
    assert ledger.prune_anonymous_usage(db, dt.date(2031, 6, 1)) == 1  # capped at today
    assert [r["day"] for r in usage(db)] == [dt.date(2031, 5, 14)]
    with pytest.raises(InvalidArgument):
        ledger.prune_anonymous_usage(db, None)  # type: ignore[arg-type]


def test_the_view_explains_itself_and_only_the_analyst_and_operator_read_it(db, connect, analyst_url, metering_url):
    ledger.set_tool_pricing(db, "t", D(0), anonymous="free:1/day")
    ledger.begin_anonymous_call(db, "t", IP)
    ledger.begin_anonymous_call(db, "unpriced", IP)
    columns = db.execute(
        """SELECT a.attname, col_description(a.attrelid, a.attnum) FROM pg_attribute a
            WHERE a.attrelid = 'billing.anonymous_usage_daily'::regclass AND a.attnum > 0"""
    ).fetchall()
    assert columns and all(comment for _, comment in columns)
    analyst = connect(analyst_url)
    rows = analyst.execute(
        "SELECT tool_name, calls, anonymous_policy, daily_calls, quota_reached FROM billing.anonymous_usage_daily"
        " ORDER BY tool_name"
    ).fetchall()
    assert rows == [("t", 1, "free:1/day", 1, True), ("unpriced", 1, "free", None, False)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        connect(analyst_url).execute("SELECT * FROM billing.anonymous_usage")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        connect(metering_url).execute("SELECT * FROM billing.anonymous_usage_daily")
