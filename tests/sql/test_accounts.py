"""Accounts and the read side of the billing SQL API: ensure_account, update_settings, summary, history,
check_balance and check_limits, called through api.ledger.sync against a real PostgreSQL database.
"""

from __future__ import annotations

import re
import threading
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from api.ledger import db as apidb
from api.ledger import sync as ledger
from api.ledger.errors import DailyLimitExceeded, InvalidAmount, InvalidArgument, UnknownUser
from tests import helpers as h
from tests.helpers import at


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)



# --- ensure_account -------------------------------------------------------------------------------


def test_ensure_account_creates_one_user_with_the_original_defaults(db):
    before = h.counts(db)
    user_id = ledger.ensure_account(db, "sub-1", "a@example.com", "Ada")
    after = h.counts(db)
    assert isinstance(user_id, uuid.UUID)
    assert after["users"] == before["users"] + 1
    assert after["user_billing"] == before["user_billing"] + 1
    assert after["billing_transactions"] == before["billing_transactions"]
    user = db.execute(
        "SELECT external_id, email, name FROM billing.users WHERE id = %s", (user_id,)
    ).fetchone()
    assert user == ("sub-1", "a@example.com", "Ada")
    row = h.account_row(db, user_id)
    assert row["balance_usd"] == Decimal(0)
    assert row["balance_uah"] == Decimal(0)
    assert row["held_usd"] == Decimal(0)
    assert row["daily_limit_usd"] == Decimal(10)
    assert row["monthly_limit_usd"] == Decimal(100)
    assert row["total_spent_usd"] == Decimal(0)
    assert row["total_requests"] == 0
    assert row["is_active"] is True
    assert row["billing_enabled"] is True
    assert row["limit_override"] is False


def test_ensure_account_returns_the_same_id_on_repeat_and_creates_nothing_more(db):
    first = ledger.ensure_account(db, "sub-repeat")
    with h.nothing_written(db):
        again = ledger.ensure_account(db, "sub-repeat")
        again_with_nulls = ledger.ensure_account(db, "sub-repeat", None, None)
    assert first == again == again_with_nulls
    other = ledger.ensure_account(db, "sub-other")
    assert other != first
    assert h.counts(db)["user_billing"] == 2


def test_ensure_account_updates_email_and_name_and_null_keeps_them(db):
    user_id = ledger.ensure_account(db, "sub-2", "old@example.com", "Old Name")

    def stored() -> tuple[Any, ...]:
        row = db.execute("SELECT email, name FROM billing.users WHERE id = %s", (user_id,)).fetchone()
        assert row is not None
        return tuple(row)

    assert ledger.ensure_account(db, "sub-2", "new@example.com") == user_id
    assert stored() == ("new@example.com", "Old Name")
    assert ledger.ensure_account(db, "sub-2", None, "New Name") == user_id
    assert stored() == ("new@example.com", "New Name")
    assert ledger.ensure_account(db, "sub-2", "", "   ") == user_id
    assert stored() == ("new@example.com", "New Name")


def test_ensure_account_refuses_a_bad_subject_and_writes_nothing(db):
    for subject in (None, "", "   ", "\t\n", "x" * 256, "bad\nsubject"):
        with h.nothing_written(db), pytest.raises(InvalidArgument) as refused:
            ledger.ensure_account(db, subject)  # type: ignore[arg-type]
        assert refused.value.detail["field"] == "external_id", repr(subject)


def test_ensure_account_accepts_a_255_character_subject_and_refuses_long_email_and_name(db):
    user_id = ledger.ensure_account(db, "s" * 255)
    assert ledger.ensure_account(db, "s" * 255) == user_id
    with h.nothing_written(db), pytest.raises(InvalidArgument) as refused:
        ledger.ensure_account(db, "sub-3", "e" * 321)
    assert refused.value.detail["field"] == "email"
    with h.nothing_written(db), pytest.raises(InvalidArgument) as refused:
        ledger.ensure_account(db, "sub-3", None, "n" * 201)
    assert refused.value.detail["field"] == "name"


def test_ensure_account_concurrent_first_calls_get_one_account(db, db_url):
    # The first caller's transaction is still open when the second one arrives: the second must
    # wait for it and then return the same id, not fail and not create a second account.
    first = apidb.connect(db_url, autocommit=False)
    try:
        first_id = ledger.ensure_account(first, "sub-race")
        results: list[Any] = []

        def second_call() -> None:
            with apidb.connect(db_url) as second:
                try:
                    results.append(ledger.ensure_account(second, "sub-race"))
                except Exception as error:
                    results.append(error)

        thread = threading.Thread(target=second_call)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive(), "the second call should wait for the first transaction"
        first.commit()
        thread.join(timeout=10)
        assert not thread.is_alive()
    finally:
        first.close()
    assert results == [first_id]
    row = db.execute(
        "SELECT count(*) FROM billing.users u JOIN billing.user_billing b ON b.user_id = u.id"
        " WHERE u.external_id = 'sub-race'"
    ).fetchone()
    assert row == (1,)


# --- update_settings ------------------------------------------------------------------------------


def test_update_settings_changes_each_field_and_null_keeps_the_others(db):
    user_id = h.new_user(db)
    settings = ledger.update_settings(db, user_id, daily_limit_usd=Decimal("2.5"))
    assert settings == ledger.AccountSettings(user_id, Decimal("2.5"), Decimal(100), True, True, False)
    settings = ledger.update_settings(db, user_id, monthly_limit_usd=Decimal("0.00000001"))
    assert settings == ledger.AccountSettings(user_id, Decimal("2.5"), Decimal("0.00000001"), True, True, False)
    settings = ledger.update_settings(db, user_id, is_active=False)
    assert settings == ledger.AccountSettings(user_id, Decimal("2.5"), Decimal("0.00000001"), False, True, False)
    settings = ledger.update_settings(db, user_id, billing_enabled=False)
    assert settings == ledger.AccountSettings(user_id, Decimal("2.5"), Decimal("0.00000001"), False, False, False)
    settings = ledger.update_settings(db, user_id, limit_override=True)
    assert settings == ledger.AccountSettings(user_id, Decimal("2.5"), Decimal("0.00000001"), False, False, True)
    settings = ledger.update_settings(db, user_id)
    assert settings == ledger.AccountSettings(user_id, Decimal("2.5"), Decimal("0.00000001"), False, False, True)
    settings = ledger.update_settings(
        db, user_id, daily_limit_usd=Decimal("999999999999.99999999"), monthly_limit_usd=0,
        is_active=True, billing_enabled=True, limit_override=False,
    )
    assert settings == ledger.AccountSettings(user_id, Decimal("999999999999.99999999"), Decimal(0), True, True, False)
    row = h.account_row(db, user_id)
    assert (row["daily_limit_usd"], row["monthly_limit_usd"]) == (Decimal("999999999999.99999999"), Decimal(0))
    assert (row["is_active"], row["billing_enabled"], row["limit_override"]) == (True, True, False)


def test_update_settings_zero_daily_limit_refuses_every_charge(db):
    user_id = h.funded_user(db, 5)
    ledger.update_settings(db, user_id, daily_limit_usd=0)
    with h.nothing_written(db), pytest.raises(DailyLimitExceeded):
        ledger.charge(db, user_id, "r-zero-limit", Decimal("0.00000001"))


def test_update_settings_refuses_bad_limits_and_writes_nothing(db):
    user_id = h.new_user(db)
    bad = [value for value in h.BAD_NON_NEGATIVE_AMOUNTS if value is not None]  # None means "keep"
    assert len(bad) >= 7
    for value in bad:
        with h.nothing_written(db), pytest.raises(InvalidAmount) as refused:
            ledger.update_settings(db, user_id, daily_limit_usd=value)
        assert refused.value.detail["field"] == "daily_limit_usd", value
        with h.nothing_written(db), pytest.raises(InvalidAmount) as refused:
            ledger.update_settings(db, user_id, monthly_limit_usd=value, is_active=False)
        assert refused.value.detail["field"] == "monthly_limit_usd", value


def test_unknown_users_are_refused_by_every_account_function(db):
    h.new_user(db)
    stranger = uuid.uuid4()
    with h.nothing_written(db):
        for call in (
            lambda: ledger.update_settings(db, stranger, daily_limit_usd=1),
            lambda: ledger.update_settings(db, stranger),
            lambda: ledger.summary(db, stranger),
            lambda: ledger.history(db, stranger),
            lambda: ledger.check_balance(db, stranger, 1),
            lambda: ledger.check_limits(db, stranger, 1),
        ):
            with pytest.raises(UnknownUser) as refused:
                call()
            assert refused.value.detail["user_id"] == str(stranger)


# --- summary --------------------------------------------------------------------------------------

SUMMARY_KEYS = {
    "user_id", "balance_usd", "balance_uah", "held_usd", "available_usd", "total_spent_usd", "total_spent_uah",
    "total_requests", "limits", "usage", "is_active", "billing_enabled", "limit_override", "last_request_at",
    "cooling_usd", "cooling_until",
}
MONEY_KEYS = {
    "balance_usd", "balance_uah", "held_usd", "available_usd", "total_spent_usd", "total_spent_uah", "cooling_usd",
}


def test_summary_of_a_new_account(db):
    user_id = h.new_user(db)
    summary = ledger.summary(db, user_id)
    assert set(summary) == SUMMARY_KEYS
    assert set(summary["limits"]) == {"daily_usd", "monthly_usd"}
    assert set(summary["usage"]) == {"today_usd", "month_usd"}
    assert summary["user_id"] == str(user_id)
    for key in MONEY_KEYS:
        assert type(summary[key]) is Decimal and summary[key] == 0, key
    for nested in ("limits", "usage"):
        for key, value in summary[nested].items():
            assert type(value) is Decimal, f"{nested}.{key} is {type(value).__name__}"
    assert summary["limits"] == {"daily_usd": Decimal(10), "monthly_usd": Decimal(100)}
    assert summary["usage"] == {"today_usd": Decimal(0), "month_usd": Decimal(0)}
    assert summary["total_requests"] == 0
    assert (summary["is_active"], summary["billing_enabled"], summary["limit_override"]) == (True, True, False)
    assert summary["last_request_at"] is None


def test_summary_figures_after_money_moved(db):
    h.set_clock(db, at(2030, 1, 15, 10, 20, 30))
    ledger.set_exchange_rate(db, Decimal("41.5"))
    user_id = h.funded_user(db, 10)
    ledger.charge(db, user_id, "r1", Decimal("0.0003"))
    h.set_clock(db, at(2030, 1, 15, 11, 0, 5))
    ledger.charge(db, user_id, "r2", Decimal("1.5"))
    ledger.reserve(db, user_id, "r3", Decimal("2"))
    summary = ledger.summary(db, user_id)
    assert summary["balance_usd"] == Decimal("8.4997")
    assert summary["held_usd"] == Decimal(2)
    assert summary["available_usd"] == Decimal("6.4997")
    assert summary["total_spent_usd"] == Decimal("1.5003")
    assert summary["total_requests"] == 2
    assert summary["usage"] == {"today_usd": Decimal("1.5003"), "month_usd": Decimal("1.5003")}
    # UAH at the recorded rate, rounded to 2 decimals per transaction: 415.00 - 0.01 - 62.25
    assert summary["balance_uah"] == Decimal("352.74")
    assert summary["total_spent_uah"] == Decimal("62.26")
    for key in MONEY_KEYS:
        assert type(summary[key]) is Decimal, key
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", summary["last_request_at"])
    assert summary["last_request_at"] == "2030-01-15T11:00:05Z"


def test_summary_usage_rolls_over_without_writing(db):
    h.set_clock(db, at(2030, 1, 31, 12))
    user_id = h.funded_user(db, 10)
    ledger.charge(db, user_id, "r1", Decimal(3))
    h.set_clock(db, at(2030, 2, 1, 0, 0, 1))
    with h.nothing_written(db):
        summary = ledger.summary(db, user_id)
    assert summary["usage"] == {"today_usd": Decimal(0), "month_usd": Decimal(0)}
    assert summary["total_spent_usd"] == Decimal(3)
    assert summary["last_request_at"] == "2030-01-31T12:00:00Z"


def test_summary_last_request_at_is_utc_whatever_the_time_zone(db):
    ledger.configure(db, time_zone="Europe/Kyiv")
    h.set_clock(db, at(2030, 7, 1, 22, 30))  # 01:30 on 2 July in Kyiv
    user_id = h.funded_user(db, 10)
    ledger.charge(db, user_id, "r1", Decimal(1))
    assert ledger.summary(db, user_id)["last_request_at"] == "2030-07-01T22:30:00Z"


# --- history --------------------------------------------------------------------------------------


def _busy_account(db) -> tuple[uuid.UUID, list[int]]:
    """An account with a top-up, 6 charges, a refund and an adjustment, each a minute apart."""
    user_id = h.new_user(db)
    minute = 0

    def tick() -> None:
        nonlocal minute
        h.set_clock(db, at(2030, 3, 10, 9, minute))
        minute += 1

    ids: list[int] = []
    tick()
    ids.append(ledger.top_up(db, user_id, Decimal(50), "test", "pay-1").transaction_id)
    for n in range(6):
        tick()
        tx = ledger.charge(db, user_id, f"req-{n}", Decimal("0.25") * (n + 1)).transaction_id
        assert tx is not None
        ids.append(tx)
    tick()
    ids.append(ledger.refund(db, ids[1], Decimal("0.1"), "partial refund", "refund-1").transaction_id)
    tick()
    ids.append(ledger.adjust(db, user_id, Decimal("-0.05"), "correction", "admin", "adj-1").transaction_id)
    return user_id, ids


def test_history_is_newest_first_with_every_field(db):
    user_id, ids = _busy_account(db)
    other = h.funded_user(db, 7)  # another user's rows never show
    ledger.charge(db, other, "other-req", Decimal(1))
    rows = ledger.history(db, user_id)
    assert [row.id for row in rows] == sorted(ids, reverse=True)
    assert {row.user_id for row in rows} == {user_id}
    by_type = {row.type: row for row in rows}
    assert set(by_type) == {"topup", "charge", "refund", "adjustment"}
    topup = by_type["topup"]
    assert (topup.amount_usd, topup.balance_before_usd, topup.balance_after_usd) == (
        Decimal(50), Decimal(0), Decimal(50))
    assert (topup.payment_provider, topup.payment_id, topup.currency) == ("test", "pay-1", "USD")
    charge0 = rows[-2]
    assert (charge0.type, charge0.request_id, charge0.amount_usd) == ("charge", "req-0", Decimal("-0.25"))
    assert charge0.balance_after_usd == Decimal("49.75")
    refund = by_type["refund"]
    assert (refund.refund_of, refund.amount_usd, refund.description) == (ids[1], Decimal("0.1"), "partial refund")
    adjustment = by_type["adjustment"]
    assert (adjustment.actor, adjustment.amount_usd) == ("admin", Decimal("-0.05"))
    assert rows[0].balance_after_usd == h.account_row(db, user_id)["balance_usd"]
    assert all(isinstance(row.metadata, dict) for row in rows)
    assert rows[0].created_at == at(2030, 3, 10, 9, 8)


def test_history_type_filter_and_time_window(db):
    user_id, ids = _busy_account(db)
    charges = ledger.history(db, user_id, type="charge")
    assert [row.id for row in charges] == sorted(ids[1:7], reverse=True)
    assert [row.id for row in ledger.history(db, user_id, type="topup")] == [ids[0]]
    assert [row.id for row in ledger.history(db, user_id, type="refund")] == [ids[7]]
    assert [row.id for row in ledger.history(db, user_id, type="adjustment")] == [ids[8]]
    # [from, to): rows at minutes 2, 3 and 4
    window = ledger.history(db, user_id, from_=at(2030, 3, 10, 9, 2), to=at(2030, 3, 10, 9, 5))
    assert [row.id for row in window] == [ids[4], ids[3], ids[2]]
    assert ledger.history(db, user_id, from_=at(2030, 3, 10, 9, 2), to=at(2030, 3, 10, 9, 2)) == []
    since = ledger.history(db, user_id, from_=at(2030, 3, 10, 9, 7))
    assert [row.id for row in since] == [ids[8], ids[7]]
    until = ledger.history(db, user_id, type="charge", to=at(2030, 3, 10, 9, 2))
    assert [row.id for row in until] == [ids[1]]


def test_history_keyset_pages_equal_offset_pages(db):
    user_id, ids = _busy_account(db)
    by_offset = [ledger.history(db, user_id, limit=2, offset=offset) for offset in range(0, 10, 2)]
    by_keyset: list[list[ledger.Transaction]] = []
    before_id = None
    while True:
        page = ledger.history(db, user_id, limit=2, before_id=before_id)
        by_keyset.append(page)
        if not page:
            break
        before_id = page[-1].id
    assert [len(page) for page in by_offset] == [2, 2, 2, 2, 1]
    assert by_keyset[:-1] == by_offset
    assert by_keyset[-1] == []
    assert [row.id for page in by_keyset for row in page] == sorted(ids, reverse=True)
    # keyset and a type filter together
    charges = ledger.history(db, user_id, type="charge", limit=3, before_id=ids[5])
    assert [row.id for row in charges] == [ids[4], ids[3], ids[2]]


def test_history_limit_and_offset_bounds(db):
    user_id, ids = _busy_account(db)
    assert len(ledger.history(db, user_id, limit=1)) == 1
    assert len(ledger.history(db, user_id, limit=1000)) == len(ids)
    assert ledger.history(db, user_id, offset=100000) == []
    for limit, offset in ((0, 0), (1001, 0), (-1, 0), (50, -1), (50, 100001)):
        with pytest.raises(InvalidArgument):
            ledger.history(db, user_id, limit=limit, offset=offset)
    for null_page in ((None, 0), (50, None)):
        with pytest.raises(psycopg.Error) as refused:
            db.execute("SELECT * FROM billing.history(%s, p_limit => %s, p_offset => %s)", (user_id, *null_page))
        assert refused.value.sqlstate == "BL009"
    with pytest.raises(InvalidArgument) as bad_type:
        ledger.history(db, user_id, type="payment")
    assert bad_type.value.detail["field"] == "type"
    with pytest.raises(InvalidArgument):
        ledger.history(db, user_id, from_=at(2030, 3, 11), to=at(2030, 3, 10))


def test_history_of_a_new_user_is_empty(db):
    assert ledger.history(db, h.new_user(db)) == []


# --- check_balance --------------------------------------------------------------------------------


def test_check_balance_figures(db):
    user_id = h.funded_user(db, 10)
    ledger.reserve(db, user_id, "hold-1", Decimal(3))
    with h.nothing_written(db):
        short = ledger.check_balance(db, user_id, Decimal(8))
        exact = ledger.check_balance(db, user_id, Decimal(7))
        zero = ledger.check_balance(db, user_id, 0)
        tiny_short = ledger.check_balance(db, user_id, Decimal("7.00000001"))
    assert short == ledger.BalanceCheck(False, Decimal(10), Decimal(3), Decimal(7), Decimal(1))
    assert exact == ledger.BalanceCheck(True, Decimal(10), Decimal(3), Decimal(7), Decimal(0))
    assert zero.sufficient is True and zero.shortfall_usd == 0
    assert tiny_short.sufficient is False and tiny_short.shortfall_usd == Decimal("0.00000001")


def test_check_balance_ignores_expired_holds_without_reaping_them(db):
    h.set_clock(db, at(2030, 5, 5, 12))
    user_id = h.funded_user(db, 10)
    ledger.reserve(db, user_id, "hold-1", Decimal(4))
    h.set_clock(db, at(2030, 5, 5, 12, 15))  # the default 15-minute hold has lapsed
    with h.nothing_written(db):
        check = ledger.check_balance(db, user_id, Decimal(10))
    assert check == ledger.BalanceCheck(True, Decimal(10), Decimal(0), Decimal(10), Decimal(0))
    assert h.reservation_row(db, "hold-1")["status"] == "held"


def test_check_balance_with_a_negative_balance(db):
    user_id = h.funded_user(db, 1)
    ledger.adjust(db, user_id, Decimal(-3), "debit", "admin", "adj-neg")
    check = ledger.check_balance(db, user_id, Decimal("0.5"))
    assert check == ledger.BalanceCheck(False, Decimal(-2), Decimal(0), Decimal(-2), Decimal("2.5"))


def test_check_balance_and_check_limits_refuse_bad_costs(db):
    user_id = h.funded_user(db, 1)
    for value in h.BAD_NON_NEGATIVE_AMOUNTS:
        with pytest.raises(InvalidAmount) as refused:
            ledger.check_balance(db, user_id, value)  # type: ignore[arg-type]
        assert refused.value.detail["field"] == "cost"
        with pytest.raises(InvalidAmount):
            ledger.check_limits(db, user_id, value)  # type: ignore[arg-type]


# --- check_limits ---------------------------------------------------------------------------------


def test_check_limits_daily_figures_and_reset_at_next_midnight_utc(db):
    h.set_clock(db, at(2030, 1, 15, 10, 30))
    user_id = h.funded_user(db, 50)
    ledger.charge(db, user_id, "r1", Decimal(4))
    ledger.reserve(db, user_id, "hold", Decimal("1.5"))
    with h.nothing_written(db):
        fits = ledger.check_limits(db, user_id, Decimal("4.5"))
        too_much = ledger.check_limits(db, user_id, Decimal("4.50000001"))
    assert fits == ledger.LimitCheck(
        allowed=True, limit_type="daily", spent_usd=Decimal(4), held_usd=Decimal("1.5"), limit_usd=Decimal(10),
        remaining_usd=Decimal("4.5"), resets_at=at(2030, 1, 16), override=False,
    )
    assert too_much.allowed is False
    assert too_much.limit_type == "daily"
    assert too_much.resets_at == at(2030, 1, 16)


def test_check_limits_monthly_figures_and_reset_on_the_first_of_next_month(db):
    h.set_clock(db, at(2030, 12, 31, 23, 59, 59))
    user_id = h.funded_user(db, 50)
    ledger.update_settings(db, user_id, monthly_limit_usd=Decimal(12))
    h.set_clock(db, at(2030, 12, 30, 12))
    ledger.charge(db, user_id, "r1", Decimal(5))
    h.set_clock(db, at(2030, 12, 31, 23, 59, 59))
    ledger.charge(db, user_id, "r2", Decimal(5))
    check = ledger.check_limits(db, user_id, Decimal(2))
    # day room 5, month room 2: the monthly limit is the one with less room
    assert check == ledger.LimitCheck(
        allowed=True, limit_type="monthly", spent_usd=Decimal(10), held_usd=Decimal(0), limit_usd=Decimal(12),
        remaining_usd=Decimal(2), resets_at=at(2031, 1, 1), override=False,
    )
    refused = ledger.check_limits(db, user_id, Decimal(3))
    assert (refused.allowed, refused.limit_type, refused.remaining_usd) == (False, "monthly", Decimal(2))
    daily = ledger.check_limits(db, user_id, Decimal(6))  # past both: the daily limit is named first
    assert (daily.allowed, daily.limit_type, daily.resets_at) == (False, "daily", at(2031, 1, 1))


def test_check_limits_resets_at_in_a_configured_time_zone(db):
    ledger.configure(db, time_zone="Europe/Kyiv")
    h.set_clock(db, at(2030, 1, 15, 21, 30))  # 23:30 Kyiv (UTC+2)
    user_id = h.funded_user(db, 5)
    daily = ledger.check_limits(db, user_id, Decimal(1))
    assert daily.limit_type == "daily"
    assert daily.resets_at == at(2030, 1, 15, 22)  # Kyiv midnight
    monthly = ledger.check_limits(db, user_id, Decimal(11))
    assert monthly.limit_type == "daily"  # daily refuses first
    ledger.update_settings(db, user_id, monthly_limit_usd=Decimal(1))
    monthly = ledger.check_limits(db, user_id, Decimal("0.5"))
    assert monthly.limit_type == "monthly"
    assert monthly.resets_at == at(2030, 1, 31, 22)  # 1 February 00:00 Kyiv


def test_check_limits_of_a_new_account_and_with_the_override(db):
    h.set_clock(db, at(2030, 6, 1, 8))
    user_id = h.new_user(db)
    check = ledger.check_limits(db, user_id, Decimal(10))
    assert (check.allowed, check.limit_type, check.spent_usd, check.remaining_usd) == (
        True, "daily", Decimal(0), Decimal(10))
    assert ledger.check_limits(db, user_id, Decimal("10.00000001")).allowed is False
    ledger.update_settings(db, user_id, limit_override=True)
    overridden = ledger.check_limits(db, user_id, Decimal(500))
    assert overridden.allowed is True
    assert overridden.override is True
    assert overridden.limit_type == "daily"
    assert overridden.limit_usd == Decimal(10)


# --- the suite's own guards -----------------------------------------------------------------------


@pytest.fixture
def ledger_may_break():
    """Opts a test out of the after-test verify_ledger() check (it corrupts the ledger on purpose)."""


def test_the_suites_guards_can_fail(db, ledger_may_break):
    user_id = h.funded_user(db, 5)
    with pytest.raises(AssertionError, match="user_billing"), h.nothing_written(db):
        ledger.charge(db, user_id, "req-1", Decimal(1))
    db.execute("UPDATE billing.user_billing SET balance_usd = balance_usd + 1 WHERE user_id = %s", (user_id,))
    with pytest.raises(AssertionError, match="balance"):
        h.assert_ledger_consistent(db)
