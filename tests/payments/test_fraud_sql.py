"""The payment fraud rules of the ledger (docs/abuse.md, "Payment fraud rules") against a real server: caps on
intents started per hour and on declined payments per day, per account and per network; the first top-ups of a
new account; a new payer's cooling-off, kept out of the available balance; repeated disputes deactivate the
account. Every rule that fires leaves a committed row in billing.abuse_events with its figures.

Each test sets the figures it tests and turns the other rules off (billing.abuse_policy, as the gateway's
start-up does from [abuse.payments]); the defaults themselves are checked once, on a fresh ledger.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from api.abuse.config import PaymentRules
from api.gateway.config import DEFAULT_DB_DIR
from api.ledger import sync as ledger
from api.ledger.errors import AccountInactive, InsufficientFunds, PaymentRefused
from api.ledger.sync import PaymentFacts
from api.ledger.types import AbuseEvent
from tests import helpers as h
from tests import helpers_concurrency as hc

D = Decimal
T0 = h.at(2030, 3, 10, 12)
IP = ipaddress.ip_address("203.0.113.7")
OTHER_IP = ipaddress.ip_address("198.51.100.20")


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)


def rules(db, **figures: Any) -> None:
    """Only the given rules on, with these figures (``intents_per_hour_per_user=3``); every other one off."""
    h.payment_rules_off(db)
    for knob, value in figures.items():
        assert knob in h.PAYMENT_KNOBS, knob
        ledger.set_abuse_policy(db, f"payments.{knob}", D(value), "test")


def start(db, user_id: uuid.UUID, amount: str = "10.00", currency: str = "USD", **kw: Any) -> ledger.PaymentIntent:
    started = ledger.create_payment_intent(db, user_id, kw.pop("provider", "stripe"), D(amount), currency, **kw)
    ledger.attach_payment_checkout(db, started.intent_id, f"cs_{started.intent_id.hex}", "https://pay.example/x")
    return started


def refused(db, user_id: uuid.UUID, amount: str = "10.00", **kw: Any) -> PaymentRefused:
    intents_before = intents_of(db, user_id)
    with pytest.raises(PaymentRefused) as caught:
        ledger.create_payment_intent(db, user_id, "stripe", D(amount), kw.pop("currency", "USD"), **kw)
    assert intents_of(db, user_id) == intents_before, "a refused start records no intent"
    return caught.value


def intents_of(db, user_id: uuid.UUID) -> int:
    return hc.count_rows(db, "payment_intents", "user_id = %s", (user_id,))


def events(db, rule: str | None = None, user_id: uuid.UUID | None = None) -> list[AbuseEvent]:
    return ledger.list_abuse_events(db, user_id=user_id, rule=rule, limit=1000)


def paid(i: ledger.PaymentIntent) -> PaymentFacts:
    return PaymentFacts(
        provider="stripe",
        event_id=f"evt_{uuid.uuid4().hex}",
        event_type="checkout.session.completed",
        payload="{}",
        action="paid",
        intent_id=i.intent_id,
        external_id=f"cs_{i.intent_id.hex}",
        payment_ref=f"pi_{i.intent_id.hex}",
        amount=i.amount,
        currency=i.currency,
    )


def declined(i: ledger.PaymentIntent) -> PaymentFacts:
    return PaymentFacts(
        provider="stripe",
        event_id=f"evt_{uuid.uuid4().hex}",
        event_type="payment_intent.payment_failed",
        payload="{}",
        action="failed",
        intent_id=i.intent_id,
    )


def dispute(i: ledger.PaymentIntent, amount: str, key: str, *, reinstated: bool = False) -> PaymentFacts:
    return PaymentFacts(
        provider="stripe",
        event_id=f"evt_{uuid.uuid4().hex}",
        event_type="charge.dispute.created",
        payload="{}",
        action="reversal",
        payment_ref=f"pi_{i.intent_id.hex}",
        reversal_key=key,
        reversal_kind="chargeback",
        reversed_amount=D(amount),
        reversal_currency="USD",
        reinstated=reinstated,
    )


def born(db, user_id: uuid.UUID) -> dt.datetime:
    row = db.execute("SELECT created_at FROM billing.users WHERE id = %s", (user_id,)).fetchone()
    assert row is not None
    created: dt.datetime = row[0]
    return created


# ---- the defaults ------------------------------------------------------------------------------------


def test_a_fresh_ledger_enforces_the_documented_defaults_and_they_match_the_configuration(db):
    """No policy row stored: each rule uses the default its function passes to billing._policy, which must be
    PaymentRules' default (what the gateway writes when not configured otherwise)."""
    assert ledger.list_abuse_policy(db) == []
    defaults = PaymentRules()
    sources = "\n".join(path.read_text() for path in (DEFAULT_DB_DIR / "functions").glob("*.sql"))
    for knob in h.PAYMENT_KNOBS:
        needle = f"billing._policy('payments.{knob}', {getattr(defaults, knob)})"
        assert needle in sources, f"{needle} not found: the ledger's default must be PaymentRules().{knob}"
    # And they are on: a new account's 4th top-up is refused.
    user_id = h.new_user(db)
    for _ in range(3):
        start(db, user_id, "1.00")
    assert refused(db, user_id, "1.00").rule == "payments.new_account_topups"


def test_the_default_caps_refuse_the_eleventh_start_of_an_hour(db):
    user_id = h.new_user(db)
    h.set_clock(db, born(db, user_id) + dt.timedelta(days=365))  # not a new account
    for _ in range(10):
        ledger.create_payment_intent(db, user_id, "stripe", D("1.00"), "USD", client_ip=IP)
    error = refused(db, user_id, "1.00", client_ip=IP)
    assert error.rule == "payments.intents_per_hour_per_user"


# ---- intents per hour --------------------------------------------------------------------------------


def test_an_account_may_start_its_hourly_cap_of_intents_then_is_refused_with_an_audited_explanation(db):
    rules(db, intents_per_hour_per_user=3)
    user_id = h.new_user(db)
    for minute in range(3):
        h.set_clock(db, T0 + dt.timedelta(minutes=minute))
        start(db, user_id, client_ip=IP)
    h.set_clock(db, T0 + dt.timedelta(minutes=10))

    error = refused(db, user_id, client_ip=IP)
    assert error.status == 429 and error.code == "payment_refused"
    assert error.rule == "payments.intents_per_hour_per_user"
    assert error.retry_at == T0 + dt.timedelta(hours=1)  # the oldest of the three leaves the window
    assert error.retry_after == 50 * 60
    assert error.headers == {"Retry-After": "3000"}
    assert error.extra == {"rule": "payments.intents_per_hour_per_user", "retry_at": "2030-03-10T13:00:00Z"}
    assert "started 3 top-ups in the last hour" in error.message and "at most 3" in error.message
    assert "2030-03-10 13:00:00 UTC" in error.message

    # The audit row committed although the start was refused.
    [event] = events(db, "payments.intents_per_hour_per_user")
    assert (event.action, event.user_id, event.client_ip, event.actor) == ("refused", user_id, IP, "system")
    assert event.detail["limit"] == 3 and event.detail["count"] == 3 and event.detail["window"] == "1 hour"
    assert event.detail["resets_at"].startswith("2030-03-10T13:00:00")
    assert event.detail["message"] == error.message
    assert (event.detail["amount"], event.detail["currency"], event.detail["provider"]) == (D("10.00"), "USD", "stripe")

    # Once the oldest start is an hour old, one more may start.
    h.set_clock(db, T0 + dt.timedelta(hours=1, seconds=1))
    start(db, user_id, client_ip=IP)
    assert refused(db, user_id, client_ip=IP).retry_at == T0 + dt.timedelta(hours=1, minutes=1)


def test_a_replayed_start_is_not_refused_by_the_cap_it_was_counted_in(db):
    rules(db, intents_per_hour_per_user=2)
    h.set_clock(db, T0)
    user_id = h.new_user(db)
    first = ledger.create_payment_intent(db, user_id, "stripe", D("10.00"), "USD", "key-1", client_ip=IP)
    ledger.create_payment_intent(db, user_id, "stripe", D("10.00"), "USD", "key-2", client_ip=IP)
    again = ledger.create_payment_intent(db, user_id, "stripe", D("10.00"), "USD", "key-1", client_ip=IP)
    assert (again.intent_id, again.replayed) == (first.intent_id, True)
    assert refused(db, user_id, idempotency_key="key-3", client_ip=IP).rule == "payments.intents_per_hour_per_user"
    # A refused key stays free: once the window passes, it starts a payment.
    h.set_clock(db, T0 + dt.timedelta(hours=2))
    later = ledger.create_payment_intent(db, user_id, "stripe", D("10.00"), "USD", "key-3", client_ip=IP)
    assert later.replayed is False and later.status == "created"


def test_the_per_network_cap_counts_the_starts_of_every_account_from_that_address(db):
    rules(db, intents_per_hour_per_ip=3)
    h.set_clock(db, T0)
    users = [h.new_user(db) for _ in range(4)]
    for user_id in users[:3]:
        start(db, user_id, client_ip=IP)
    error = refused(db, users[3], client_ip=IP)
    assert error.rule == "payments.intents_per_hour_per_ip"
    assert "started from your network address" in error.message
    [event] = events(db, "payments.intents_per_hour_per_ip")
    assert (event.user_id, event.client_ip, event.detail["count"], event.detail["network"]) == (
        users[3], IP, 3, "203.0.113.7/32")
    # Another address, or a caller that gave none, is not counted with it.
    start(db, users[3], client_ip=OTHER_IP)
    start(db, users[3])
    stored = db.execute("SELECT client_ip FROM billing.payment_intents WHERE user_id = %s", (users[3],)).fetchall()
    assert sorted(stored, key=str) == [(OTHER_IP,), (None,)]


def test_an_ipv6_client_is_counted_by_its_64_prefix(db):
    rules(db, intents_per_hour_per_ip=2)
    h.set_clock(db, T0)
    user_a, user_b = h.new_user(db), h.new_user(db)
    start(db, user_a, client_ip=ipaddress.ip_address("2001:db8:1:2::1"))
    start(db, user_b, client_ip=ipaddress.ip_address("2001:db8:1:2:ffff::9"))
    error = refused(db, user_a, client_ip=ipaddress.ip_address("2001:db8:1:2:abcd::5"))
    assert error.rule == "payments.intents_per_hour_per_ip"
    assert events(db, "payments.intents_per_hour_per_ip")[0].detail["network"] == "2001:db8:1:2::/64"
    start(db, user_a, client_ip=ipaddress.ip_address("2001:db8:1:3::1"))  # another /64


# ---- declined payments per day (card testing) ----------------------------------------------------------


def test_declined_payments_past_the_daily_cap_refuse_new_starts_until_the_oldest_is_a_day_old(db):
    rules(db, failed_per_day_per_user=2)
    user_id = h.new_user(db)
    h.set_clock(db, T0)
    ledger.record_payment_event(db, declined(start(db, user_id, client_ip=IP)))
    # A checkout the provider could not create is not a declined payment: it does not count.
    broken = ledger.create_payment_intent(db, user_id, "stripe", D("5.00"), "USD", client_ip=IP)
    ledger.fail_payment_intent(db, broken.intent_id, "provider unreachable")
    h.set_clock(db, T0 + dt.timedelta(hours=1))
    ledger.record_payment_event(db, declined(start(db, user_id, client_ip=IP)))

    h.set_clock(db, T0 + dt.timedelta(hours=3))
    error = refused(db, user_id, client_ip=IP)
    assert error.rule == "payments.failed_per_day_per_user"
    assert error.retry_at == T0 + dt.timedelta(hours=24)
    assert "2 payments of this account failed in the last 24 hours" in error.message
    assert "card testing" in error.message
    [event] = events(db, "payments.failed_per_day_per_user")
    assert (event.detail["limit"], event.detail["count"], event.detail["window"]) == (2, 2, "24 hours")

    h.set_clock(db, T0 + dt.timedelta(hours=24, seconds=1))
    start(db, user_id, client_ip=IP)


def test_declined_payments_from_one_network_refuse_every_account_starting_from_it(db):
    rules(db, failed_per_day_per_ip=2)
    h.set_clock(db, T0)
    tester_a, tester_b, bystander = h.new_user(db), h.new_user(db), h.new_user(db)
    ledger.record_payment_event(db, declined(start(db, tester_a, client_ip=IP)))
    ledger.record_payment_event(db, declined(start(db, tester_b, client_ip=IP)))
    assert refused(db, bystander, client_ip=IP).rule == "payments.failed_per_day_per_ip"
    assert refused(db, tester_a, client_ip=IP).rule == "payments.failed_per_day_per_ip"
    start(db, bystander, client_ip=OTHER_IP)


# ---- the first top-ups of a new account ----------------------------------------------------------------


def test_a_new_account_may_have_only_so_many_top_ups_open_or_paid(db):
    rules(db, new_account_days=7, new_account_topups=2)
    user_id = h.new_user(db)
    created = born(db, user_id)
    h.set_clock(db, created + dt.timedelta(hours=1))
    ledger.record_payment_event(db, paid(start(db, user_id)))
    second = start(db, user_id)
    error = refused(db, user_id)
    assert error.rule == "payments.new_account_topups"
    assert error.retry_at == created + dt.timedelta(days=7)
    assert "first 7 days may have at most 2 top-ups open or paid, and this one has 2" in error.message
    # A declined payment stops counting.
    ledger.record_payment_event(db, declined(second))
    start(db, user_id)
    assert refused(db, user_id).rule == "payments.new_account_topups"
    # An account 7 days old is no longer new.
    h.set_clock(db, created + dt.timedelta(days=7, seconds=1))
    start(db, user_id)


def test_a_new_account_may_top_up_at_most_its_total_and_is_told_how_much_is_left(db):
    rules(db, new_account_days=7, new_account_topup_usd=200)
    ledger.set_exchange_rate(db, D("40"))
    user_id = h.new_user(db)
    h.set_clock(db, born(db, user_id) + dt.timedelta(minutes=5))
    start(db, user_id, "120.00")
    start(db, user_id, "2000.00", "UAH")  # 50 USD at 40 UAH/USD
    error = refused(db, user_id, "40.00")
    assert error.rule == "payments.new_account_topup_usd"
    assert "at most 200 USD in all; 170 USD is already open or paid, and this one adds 40 USD" in error.message
    assert "Choose at most 30 USD" in error.message
    [event] = events(db, "payments.new_account_topup_usd")
    assert (event.detail["limit_usd"], event.detail["open_or_paid_usd"], event.detail["requested_usd"]) == (
        D(200), D(170), D(40))
    start(db, user_id, "30.00")


def test_an_expired_intent_of_a_new_account_stops_counting(db):
    rules(db, new_account_days=7, new_account_topups=1)
    user_id = h.new_user(db)
    h.set_clock(db, born(db, user_id) + dt.timedelta(minutes=1))
    ledger.create_payment_intent(db, user_id, "stripe", D("10.00"), "USD", ttl=dt.timedelta(minutes=30))
    assert refused(db, user_id).rule == "payments.new_account_topups"
    h.set_clock(db, born(db, user_id) + dt.timedelta(minutes=40))
    start(db, user_id)


# ---- concurrency ----------------------------------------------------------------------------------------


def test_concurrent_starts_of_one_account_pass_its_cap_exactly(db, connect, payments_url):
    """24 connections start at once for one account (all queued on its row first): exactly the cap succeed."""
    rules(db, intents_per_hour_per_user=5)
    user_id = h.new_user(db)
    conns = hc.open_connections(connect, payments_url, 24)
    gate = hc.RowGate(connect, [user_id])
    outcomes = hc.run_together(
        conns,
        lambda i, c: ledger.create_payment_intent(c, user_id, "stripe", D("3.00"), "USD", client_ip=IP),
        gate=gate,
    )
    assert gate.waiters >= 20, "the race did not happen"
    hc.assert_only(outcomes, PaymentRefused)
    assert len(hc.values_of(outcomes)) == 5
    assert intents_of(db, user_id) == 5
    assert len(events(db, "payments.intents_per_hour_per_user")) == 19


def test_concurrent_starts_of_many_accounts_from_one_network_pass_its_cap_exactly(db, connect, payments_url):
    """24 accounts start at once from one address: the per-network lock lets exactly the cap through."""
    rules(db, intents_per_hour_per_ip=5)
    users = [h.new_user(db) for _ in range(24)]
    conns = hc.open_connections(connect, payments_url, 24)
    gate = hc.RowGate(connect, users)
    outcomes = hc.run_together(
        conns,
        lambda i, c: ledger.create_payment_intent(c, users[i], "stripe", D("3.00"), "USD", client_ip=IP),
        gate=gate,
    )
    assert gate.waiters >= 20, "the race did not happen"
    hc.assert_only(outcomes, PaymentRefused)
    assert len(hc.values_of(outcomes)) == 5
    assert hc.count_rows(db, "payment_intents", "client_ip = %s", (IP,)) == 5


# ---- cooling-off ----------------------------------------------------------------------------------------


def credited(db, user_id: uuid.UUID, amount: str) -> ledger.PaymentIntent:
    i = start(db, user_id, amount, client_ip=IP)
    outcome = ledger.record_payment_event(db, paid(i))
    assert outcome.outcome == "credited", outcome
    return i


@pytest.fixture(params=["fast", "exact"])
def path(request, db):
    """Both paths of charge/reserve/settle must keep cooling credit out of the available balance."""
    if request.param == "exact":
        db.execute("SET tollgate.force_exact_path = on")
    return request.param


def test_a_new_payers_card_credit_is_spendable_only_up_to_the_limit_until_the_cooling_off_ends(db, path):
    rules(db, cooling_off_hours=24, cooling_off_spendable_usd=5)
    h.set_clock(db, T0)
    user_id = h.new_user(db)
    credited(db, user_id, "10.00")
    summary = ledger.summary(db, user_id)
    assert (summary["balance_usd"], summary["cooling_usd"], summary["available_usd"]) == (D(10), D(5), D(5))
    assert summary["cooling_until"] == "2030-03-11T12:00:00Z"
    assert ledger.check_balance(db, user_id, D(6)).sufficient is False

    with pytest.raises(InsufficientFunds) as caught:
        ledger.charge(db, user_id, "r-1", D(7))
    error = caught.value
    assert "5 USD of your recent top-up is cooling off until 2030-03-11T12:00:00Z" in error.message
    assert "spendable up to 5 USD in their first 24 hours" in error.message
    assert error.detail["cooling_usd"] == D(5) and error.detail["available_usd"] == D(5)
    assert error.detail["cooling_until"].startswith("2030-03-11T12:00:00")
    assert error.hint is not None and "2030-03-11 12:00 UTC" in error.hint
    with pytest.raises(InsufficientFunds):
        ledger.reserve(db, user_id, "r-2", D("5.01"))

    ledger.reserve(db, user_id, "r-3", D(3))
    ledger.settle(db, "r-3", D(3))
    ledger.charge(db, user_id, "r-4", D(2))
    with pytest.raises(InsufficientFunds):
        ledger.charge(db, user_id, "r-5", D("0.01"))

    [event] = events(db, "payments.cooling_off")
    assert (event.action, event.user_id, event.client_ip) == ("limited", user_id, IP)
    assert (event.detail["credited_usd"], event.detail["cooling_usd"], event.detail["limit_usd"]) == (
        D(10), D(5), D(5))

    # Once the cooling-off ends, the rest is spendable (and the stored figure is written down).
    h.set_clock(db, T0 + dt.timedelta(hours=24))
    ledger.charge(db, user_id, "r-6", D(5))
    assert ledger.summary(db, user_id)["cooling_usd"] == 0
    assert hc.account(db, user_id)["cooling_usd"] == 0


def test_pay_spend_dispute_loses_at_most_the_spendable_limit(db, path):
    """The attack of issue 14: pay 10, spend all you can, dispute the payment. Before: -10.00 uncollectable."""
    rules(db, cooling_off_hours=24, cooling_off_spendable_usd=5)
    h.set_clock(db, T0)
    user_id = h.new_user(db)
    i = credited(db, user_id, "10.00")
    spent = D(0)
    for n in range(20):
        try:
            ledger.charge(db, user_id, f"spend-{n}", D(1))
            spent += 1
        except InsufficientFunds:
            break
    assert spent == 5
    ledger.record_payment_event(db, dispute(i, "10.00", "dispute:dp_1"))
    account = hc.account(db, user_id)
    assert account["balance_usd"] == D(-5)  # the loss is bounded by the spendable limit
    assert (account["cooling_usd"], account["cooling_credit_usd"]) == (0, 0)


def test_later_payments_within_the_cooling_off_cool_until_the_same_end_and_after_it_not_at_all(db):
    rules(db, cooling_off_hours=24, cooling_off_spendable_usd=5)
    h.set_clock(db, T0)
    user_id = h.new_user(db)
    credited(db, user_id, "4.00")  # within the allowance: nothing withheld, no event
    assert ledger.summary(db, user_id)["cooling_usd"] == 0
    assert events(db, "payments.cooling_off") == []
    h.set_clock(db, T0 + dt.timedelta(hours=20))
    credited(db, user_id, "10.00")
    summary = ledger.summary(db, user_id)
    assert (summary["cooling_usd"], summary["available_usd"], summary["cooling_until"]) == (
        D(9), D(5), "2030-03-11T12:00:00Z")
    h.set_clock(db, T0 + dt.timedelta(hours=30))
    credited(db, user_id, "10.00")  # an established payer now
    summary = ledger.summary(db, user_id)
    assert (summary["cooling_usd"], summary["available_usd"], summary["cooling_until"]) == (D(0), D(24), None)


def test_an_operators_credit_never_cools(db):
    rules(db, cooling_off_hours=24, cooling_off_spendable_usd=5)
    h.set_clock(db, T0)
    user_id = h.funded_user(db, 50)
    assert ledger.summary(db, user_id)["cooling_usd"] == 0
    credited(db, user_id, "10.00")
    summary = ledger.summary(db, user_id)
    assert (summary["balance_usd"], summary["cooling_usd"], summary["available_usd"]) == (D(60), D(5), D(55))
    ledger.update_settings(db, user_id, daily_limit_usd=D(100))
    ledger.charge(db, user_id, "r-1", D(55))


def test_a_payment_credited_after_review_cools_too(db):
    rules(db, cooling_off_hours=24, cooling_off_spendable_usd=5)
    h.set_clock(db, T0)
    user_id = h.new_user(db)
    i = start(db, user_id, "10.00")
    outcome = ledger.record_payment_event(db, replace(paid(i), amount=D("12.00")))
    assert outcome.outcome == "review"
    ledger.credit_reviewed_payment(db, i.intent_id, "ops", "paid more than asked, customer confirmed")
    summary = ledger.summary(db, user_id)
    assert (summary["balance_usd"], summary["cooling_usd"]) == (D(12), D(7))


def test_cooling_off_hours_zero_turns_the_rule_off(db):
    rules(db, cooling_off_hours=0, cooling_off_spendable_usd=5)
    user_id = h.new_user(db)
    credited(db, user_id, "10.00")
    ledger.charge(db, user_id, "r-1", D(10))


# ---- disputes ---------------------------------------------------------------------------------------------


def test_two_disputes_deactivate_the_account_pending_review(db):
    rules(db, disputes_to_deactivate=2)
    h.set_clock(db, T0)
    user_id = h.new_user(db)
    first, second = credited(db, user_id, "10.00"), credited(db, user_id, "10.00")
    ledger.record_payment_event(db, dispute(first, "10.00", "dispute:dp_1"))
    # The same dispute reported again (updated) is one dispute.
    ledger.record_payment_event(db, dispute(first, "10.00", "dispute:dp_1"))
    assert hc.account(db, user_id)["is_active"] is True
    assert events(db, "payments.disputes_to_deactivate") == []

    outcome = ledger.record_payment_event(db, dispute(second, "10.00", "dispute:dp_2"))
    assert "deactivated pending review" in (outcome.detail or "")
    assert hc.account(db, user_id)["is_active"] is False
    [event] = events(db, "payments.disputes_to_deactivate")
    assert (event.action, event.user_id, event.client_ip) == ("paused", user_id, IP)
    assert (event.detail["limit"], event.detail["count"]) == (2, 2)
    assert [d["dispute"] for d in event.detail["disputes"]] == ["dispute:dp_1", "dispute:dp_2"]
    assert "Account deactivated pending review" in event.detail["message"]
    with pytest.raises(AccountInactive):
        ledger.charge(db, user_id, "r-1", D("0.01"))

    # An operator reviews and reactivates it; a further dispute deactivates it again.
    ledger.update_settings(db, user_id, is_active=True)
    third = credited(db, user_id, "10.00")
    ledger.record_payment_event(db, dispute(third, "5.00", "dispute:dp_3"))
    assert hc.account(db, user_id)["is_active"] is False
    assert len(events(db, "payments.disputes_to_deactivate")) == 2


def test_refunds_are_not_disputes(db):
    rules(db, disputes_to_deactivate=1)
    user_id = h.new_user(db)
    i = credited(db, user_id, "10.00")
    refund = PaymentFacts(
        provider="stripe", event_id=f"evt_{uuid.uuid4().hex}", event_type="charge.refunded", payload="{}",
        action="reversal", payment_ref=f"pi_{i.intent_id.hex}", reversal_key="refunds", reversal_kind="refund",
        reversed_amount=D("10.00"), reversal_currency="USD",
    )
    ledger.record_payment_event(db, refund)
    assert hc.account(db, user_id)["is_active"] is True
