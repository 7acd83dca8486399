"""The money-moving functions of the billing SQL API, one at a time, against a real PostgreSQL database:
reserve, settle, release, charge, top_up, refund, adjust, start_request and complete_request.

For each: the happy path with exact Decimal figures, every refusal (and that a refusal writes nothing:
every billing table is compared before and after), idempotent replay, conflicting replay, and the
rules that involve time (hold expiry, day/month windows) driven by the test clock in billing.config.
After every test, billing.verify_ledger() must report nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import ROUND_HALF_UP, Decimal

import psycopg
import pytest

from api.ledger import sync as ledger
from api.ledger.errors import (
    AccountInactive,
    DailyLimitExceeded,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    InvalidState,
    MonthlyLimitExceeded,
    NoExchangeRate,
    RefundExceedsCharge,
    UnknownRequest,
    UnknownTransaction,
    UnknownUser,
    UnsupportedCurrency,
)
from tests import helpers as h
from tests.helpers import at

D = Decimal


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)



def _half_up(value: Decimal, places: int) -> Decimal:
    """PostgreSQL's round(numeric, n): half away from zero."""
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


# --- top_up ---------------------------------------------------------------------------------------


def test_top_up_usd_credits_exactly_and_replays(db):
    user_id = h.new_user(db)
    result = ledger.top_up(db, user_id, D("10.12345678"), "stripe", "pi_1", description="first")
    assert result.replayed is False
    assert (result.amount_usd, result.balance_before_usd, result.balance_after_usd) == (D("10.12345678"), D(0),
                                                                                       D("10.12345678"))
    assert (result.currency, result.amount_uah, result.exchange_rate) == ("USD", None, None)
    [row] = h.ledger_rows(db, user_id)
    assert row["id"] == result.transaction_id
    assert (row["type"], row["amount_usd"], row["payment_provider"], row["payment_id"]) == (
        "topup", D("10.12345678"), "stripe", "pi_1")
    assert row["description"] == "first"
    account = h.account_row(db, user_id)
    assert account["balance_usd"] == D("10.12345678")
    assert account["total_spent_usd"] == 0 and account["total_requests"] == 0

    with h.nothing_written(db):
        again = ledger.top_up(db, user_id, D("10.12345678"), "stripe", "pi_1")
    assert again.replayed is True
    assert again.transaction_id == result.transaction_id
    assert (again.balance_before_usd, again.balance_after_usd) == (D(0), D("10.12345678"))

    second = ledger.top_up(db, user_id, D("0.00000001"), "stripe", "pi_2")
    assert second.balance_after_usd == D("10.12345679")
    # the same payment id under another provider is another payment
    third = ledger.top_up(db, user_id, D(1), "paypal", "pi_1")
    assert third.replayed is False and third.balance_after_usd == D("11.12345679")


def test_top_up_conflicting_replays_write_nothing(db):
    user_id = h.new_user(db)
    other = h.new_user(db)
    ledger.set_exchange_rate(db, D(40))
    ledger.top_up(db, user_id, D(5), "stripe", "pi_1")
    for call in (
        lambda: ledger.top_up(db, user_id, D("5.00000001"), "stripe", "pi_1"),
        lambda: ledger.top_up(db, other, D(5), "stripe", "pi_1"),
        lambda: ledger.top_up(db, user_id, D(5), "stripe", "pi_1", currency="UAH"),
    ):
        with h.nothing_written(db), pytest.raises(IdempotencyConflict) as refused:
            call()
        assert refused.value.detail["payment_id"] == "pi_1"


def test_top_up_uah_at_the_recorded_rate(db):
    h.set_clock(db, at(2030, 4, 1, 9))
    ledger.set_exchange_rate(db, D("41.25"))
    user_id = h.new_user(db)
    result = ledger.top_up(db, user_id, D("1000.50"), "mono", "uah-1", currency="UAH")
    expected_usd = _half_up(D("1000.50") / D("41.25"), 8)
    assert expected_usd == D("24.25454545")
    assert result.replayed is False
    assert (result.currency, result.amount_uah, result.exchange_rate) == ("UAH", D("1000.50"), D("41.25"))
    assert (result.amount_usd, result.balance_after_usd) == (expected_usd, expected_usd)
    account = h.account_row(db, user_id)
    assert (account["balance_usd"], account["balance_uah"]) == (expected_usd, D("1000.50"))
    with h.nothing_written(db):
        again = ledger.top_up(db, user_id, D("1000.5"), "mono", "uah-1", currency="UAH")
    assert (again.replayed, again.transaction_id) == (True, result.transaction_id)
    # a new rate applies to new transactions; the old row keeps its rate
    h.set_clock(db, at(2030, 4, 2, 9))
    ledger.set_exchange_rate(db, D(40))
    later = ledger.top_up(db, user_id, D(400), "mono", "uah-2", currency="UAH")
    assert (later.amount_usd, later.exchange_rate) == (D(10), D(40))
    assert [row["exchange_rate"] for row in h.ledger_rows(db, user_id)] == [D("41.25"), D(40)]
    # a USD top-up records its UAH equivalent at the rate in force
    usd = ledger.top_up(db, user_id, D("2.5"), "stripe", "usd-1")
    assert (usd.amount_uah, usd.exchange_rate) == (D(100), D(40))


def test_top_up_currency_refusals_write_nothing(db):
    user_id = h.new_user(db)
    with h.nothing_written(db), pytest.raises(NoExchangeRate):
        ledger.top_up(db, user_id, D(100), "mono", "uah-1", currency="UAH")
    with h.nothing_written(db), pytest.raises(UnsupportedCurrency) as refused:
        ledger.top_up(db, user_id, D(100), "stripe", "eur-1", currency="EUR")
    assert refused.value.detail["currency"] == "EUR"
    ledger.set_exchange_rate(db, D(41))
    with h.nothing_written(db), pytest.raises(InvalidAmount):
        ledger.top_up(db, user_id, D("100.123"), "mono", "uah-2", currency="UAH")
    # a rate is recorded when it takes effect: a future one is refused, a backfilled past one is
    # history and does not replace the newer rate in force
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.set_exchange_rate(db, D(42), valid_from=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    ledger.set_exchange_rate(db, D(30), valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=3650))
    assert ledger.top_up(db, user_id, D(41), "mono", "uah-3", currency="UAH").exchange_rate == D(41)


def test_top_up_argument_refusals_write_nothing(db):
    user_id = h.new_user(db)
    for amount in h.BAD_POSITIVE_AMOUNTS:
        with h.nothing_written(db), pytest.raises(InvalidAmount):
            ledger.top_up(db, user_id, amount, "stripe", "pi_bad")  # type: ignore[arg-type]
    for payment_id in h.BAD_IDENTIFIERS:
        with h.nothing_written(db), pytest.raises(InvalidArgument) as refused:
            ledger.top_up(db, user_id, D(1), "stripe", payment_id)
        assert refused.value.detail["field"] == "payment_id"
    for provider in ("", "   ", "p" * 51):
        with h.nothing_written(db), pytest.raises(InvalidArgument) as refused:
            ledger.top_up(db, user_id, D(1), provider, "pi_ok")
        assert refused.value.detail["field"] == "payment_provider"
    with h.nothing_written(db), pytest.raises(UnknownUser):
        ledger.top_up(db, uuid.uuid4(), D(1), "stripe", "pi_ok")
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.top_up(db, user_id, D(1), "stripe", "pi_ok", description="d" * 1001)
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.top_up(db, user_id, D(1), "stripe", "pi_ok", metadata=[1])  # type: ignore[arg-type]
    assert ledger.top_up(db, user_id, D(1), "s" * 50, "p" * 200).replayed is False


def test_top_up_uah_worth_more_than_the_usd_range_is_an_invalid_amount(db):
    # 999999999999 UAH at 0.5 UAH per USD is 1999999999998 USD: past what numeric(20,8) holds. The
    # refusal must be a clear InvalidAmount, not a raw "numeric field overflow" (SQLSTATE 22003).
    user_id = h.new_user(db)
    ledger.set_exchange_rate(db, D("0.5"))
    with h.nothing_written(db), pytest.raises(InvalidAmount):
        ledger.top_up(db, user_id, D("999999999999"), "mono", "uah-huge", currency="UAH")


def test_top_up_past_the_largest_balance_is_an_invalid_amount(db):
    # Each top-up is below 1e12, but together they pass the largest balance numeric(20,8) holds.
    user_id = h.funded_user(db, D("999999999999"))
    with h.nothing_written(db), pytest.raises(InvalidAmount):
        ledger.top_up(db, user_id, D(1), "stripe", "pi_overflow")


# --- charge ---------------------------------------------------------------------------------------


def test_charge_takes_a_micro_amount_exactly(db):
    h.set_clock(db, at(2030, 1, 15, 12))
    user_id = h.funded_user(db, 1)
    result = ledger.charge(db, user_id, "req-1", D("0.00030000"), description="tiny", metadata={"tool": "t"})
    assert result == ledger.Charge(result.transaction_id, "req-1", "charged", D("0.0003"), D(1), D("0.9997"), False)
    row = h.ledger_rows(db, user_id)[-1]
    assert (row["type"], row["amount_usd"], row["request_id"], row["description"]) == (
        "charge", D("-0.0003"), "req-1", "tiny")
    assert row["metadata"] == {"tool": "t"}
    assert (row["balance_before_usd"], row["balance_after_usd"]) == (D(1), D("0.9997"))
    account = h.account_row(db, user_id)
    assert account["balance_usd"] == D("0.9997")
    assert account["total_spent_usd"] == D("0.0003")
    assert account["total_requests"] == 1
    assert (account["day_spent_usd"], account["month_spent_usd"]) == (D("0.0003"), D("0.0003"))
    assert account["last_request_at"] == at(2030, 1, 15, 12)
    # 8 decimals, the smallest amount there is
    smallest = ledger.charge(db, user_id, "req-2", D("0.00000001"))
    assert smallest.balance_after_usd == D("0.99969999")


def test_charge_replays_and_conflicts(db):
    user_id = h.funded_user(db, 10)
    other = h.funded_user(db, 10)
    first = ledger.charge(db, user_id, "req-1", D("1.25"))
    ledger.top_up(db, user_id, D(5), "stripe", "pi_more")  # the balance moves on
    with h.nothing_written(db):
        again = ledger.charge(db, user_id, "req-1", D("1.25"))
    assert again == ledger.Charge(first.transaction_id, "req-1", "charged", D("1.25"), D(10), D("8.75"), True)
    for call in (
        lambda: ledger.charge(db, user_id, "req-1", D("1.26")),
        lambda: ledger.charge(db, other, "req-1", D("1.25")),
    ):
        with h.nothing_written(db), pytest.raises(IdempotencyConflict) as refused:
            call()
        assert refused.value.detail["request_id"] == "req-1"
    assert h.account_row(db, user_id)["total_requests"] == 1


def test_charge_refuses_insufficient_funds_with_figures(db):
    user_id = h.funded_user(db, 5)
    ledger.reserve(db, user_id, "hold", D(2))
    with h.nothing_written(db), pytest.raises(InsufficientFunds) as refused:
        ledger.charge(db, user_id, "req-1", D("3.00000001"))
    detail = refused.value.detail
    assert detail["required_usd"] == D("3.00000001")
    assert detail["balance_usd"] == D(5)
    assert detail["held_usd"] == D(2)
    assert detail["available_usd"] == D(3)
    assert detail["shortfall_usd"] == D("0.00000001")
    assert ledger.charge(db, user_id, "req-2", D(3)).balance_after_usd == D(2)


def test_charge_refuses_past_the_daily_limit(db):
    h.set_clock(db, at(2030, 1, 15, 12))
    user_id = h.funded_user(db, 50)
    ledger.charge(db, user_id, "req-1", D(6))
    ledger.reserve(db, user_id, "hold", D(3))
    with h.nothing_written(db), pytest.raises(DailyLimitExceeded) as refused:
        ledger.charge(db, user_id, "req-2", D("1.00000001"))
    detail = refused.value.detail
    assert detail["limit"] == "daily"
    assert (detail["limit_usd"], detail["spent_usd"], detail["held_usd"]) == (D(10), D(6), D(3))
    assert (detail["required_usd"], detail["remaining_usd"]) == (D("1.00000001"), D(1))
    assert dt.datetime.fromisoformat(detail["resets_at"]) == at(2030, 1, 16)
    ledger.charge(db, user_id, "req-3", D(1))  # exactly up to the limit is allowed


def test_charge_refuses_past_the_monthly_limit(db):
    h.set_clock(db, at(2030, 1, 15, 12))
    user_id = h.funded_user(db, 50)
    ledger.update_settings(db, user_id, daily_limit_usd=D(100), monthly_limit_usd=D(20))
    ledger.charge(db, user_id, "req-1", D(15))
    with h.nothing_written(db), pytest.raises(MonthlyLimitExceeded) as refused:
        ledger.charge(db, user_id, "req-2", D(6))
    assert refused.value.detail["limit"] == "monthly"
    assert refused.value.detail["limit_usd"] == D(20)
    assert refused.value.detail["spent_usd"] == D(15)


def test_charge_refuses_an_inactive_account_and_an_unknown_user(db):
    user_id = h.funded_user(db, 5)
    paid = ledger.charge(db, user_id, "paid-before", D(1))
    assert paid.transaction_id is not None
    ledger.reserve(db, user_id, "running", D(1))
    ledger.update_settings(db, user_id, is_active=False)
    with h.nothing_written(db), pytest.raises(AccountInactive):
        ledger.charge(db, user_id, "req-1", D(1))
    with h.nothing_written(db), pytest.raises(UnknownUser):
        ledger.charge(db, uuid.uuid4(), "req-1", D(1))
    # deactivation stops new spending only: a running call settles, money may still come in
    assert ledger.settle(db, "running", D("0.5")).charged_usd == D("0.5")
    assert ledger.top_up(db, user_id, D(2), "stripe", "pi_inactive").balance_after_usd == D("5.5")
    assert ledger.refund(db, paid.transaction_id, D(1), "sorry", "rf-inactive").balance_after_usd == D("6.5")


def test_charge_refuses_bad_arguments_and_writes_nothing(db):
    user_id = h.funded_user(db, 5)
    for amount in h.BAD_POSITIVE_AMOUNTS:
        with h.nothing_written(db), pytest.raises(InvalidAmount) as refused:
            ledger.charge(db, user_id, "req-1", amount)  # type: ignore[arg-type]
        assert refused.value.detail["field"] == "amount_usd"
    for request_id in h.BAD_IDENTIFIERS:
        with h.nothing_written(db), pytest.raises(InvalidArgument) as refused_argument:
            ledger.charge(db, user_id, request_id, D(1))
        assert refused_argument.value.detail["field"] == "request_id"
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.charge(db, user_id, "req-1", D(1), metadata=["not", "an", "object"])  # type: ignore[arg-type]
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.charge(db, user_id, "req-1", D(1), metadata={"blob": "x" * 17000})
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.charge(db, user_id, "req-1", D(1), description="d" * 1001)
    assert ledger.charge(db, user_id, "r" * 200, D(1)).status == "charged"


def test_charge_and_reserve_with_billing_disabled_are_not_billed(db):
    user_id = h.funded_user(db, 5)
    ledger.update_settings(db, user_id, billing_enabled=False)
    with h.nothing_written(db):
        result = ledger.charge(db, user_id, "req-1", D(1))
        hold = ledger.reserve(db, user_id, "req-2", D(50))
    assert result == ledger.Charge(None, "req-1", "not_billed", D(0), D(5), D(5), False)
    assert (hold.status, hold.reservation_id, hold.amount_usd, hold.replayed, hold.available_usd) == (
        "not_billed", None, D(0), False, D(5))


def test_limit_override_passes_the_limits_but_not_the_balance(db):
    user_id = h.funded_user(db, 50)
    ledger.update_settings(db, user_id, limit_override=True)
    assert ledger.charge(db, user_id, "req-1", D(20)).status == "charged"  # daily limit is 10
    assert ledger.reserve(db, user_id, "hold-1", D(25)).status == "held"
    with h.nothing_written(db), pytest.raises(InsufficientFunds):
        ledger.charge(db, user_id, "req-2", D("5.00000001"))
    with h.nothing_written(db), pytest.raises(InsufficientFunds):
        ledger.reserve(db, user_id, "hold-2", D("5.00000001"))
    ledger.update_settings(db, user_id, limit_override=False)
    with h.nothing_written(db), pytest.raises(DailyLimitExceeded):
        ledger.charge(db, user_id, "req-3", D(1))


# --- reserve --------------------------------------------------------------------------------------


def test_reserve_holds_against_the_balance(db):
    h.set_clock(db, at(2030, 2, 3, 10))
    user_id = h.funded_user(db, 10)
    hold = ledger.reserve(db, user_id, "req-1", D("2.5"))
    assert hold == ledger.Reservation(hold.reservation_id, "req-1", "held", D("2.5"), at(2030, 2, 3, 10, 15),
                                      D("7.5"), False)
    row = h.reservation_row(db, "req-1")
    assert (row["user_id"], row["amount_usd"], row["status"], row["transaction_id"]) == (
        user_id, D("2.5"), "held", None)
    account = h.account_row(db, user_id)
    assert (account["balance_usd"], account["held_usd"]) == (D(10), D("2.5"))
    assert h.ledger_rows(db, user_id)[-1]["type"] == "topup"  # a hold is not a ledger entry
    custom = ledger.reserve(db, user_id, "req-2", D(1), ttl=dt.timedelta(hours=2))
    assert custom.expires_at == at(2030, 2, 3, 12)
    assert custom.available_usd == D("6.5")

    with h.nothing_written(db):
        again = ledger.reserve(db, user_id, "req-1", D("2.5"))
    assert again == ledger.Reservation(hold.reservation_id, "req-1", "held", D("2.5"), at(2030, 2, 3, 10, 15),
                                       D("6.5"), True)


def test_reserve_conflicting_replays_write_nothing(db):
    user_id = h.funded_user(db, 10)
    other = h.funded_user(db, 10)
    ledger.reserve(db, user_id, "req-1", D(2))
    for call in (
        lambda: ledger.reserve(db, user_id, "req-1", D(3)),
        lambda: ledger.reserve(db, other, "req-1", D(2)),
    ):
        with h.nothing_written(db), pytest.raises(IdempotencyConflict):
            call()


def test_reserve_refusals_write_nothing(db):
    h.set_clock(db, at(2030, 2, 3, 10))
    user_id = h.funded_user(db, 20)
    ledger.reserve(db, user_id, "hold-1", D(6))
    with h.nothing_written(db), pytest.raises(DailyLimitExceeded) as daily:
        ledger.reserve(db, user_id, "hold-2", D("4.00000001"))  # holds count against the limit
    assert daily.value.detail["limit"] == "daily"
    assert daily.value.detail["held_usd"] == D(6)
    ledger.update_settings(db, user_id, daily_limit_usd=D(100), monthly_limit_usd=D(8))
    with h.nothing_written(db), pytest.raises(MonthlyLimitExceeded) as monthly:
        ledger.reserve(db, user_id, "hold-2", D(3))
    assert monthly.value.detail["limit"] == "monthly"
    ledger.update_settings(db, user_id, monthly_limit_usd=D(100))
    with h.nothing_written(db), pytest.raises(InsufficientFunds) as funds:
        ledger.reserve(db, user_id, "hold-2", D("14.00000001"))  # 20 - 6 held
    assert funds.value.detail["available_usd"] == D(14)
    ledger.update_settings(db, user_id, is_active=False)
    with h.nothing_written(db), pytest.raises(AccountInactive):
        ledger.reserve(db, user_id, "hold-2", D(1))
    ledger.update_settings(db, user_id, is_active=True)
    with h.nothing_written(db), pytest.raises(UnknownUser):
        ledger.reserve(db, uuid.uuid4(), "hold-2", D(1))
    for amount in h.BAD_POSITIVE_AMOUNTS:
        with h.nothing_written(db), pytest.raises(InvalidAmount):
            ledger.reserve(db, user_id, "hold-2", amount)  # type: ignore[arg-type]
    for request_id in h.BAD_IDENTIFIERS:
        with h.nothing_written(db), pytest.raises(InvalidArgument):
            ledger.reserve(db, user_id, request_id, D(1))
    for ttl in (dt.timedelta(0), dt.timedelta(seconds=-1), dt.timedelta(days=1, microseconds=1)):
        with h.nothing_written(db), pytest.raises(InvalidArgument):
            ledger.reserve(db, user_id, "hold-2", D(1), ttl=ttl)
    assert ledger.reserve(db, user_id, "hold-2", D(4)).status == "held"


# --- settle ---------------------------------------------------------------------------------------


def test_settle_below_the_hold_charges_the_actual_price_and_frees_the_rest(db):
    h.set_clock(db, at(2030, 2, 3, 10))
    user_id = h.funded_user(db, 10)
    ledger.reserve(db, user_id, "req-1", D(2))
    h.set_clock(db, at(2030, 2, 3, 10, 1))
    result = ledger.settle(db, "req-1", D("0.75"), description="tool x", metadata={"units": 3})
    assert result == ledger.Settlement(result.transaction_id, "req-1", "settled", D("0.75"), D(0), D("1.25"),
                                       D("9.25"), False)
    row = h.reservation_row(db, "req-1")
    assert (row["status"], row["transaction_id"], row["resolved_at"]) == (
        "settled", result.transaction_id, at(2030, 2, 3, 10, 1))
    tx = h.ledger_rows(db, user_id)[-1]
    assert (tx["id"], tx["type"], tx["amount_usd"], tx["request_id"], tx["metadata"]) == (
        result.transaction_id, "charge", D("-0.75"), "req-1", {"units": 3})
    account = h.account_row(db, user_id)
    assert (account["balance_usd"], account["held_usd"], account["day_spent_usd"]) == (D("9.25"), 0, D("0.75"))
    assert account["total_requests"] == 1

    with h.nothing_written(db):
        again = ledger.settle(db, "req-1", D("0.75"))
    assert again == ledger.Settlement(result.transaction_id, "req-1", "settled", D("0.75"), D(0), D("1.25"), D("9.25"),
                                      True)
    with h.nothing_written(db), pytest.raises(IdempotencyConflict):
        ledger.settle(db, "req-1", D("0.76"))


def test_settle_overrun_is_charged_only_as_far_as_the_balance_and_limits_cover_it(db):
    # The settlement policy (db/README.md, "Overrun"): above the hold, only what is free is charged; the
    # rest is written off (tests/sql/test_price_bounds.py has the figures of every bound). The balance never
    # goes below zero through a settlement.
    user_id = h.funded_user(db, 1)
    ledger.reserve(db, user_id, "req-1", D("0.5"))
    result = ledger.settle(db, "req-1", D(3))
    assert (result.charged_usd, result.written_off_usd, result.released_usd, result.balance_after_usd) == (
        D(1), D(2), D(0), D(0))
    account = h.account_row(db, user_id)
    assert (account["balance_usd"], account["held_usd"], account["total_spent_usd"]) == (D(0), 0, D(1))
    with h.nothing_written(db), pytest.raises(InsufficientFunds) as refused:
        ledger.reserve(db, user_id, "req-2", D("0.01"))
    assert refused.value.detail["available_usd"] == D(0)
    ledger.top_up(db, user_id, D("0.01"), "stripe", "pi_back")
    assert ledger.reserve(db, user_id, "req-2", D("0.01")).status == "held"
    # past the daily limit: charged up to the limit, and the next call is refused by the limit
    rich = h.funded_user(db, 50)
    ledger.reserve(db, rich, "rich-1", D(9))
    settled = ledger.settle(db, "rich-1", D(12))
    assert (settled.charged_usd, settled.written_off_usd) == (D(10), D(2))
    assert h.account_row(db, rich)["day_spent_usd"] == D(10)
    with h.nothing_written(db), pytest.raises(DailyLimitExceeded):
        ledger.charge(db, rich, "rich-2", D("0.00000001"))


def test_settle_at_zero_frees_the_hold_and_charges_nothing(db):
    user_id = h.funded_user(db, 5)
    ledger.reserve(db, user_id, "req-1", D(2))
    result = ledger.settle(db, "req-1", D(0))
    assert (result.transaction_id, result.status, result.charged_usd, result.released_usd) == (
        None, "settled", D(0), D(2))
    assert h.reservation_row(db, "req-1")["status"] == "settled"
    assert [row["type"] for row in h.ledger_rows(db, user_id)] == ["topup"]
    assert h.account_row(db, user_id)["held_usd"] == 0
    with h.nothing_written(db):
        assert ledger.settle(db, "req-1", D(0)).replayed is True
    with h.nothing_written(db), pytest.raises(IdempotencyConflict):
        ledger.settle(db, "req-1", D(1))


def test_settle_refusals_write_nothing(db):
    user_id = h.funded_user(db, 5)
    with h.nothing_written(db), pytest.raises(UnknownRequest):
        ledger.settle(db, "no-such-request", D(1))
    ledger.reserve(db, user_id, "req-1", D(1))
    for amount in h.BAD_NON_NEGATIVE_AMOUNTS:
        with h.nothing_written(db), pytest.raises(InvalidAmount) as refused:
            ledger.settle(db, "req-1", amount)  # type: ignore[arg-type]
        assert refused.value.detail["field"] == "actual_usd"
    for request_id in h.BAD_IDENTIFIERS:
        with h.nothing_written(db), pytest.raises(InvalidArgument):
            ledger.settle(db, request_id, D(1))
    ledger.release(db, "req-1")
    with h.nothing_written(db), pytest.raises(InvalidState):
        ledger.settle(db, "req-1", D(1))


def test_settle_with_billing_disabled_frees_the_hold_and_replays(db):
    # The hold was taken while billing was on; billing was then turned off for the user. The settlement
    # charges nothing, and a retry of the very same settle call must replay it, not conflict.
    user_id = h.funded_user(db, 10)
    ledger.reserve(db, user_id, "req-1", D(2))
    ledger.update_settings(db, user_id, billing_enabled=False)
    result = ledger.settle(db, "req-1", D(1))
    assert (result.transaction_id, result.charged_usd, result.written_off_usd, result.released_usd,
            result.replayed) == (None, D(0), D(0), D(2), False)
    assert h.account_row(db, user_id)["balance_usd"] == D(10)
    with h.nothing_written(db):
        again = ledger.settle(db, "req-1", D(1))
    assert (again.transaction_id, again.charged_usd, again.replayed) == (None, D(0), True)


def test_settle_of_a_request_already_charged_directly_names_the_right_conflict(db):
    user_id = h.funded_user(db, 10)
    ledger.reserve(db, user_id, "req-1", D(1))
    ledger.charge(db, user_id, "req-1", D(1))
    with h.nothing_written(db), pytest.raises(IdempotencyConflict) as refused:
        ledger.settle(db, "req-1", D(1))
    # It is the same user's charge: the refusal must not claim another user has it.
    assert refused.value.detail.get("same_user") is not False
    assert "another user" not in refused.value.message


# --- release, expiry ------------------------------------------------------------------------------


def test_release_frees_the_hold_and_replays(db):
    user_id = h.funded_user(db, 10)
    ledger.reserve(db, user_id, "req-1", D(4))
    result = ledger.release(db, "req-1")
    assert result == ledger.Release("req-1", "released", D(4), False)
    assert h.reservation_row(db, "req-1")["status"] == "released"
    account = h.account_row(db, user_id)
    assert (account["balance_usd"], account["held_usd"]) == (D(10), 0)
    assert len(h.ledger_rows(db, user_id)) == 1
    with h.nothing_written(db):
        assert ledger.release(db, "req-1") == ledger.Release("req-1", "released", D(4), True)
    with h.nothing_written(db), pytest.raises(IdempotencyConflict):
        ledger.reserve(db, user_id, "req-1", D(5))
    with h.nothing_written(db):
        assert ledger.reserve(db, user_id, "req-1", D(4)).status == "released"


def test_release_refusals_write_nothing(db):
    user_id = h.funded_user(db, 10)
    with h.nothing_written(db), pytest.raises(UnknownRequest):
        ledger.release(db, "no-such-request")
    for request_id in h.BAD_IDENTIFIERS:
        with h.nothing_written(db), pytest.raises(InvalidArgument):
            ledger.release(db, request_id)
    ledger.reserve(db, user_id, "req-1", D(1))
    ledger.settle(db, "req-1", D(1))
    with h.nothing_written(db), pytest.raises(InvalidState):
        ledger.release(db, "req-1")


def test_expired_holds_are_reaped_by_the_next_call(db):
    h.set_clock(db, at(2030, 2, 3, 10))
    user_id = h.funded_user(db, 10)
    ledger.reserve(db, user_id, "req-1", D(6))
    h.set_clock(db, at(2030, 2, 3, 10, 14, 59))
    with h.nothing_written(db), pytest.raises(InsufficientFunds):
        ledger.reserve(db, user_id, "req-2", D(5))  # still held one second before expiry
    h.set_clock(db, at(2030, 2, 3, 10, 15))
    assert ledger.reserve(db, user_id, "req-2", D(5)).available_usd == D(5)
    expired = h.reservation_row(db, "req-1")
    assert (expired["status"], expired["resolved_at"]) == ("expired", at(2030, 2, 3, 10, 15))
    assert h.account_row(db, user_id)["held_usd"] == D(5)
    assert ledger.reap_expired_holds(db) == 0
    # releasing an expired hold is harmless: it stays expired and frees nothing more
    assert ledger.release(db, "req-1") == ledger.Release("req-1", "expired", D(0), False)
    assert h.account_row(db, user_id)["held_usd"] == D(5)


def test_reap_expired_holds_counts_what_it_reaps(db):
    h.set_clock(db, at(2030, 2, 3, 10))
    first = h.funded_user(db, 10)
    second = h.funded_user(db, 10)
    ledger.reserve(db, first, "a-1", D(1))
    ledger.reserve(db, first, "a-2", D(2), ttl=dt.timedelta(minutes=5))
    ledger.reserve(db, second, "b-1", D(3))
    ledger.reserve(db, second, "b-2", D(4), ttl=dt.timedelta(hours=1))
    h.set_clock(db, at(2030, 2, 3, 10, 20))
    assert ledger.reap_expired_holds(db) == 3
    assert [h.reservation_row(db, r)["status"] for r in ("a-1", "a-2", "b-1", "b-2")] == [
        "expired", "expired", "expired", "held"]
    assert (h.account_row(db, first)["held_usd"], h.account_row(db, second)["held_usd"]) == (0, D(4))
    assert ledger.reap_expired_holds(db) == 0
    h.set_clock(db, at(2030, 2, 3, 11, 30))
    assert ledger.reap_expired_holds(db, max_accounts=1) == 1
    for bad in (0, -1):
        with h.nothing_written(db), pytest.raises(InvalidArgument):
            ledger.reap_expired_holds(db, max_accounts=bad)


def test_settle_after_expiry_still_charges_what_the_balance_covers(db):
    h.set_clock(db, at(2030, 2, 3, 10))
    user_id = h.funded_user(db, 10)
    ledger.reserve(db, user_id, "req-1", D(2))
    h.set_clock(db, at(2030, 2, 3, 11))
    result = ledger.settle(db, "req-1", D("2.5"))
    assert (result.status, result.charged_usd, result.written_off_usd, result.balance_after_usd) == (
        "settled", D("2.5"), D(0), D("7.5"))
    assert h.reservation_row(db, "req-1")["status"] == "settled"
    assert h.account_row(db, user_id)["held_usd"] == 0


# --- refund ---------------------------------------------------------------------------------------


def test_refund_gives_back_up_to_the_charge(db):
    h.set_clock(db, at(2030, 2, 3, 10))
    user_id = h.funded_user(db, 10)
    charge = ledger.charge(db, user_id, "req-1", D(4))
    assert charge.transaction_id is not None
    first = ledger.refund(db, charge.transaction_id, D("1.5"), "partly broken", "rf-1")
    assert first == ledger.Refund(
        first.transaction_id, charge.transaction_id, D("1.5"), D(6), D("7.5"), D("1.5"), False)
    row = h.ledger_rows(db, user_id)[-1]
    assert (row["type"], row["refund_of"], row["amount_usd"], row["description"], row["request_id"]) == (
        "refund", charge.transaction_id, D("1.5"), "partly broken", "req-1")
    with h.nothing_written(db):
        again = ledger.refund(db, charge.transaction_id, D("1.5"), "partly broken", "rf-1")
    assert (again.transaction_id, again.replayed, again.balance_after_usd) == (first.transaction_id, True, D("7.5"))
    with h.nothing_written(db), pytest.raises(RefundExceedsCharge) as refused:
        ledger.refund(db, charge.transaction_id, D("2.50000001"), "too much", "rf-2")
    assert refused.value.detail["refundable_usd"] == D("2.5")
    rest = ledger.refund(db, charge.transaction_id, D("2.5"), "the rest", "rf-2")
    assert (rest.refunded_total_usd, rest.balance_after_usd) == (D(4), D(10))
    with h.nothing_written(db), pytest.raises(RefundExceedsCharge):
        ledger.refund(db, charge.transaction_id, D("0.00000001"), "more", "rf-3")
    # spend counters stay gross: a refund does not reopen room under a limit
    account = h.account_row(db, user_id)
    assert (account["total_spent_usd"], account["day_spent_usd"], account["total_requests"]) == (D(4), D(4), 1)


def test_refund_refusals_write_nothing(db):
    user_id = h.funded_user(db, 10)
    charge = ledger.charge(db, user_id, "req-1", D(2))
    other_charge = ledger.charge(db, user_id, "req-2", D(2))
    assert charge.transaction_id is not None and other_charge.transaction_id is not None
    topup = h.ledger_rows(db, user_id)[0]["id"]
    ledger.refund(db, charge.transaction_id, D(1), "r", "rf-1")
    for call, error in (
        (lambda: ledger.refund(db, charge.transaction_id, D("0.5"), "r", "rf-1"), IdempotencyConflict),
        (lambda: ledger.refund(db, other_charge.transaction_id, D(1), "r", "rf-1"), IdempotencyConflict),
        (lambda: ledger.refund(db, 987654321, D(1), "r", "rf-2"), UnknownTransaction),
        (lambda: ledger.refund(db, topup, D(1), "r", "rf-2"), InvalidState),
        (lambda: ledger.refund(db, charge.transaction_id, D(1), "", "rf-2"), InvalidArgument),
        (lambda: ledger.refund(db, charge.transaction_id, D(1), "r", ""), InvalidArgument),
        (lambda: ledger.refund(db, charge.transaction_id, D(1), "r", "k" * 201), InvalidArgument),
    ):
        with h.nothing_written(db), pytest.raises(error):
            call()
    for amount in h.BAD_POSITIVE_AMOUNTS:
        with h.nothing_written(db), pytest.raises(InvalidAmount):
            ledger.refund(db, charge.transaction_id, amount, "r", "rf-2")  # type: ignore[arg-type]


# --- adjust ---------------------------------------------------------------------------------------


def test_adjust_credits_and_debits_with_the_actor_recorded(db):
    user_id = h.funded_user(db, 1)
    credit = ledger.adjust(db, user_id, D("0.5"), "goodwill", "admin@example.com", "adj-1")
    assert credit == ledger.Adjustment(credit.transaction_id, D("0.5"), D(1), D("1.5"), False)
    debit = ledger.adjust(db, user_id, D(-2), "chargeback", "admin@example.com", "adj-2")
    assert (debit.amount_usd, debit.balance_before_usd, debit.balance_after_usd) == (D(-2), D("1.5"), D("-0.5"))
    row = h.ledger_rows(db, user_id)[-1]
    assert (row["type"], row["actor"], row["description"], row["amount_usd"]) == (
        "adjustment", "admin@example.com", "chargeback", D(-2))
    account = h.account_row(db, user_id)
    assert (account["balance_usd"], account["total_spent_usd"], account["day_spent_usd"]) == (D("-0.5"), 0, 0)
    with h.nothing_written(db):
        again = ledger.adjust(db, user_id, D(-2), "chargeback", "admin@example.com", "adj-2")
    assert (again.transaction_id, again.replayed) == (debit.transaction_id, True)


def test_adjust_refusals_write_nothing(db):
    user_id = h.funded_user(db, 1)
    other = h.funded_user(db, 1)
    ledger.adjust(db, user_id, D(1), "r", "admin", "adj-1")
    for call, error in (
        (lambda: ledger.adjust(db, user_id, D(2), "r", "admin", "adj-1"), IdempotencyConflict),
        (lambda: ledger.adjust(db, other, D(1), "r", "admin", "adj-1"), IdempotencyConflict),
        (lambda: ledger.adjust(db, uuid.uuid4(), D(1), "r", "admin", "adj-2"), UnknownUser),
        (lambda: ledger.adjust(db, user_id, D(1), "", "admin", "adj-2"), InvalidArgument),
        (lambda: ledger.adjust(db, user_id, D(1), "r", "  ", "adj-2"), InvalidArgument),
        (lambda: ledger.adjust(db, user_id, D(1), "r", "admin", ""), InvalidArgument),
    ):
        with h.nothing_written(db), pytest.raises(error):
            call()
    for amount in (*h.NON_FINITE_OR_MALFORMED, D(0)):
        with h.nothing_written(db), pytest.raises(InvalidAmount):
            ledger.adjust(db, user_id, amount, "r", "admin", "adj-2")  # type: ignore[arg-type]


# --- start_request / complete_request -------------------------------------------------------------


def test_start_request_tracks_and_replays(db):
    h.set_clock(db, at(2030, 2, 3, 10))
    user_id = h.funded_user(db, 1)
    started = ledger.start_request(db, "req-1", "search", user_id)
    assert (started.request_id, started.status, started.replayed) == ("req-1", "pending", False)
    row = h.tracking_row(db, "req-1")
    assert (row["id"], row["tool_name"], row["user_id"], row["client_key"], row["status"]) == (
        started.tracking_id, "search", user_id, None, "pending")
    assert row["created_at"] == at(2030, 2, 3, 10)
    with h.nothing_written(db):
        again = ledger.start_request(db, "req-1", "search", user_id)
    assert (again.tracking_id, again.replayed) == (started.tracking_id, True)
    for call in (
        lambda: ledger.start_request(db, "req-1", "fetch", user_id),
        lambda: ledger.start_request(db, "req-1", "search"),
        lambda: ledger.start_request(db, "req-1", "search", user_id, client_key="key-1"),
    ):
        with h.nothing_written(db), pytest.raises(IdempotencyConflict):
            call()
    with h.nothing_written(db), pytest.raises(UnknownUser):
        ledger.start_request(db, "req-2", "search", uuid.uuid4())
    for bad in h.BAD_IDENTIFIERS:
        with h.nothing_written(db), pytest.raises(InvalidArgument):
            ledger.start_request(db, bad, "search", user_id)
        with h.nothing_written(db), pytest.raises(InvalidArgument):
            ledger.start_request(db, "req-2", bad, user_id)
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.start_request(db, "req-2", "search", client_key="k" * 201)
    assert h.counts(db)["billing_transactions"] == 1


def test_complete_request_settles_the_hold_at_the_tool_price(db):
    ledger.set_tool_pricing(db, "search", D("0.001"), markup_percent=D(50), estimate_usd=D("0.05"))
    user_id = h.funded_user(db, 1)
    ledger.start_request(db, "req-1", "search", user_id)
    ledger.reserve(db, user_id, "req-1", D("0.05"))
    done = ledger.complete_request(db, "req-1", True, D("0.0123"), cost_breakdown=[{"provider": "x", "cost": 1}],
                                   execution_time_ms=42)
    price = D("0.001") + D("0.0123") * D("1.5")
    assert price == D("0.01945")
    assert done == ledger.Completion("req-1", "completed", price, price, D(0), done.transaction_id, True, False)
    assert done.transaction_id is not None
    tracked = h.tracking_row(db, "req-1")
    assert (tracked["status"], tracked["total_cost_usd"], tracked["price_usd"], tracked["transaction_id"]) == (
        "completed", D("0.0123"), price, done.transaction_id)
    assert (tracked["execution_time_ms"], tracked["cost_breakdown"]) == (42, [{"provider": "x", "cost": 1}])
    assert tracked["completed_at"] is not None
    reservation = h.reservation_row(db, "req-1")
    assert (reservation["status"], reservation["transaction_id"]) == ("settled", done.transaction_id)
    account = h.account_row(db, user_id)
    assert (account["balance_usd"], account["held_usd"], account["total_requests"]) == (1 - price, 0, 1)
    assert ledger.tool_price(db, "search", D("0.0123")) == price

    with h.nothing_written(db):
        again = ledger.complete_request(db, "req-1", True, D("0.0123"))
    assert again == ledger.Completion("req-1", "completed", price, price, D(0), done.transaction_id, True, True)
    for call in (
        lambda: ledger.complete_request(db, "req-1", True, D("0.0124")),
        lambda: ledger.complete_request(db, "req-1", False, D("0.0123")),
        lambda: ledger.complete_request(db, "req-1", True, D("0.0123"), price_usd=D(1)),
    ):
        with h.nothing_written(db), pytest.raises(IdempotencyConflict):
            call()


def test_complete_request_without_a_hold_charges_directly(db):
    ledger.set_tool_pricing(db, "fetch", D("0.002"), markup_percent=D("12.5"))
    user_id = h.funded_user(db, 1)
    ledger.start_request(db, "req-1", "fetch", user_id)
    done = ledger.complete_request(db, "req-1", True, D("0.0008"))
    assert done.price_usd == D("0.0029")  # 0.002 + 0.0008 * 1.125
    assert done.billed is True
    tx = h.ledger_rows(db, user_id)[-1]
    assert (tx["id"], tx["type"], tx["amount_usd"], tx["request_id"]) == (
        done.transaction_id, "charge", D("-0.0029"), "req-1")
    # an explicit price wins over the pricing table
    ledger.start_request(db, "req-2", "fetch", user_id)
    assert ledger.complete_request(db, "req-2", True, D("0.0008"), price_usd=D("0.5")).price_usd == D("0.5")
    assert h.account_row(db, user_id)["balance_usd"] == D("0.4971")


def test_complete_request_of_an_unpriced_tool_is_priced_at_cost(db):
    user_id = h.funded_user(db, 1)
    ledger.start_request(db, "req-1", "unpriced", user_id)
    done = ledger.complete_request(db, "req-1", True, D("0.00030000"))
    assert (done.price_usd, done.billed) == (D("0.0003"), True)
    assert h.account_row(db, user_id)["balance_usd"] == D("0.9997")
    ledger.start_request(db, "req-2", "unpriced", user_id)
    free = ledger.complete_request(db, "req-2", True, D(0))
    assert (free.price_usd, free.billed, free.transaction_id) == (D(0), False, None)
    # price 0 with a hold: the hold is freed, nothing is charged
    ledger.start_request(db, "req-3", "unpriced", user_id)
    ledger.reserve(db, user_id, "req-3", D("0.2"))
    done = ledger.complete_request(db, "req-3", True, D(0))
    assert (done.price_usd, done.billed) == (D(0), False)
    assert h.reservation_row(db, "req-3")["status"] == "settled"
    assert h.account_row(db, user_id)["held_usd"] == 0


def test_complete_request_of_anonymous_and_api_key_callers_is_tracked_not_charged(db):
    ledger.set_tool_pricing(db, "search", D("0.01"))
    user_id = h.funded_user(db, 1)
    before = h.counts(db)
    ledger.start_request(db, "anon-1", "search")
    ledger.start_request(db, "key-1", "search", client_key="client-abc")
    anonymous = ledger.complete_request(db, "anon-1", True, D("0.002"))
    keyed = ledger.complete_request(db, "key-1", True, D("0.002"))
    for done in (anonymous, keyed):
        assert (done.status, done.price_usd, done.billed, done.transaction_id) == ("completed", D("0.012"), False,
                                                                                   None)
    assert h.tracking_row(db, "key-1")["client_key"] == "client-abc"
    assert h.tracking_row(db, "anon-1")["user_id"] is None
    after = h.counts(db)
    assert after["billing_transactions"] == before["billing_transactions"]
    assert after["cost_tracking"] == before["cost_tracking"] + 2
    assert h.account_row(db, user_id)["balance_usd"] == D(1)


def test_complete_request_failure_releases_the_hold(db):
    user_id = h.funded_user(db, 1)
    ledger.start_request(db, "req-1", "search", user_id)
    ledger.reserve(db, user_id, "req-1", D("0.5"))
    done = ledger.complete_request(db, "req-1", False, D("0.001"), error="upstream timeout", execution_time_ms=9)
    assert (done.status, done.billed, done.transaction_id, done.replayed) == ("failed", False, None, False)
    assert h.reservation_row(db, "req-1")["status"] == "released"
    tracked = h.tracking_row(db, "req-1")
    assert (tracked["status"], tracked["error"], tracked["transaction_id"]) == ("failed", "upstream timeout", None)
    account = h.account_row(db, user_id)
    assert (account["balance_usd"], account["held_usd"]) == (D(1), 0)
    with h.nothing_written(db):
        assert ledger.complete_request(db, "req-1", False, D("0.001")).replayed is True
    # a failed call without a hold is tracked too
    ledger.start_request(db, "req-2", "search", user_id)
    assert ledger.complete_request(db, "req-2", False).status == "failed"


def test_complete_request_with_billing_disabled_tracks_but_does_not_bill(db):
    user_id = h.funded_user(db, 1)
    ledger.update_settings(db, user_id, billing_enabled=False)
    ledger.start_request(db, "req-1", "search", user_id)
    assert ledger.reserve(db, user_id, "req-1", D("0.5")).status == "not_billed"
    done = ledger.complete_request(db, "req-1", True, D("0.25"))
    assert (done.status, done.price_usd, done.billed, done.transaction_id) == ("completed", D("0.25"), False, None)
    assert h.tracking_row(db, "req-1")["status"] == "completed"
    assert h.counts(db)["billing_transactions"] == 1
    assert h.account_row(db, user_id)["balance_usd"] == D(1)


def test_complete_request_overrun_is_charged_up_to_the_balance_and_the_rest_written_off(db):
    user_id = h.funded_user(db, D("0.1"))
    ledger.start_request(db, "req-1", "search", user_id)
    ledger.reserve(db, user_id, "req-1", D("0.1"))
    done = ledger.complete_request(db, "req-1", True, D("0.35"))
    assert (done.price_usd, done.charged_usd, done.written_off_usd, done.billed) == (
        D("0.35"), D("0.1"), D("0.25"), True)
    assert h.account_row(db, user_id)["balance_usd"] == D(0)


def test_complete_request_never_settles_another_users_hold(db):
    # The call was tracked for one user; a hold under the same request id belongs to another. Completing
    # the call must not charge the other user and link the tracked call to that charge (verify_ledger
    # reports such a row as a 'tracking' violation): it is a conflict, and nothing is written.
    tracked_user = h.funded_user(db, 10)
    other_user = h.funded_user(db, 10)
    ledger.start_request(db, "req-1", "search", tracked_user)
    try:
        ledger.reserve(db, other_user, "req-1", D(1))
    except IdempotencyConflict:
        return  # refusing the hold itself is just as good
    with h.nothing_written(db), pytest.raises(IdempotencyConflict):
        ledger.complete_request(db, "req-1", True, D("0.5"))


def test_complete_request_refusals_write_nothing(db):
    user_id = h.funded_user(db, 1)
    with h.nothing_written(db), pytest.raises(UnknownRequest):
        ledger.complete_request(db, "no-such-request", True, D(1))
    ledger.start_request(db, "req-1", "search", user_id)
    ledger.reserve(db, user_id, "req-1", D("0.5"))
    ledger.release(db, "req-1")
    with h.nothing_written(db), pytest.raises(InvalidState):
        ledger.complete_request(db, "req-1", True, D("0.1"))
    for amount in h.BAD_NON_NEGATIVE_AMOUNTS:
        with h.nothing_written(db), pytest.raises(InvalidAmount):
            ledger.complete_request(db, "req-1", True, amount)  # type: ignore[arg-type]
        if amount is not None:
            with h.nothing_written(db), pytest.raises(InvalidAmount):
                ledger.complete_request(db, "req-1", True, D(0), price_usd=amount)
    for request_id in h.BAD_IDENTIFIERS:
        with h.nothing_written(db), pytest.raises(InvalidArgument):
            ledger.complete_request(db, request_id, True, D(0))
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.complete_request(db, "req-1", None, D(0))  # type: ignore[arg-type]
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.complete_request(db, "req-1", True, D(0), execution_time_ms=-1)
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.complete_request(db, "req-1", False, D(0), error="e" * 4001)
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.complete_request(db, "req-1", True, D(0), cost_breakdown={"blob": "x" * 70000})
    with h.nothing_written(db), pytest.raises(psycopg.Error) as scalar_breakdown:
        db.execute("SELECT * FROM billing.complete_request('req-1', false, 0, '42'::jsonb)")
    assert scalar_breakdown.value.sqlstate == "BL009"
    assert ledger.complete_request(db, "req-1", False, D(0)).status == "failed"


# --- day and month windows ------------------------------------------------------------------------


def test_daily_room_comes_back_the_next_day_and_the_month_keeps_counting(db):
    h.set_clock(db, at(2030, 1, 15, 23, 59, 59))
    user_id = h.funded_user(db, 100)
    ledger.update_settings(db, user_id, monthly_limit_usd=D(25))
    ledger.charge(db, user_id, "day1-a", D(8))
    with h.nothing_written(db), pytest.raises(DailyLimitExceeded):
        ledger.charge(db, user_id, "day1-b", D(3))
    h.set_clock(db, at(2030, 1, 16))
    ledger.charge(db, user_id, "day2-a", D(9))
    account = h.account_row(db, user_id)
    assert (account["day_spent_usd"], account["month_spent_usd"], account["day_start"]) == (
        D(9), D(17), dt.date(2030, 1, 16))
    summary = ledger.summary(db, user_id)
    assert summary["usage"] == {"today_usd": D(9), "month_usd": D(17)}
    h.set_clock(db, at(2030, 1, 17, 12))
    with h.nothing_written(db), pytest.raises(MonthlyLimitExceeded) as refused:
        ledger.charge(db, user_id, "day3-a", D("8.00000001"))
    assert refused.value.detail["remaining_usd"] == D(8)
    assert dt.datetime.fromisoformat(refused.value.detail["resets_at"]) == at(2030, 2, 1)
    ledger.charge(db, user_id, "day3-a", D(8))
    h.set_clock(db, at(2030, 2, 1, 0, 0, 1))
    ledger.charge(db, user_id, "feb-a", D(9))
    account = h.account_row(db, user_id)
    assert (account["day_spent_usd"], account["month_spent_usd"], account["month_start"]) == (
        D(9), D(9), dt.date(2030, 2, 1))
    assert account["total_spent_usd"] == D(34)


def test_holds_count_in_the_window_they_are_open(db):
    h.set_clock(db, at(2030, 1, 15, 23, 50))
    user_id = h.funded_user(db, 100)
    ledger.reserve(db, user_id, "hold", D(7), ttl=dt.timedelta(hours=1))
    h.set_clock(db, at(2030, 1, 16, 0, 10))
    # a new day, but the hold is still open and still counts against today's limit
    with h.nothing_written(db), pytest.raises(DailyLimitExceeded):
        ledger.charge(db, user_id, "req-1", D(4))
    ledger.settle(db, "hold", D(7))
    assert h.account_row(db, user_id)["day_spent_usd"] == D(7)


def test_time_zone_moves_the_day_boundary(db):
    h.set_clock(db, at(2030, 1, 15, 21, 30))  # 23:30 in Kyiv (UTC+2 in winter)
    utc_user = h.funded_user(db, 100)
    kyiv_user = h.funded_user(db, 100)
    ledger.charge(db, utc_user, "u-1", D(8))
    h.set_clock(db, at(2030, 1, 15, 22, 30))  # 00:30 on 16 January in Kyiv, still the 15th in UTC
    with h.nothing_written(db), pytest.raises(DailyLimitExceeded) as refused:
        ledger.charge(db, utc_user, "u-2", D(8))  # the same UTC day
    assert dt.datetime.fromisoformat(refused.value.detail["resets_at"]) == at(2030, 1, 16)

    ledger.configure(db, time_zone="Europe/Kyiv")
    h.set_clock(db, at(2030, 1, 15, 21, 30))
    ledger.charge(db, kyiv_user, "k-1", D(8))
    assert h.account_row(db, kyiv_user)["day_start"] == dt.date(2030, 1, 15)
    h.set_clock(db, at(2030, 1, 15, 22, 30))
    ledger.charge(db, kyiv_user, "k-2", D(8))  # a new day in Kyiv
    assert h.account_row(db, kyiv_user)["day_start"] == dt.date(2030, 1, 16)
    limits = ledger.check_limits(db, kyiv_user, D(1))
    assert (limits.spent_usd, limits.resets_at) == (D(8), at(2030, 1, 16, 22))


def test_time_zone_change_keeps_the_spend_already_in_the_new_day(db):
    # 23:30 UTC on 15 January is 01:30 on the 16th in Kyiv. A charge then, under UTC, is spend of
    # Kyiv's 16 January once the zone is changed: the daily limit must still see it, and the counters
    # must still agree with the ledger (verify_ledger, checked after the test).
    h.set_clock(db, at(2030, 1, 15, 23, 30))
    user_id = h.funded_user(db, 100)
    ledger.charge(db, user_id, "before-change", D(8))
    ledger.configure(db, time_zone="Europe/Kyiv")
    h.set_clock(db, at(2030, 1, 15, 23, 40))
    with h.nothing_written(db), pytest.raises(DailyLimitExceeded):
        ledger.charge(db, user_id, "after-change", D(8))


def test_configure_refuses_bad_settings(db):
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.configure(db, time_zone="Mars/Olympus_Mons")
    for ttl in (dt.timedelta(0), dt.timedelta(days=2)):
        with h.nothing_written(db), pytest.raises(InvalidArgument):
            ledger.configure(db, hold_ttl=ttl)
    config = ledger.configure(db, hold_ttl=dt.timedelta(minutes=2))
    assert config == ledger.Configuration("UTC", dt.timedelta(minutes=2))
    h.set_clock(db, at(2030, 1, 1))
    user_id = h.funded_user(db, 1)
    assert ledger.reserve(db, user_id, "req-1", D(1)).expires_at == at(2030, 1, 1, 0, 2)
