"""The payment functions of the SQL API against a real server: intents, events applied once, mismatches,
UAH conversion, out-of-order events, refunds and chargebacks clawed back, expiry, and races.

Providers are not involved here: the tests hand billing.record_payment_event the facts a verified
webhook would (tests/payments/ drives the same path through the providers and the gateway).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from api.ledger import sync as ledger
from api.ledger.errors import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    InvalidState,
    NoExchangeRate,
    UnknownPayment,
    UnknownUser,
    UnsupportedCurrency,
)
from api.ledger.sync import PaymentFacts
from tests import helpers as h
from tests import helpers_concurrency as hc

D = Decimal


@pytest.fixture(autouse=True)
def _verify_ledger_after_test(request):
    yield from h.verify_ledger_after(request)


@pytest.fixture(autouse=True)
def _payment_rules_off(db):
    # These tests start many payments for new accounts and spend fresh card credit at once: the payment fraud
    # rules (tests/payments/test_fraud_sql.py) would refuse or hold them.
    h.payment_rules_off(db)


def intent(db, user_id: uuid.UUID, amount: str = "10.00", currency: str = "USD", **kw: Any) -> ledger.PaymentIntent:
    started = ledger.create_payment_intent(db, user_id, kw.pop("provider", "stripe"), D(amount), currency, **kw)
    ledger.attach_payment_checkout(db, started.intent_id, f"cs_{started.intent_id.hex}", "https://pay.example/x")
    return started


def paid(i: ledger.PaymentIntent, event_id: str | None = None, amount: str | None = None, currency: str | None = None,
         payment_ref: str | None = None, provider: str = "stripe") -> PaymentFacts:
    return PaymentFacts(
        provider=provider,
        event_id=event_id or f"evt_{uuid.uuid4().hex}",
        event_type="checkout.session.completed",
        payload='{"raw": true}',
        action="paid",
        intent_id=i.intent_id,
        external_id=f"cs_{i.intent_id.hex}",
        payment_ref=payment_ref or f"pi_{i.intent_id.hex}",
        amount=D(amount) if amount is not None else i.amount,
        currency=currency or i.currency,
    )


def refund(payment_ref: str, amount: str, currency: str = "USD", *, key: str = "refunds", kind: str = "refund",
           reinstated: bool = False, event_id: str | None = None) -> PaymentFacts:
    return PaymentFacts(
        provider="stripe",
        event_id=event_id or f"evt_{uuid.uuid4().hex}",
        event_type="charge.refunded" if kind == "refund" else "charge.dispute.created",
        payload="{}",
        action="reversal",
        payment_ref=payment_ref,
        reversal_key=key,
        reversal_kind=kind,
        reversed_amount=D(amount),
        reversal_currency=currency,
        reinstated=reinstated,
    )


def balance(db, user_id: uuid.UUID) -> D:
    return D(h.account_row(db, user_id)["balance_usd"])


def topups(db, user_id: uuid.UUID) -> list[dict[str, Any]]:
    return [row for row in h.ledger_rows(db, user_id) if row["type"] == "topup"]


# ---- intents --------------------------------------------------------------------------------------


def test_an_intent_credits_nothing_and_replays_by_key(db):
    user = h.new_user(db)
    first = ledger.create_payment_intent(db, user, "stripe", D("12.50"), "usd", idempotency_key="k1")
    assert (first.status, first.amount, first.currency, first.replayed) == ("created", D("12.50"), "USD", False)
    again = ledger.create_payment_intent(db, user, "stripe", D("12.5"), "USD", idempotency_key="k1")
    assert again.intent_id == first.intent_id and again.replayed
    with pytest.raises(IdempotencyConflict):
        ledger.create_payment_intent(db, user, "stripe", D("13"), "USD", idempotency_key="k1")
    other = ledger.create_payment_intent(db, h.new_user(db), "stripe", D("13"), "USD", idempotency_key="k1")
    assert other.intent_id != first.intent_id  # keys are per user
    assert balance(db, user) == 0 and h.ledger_rows(db, user) == []


@pytest.mark.parametrize(
    ("amount", "currency", "error"),
    [
        ("10.001", "USD", InvalidAmount),
        ("0", "USD", InvalidAmount),
        ("-5", "USD", InvalidAmount),
        ("NaN", "USD", InvalidAmount),
        ("10", "EUR", UnsupportedCurrency),
        ("100", "UAH", NoExchangeRate),
    ],
)
def test_bad_intents_are_refused_and_leave_nothing(db, amount, currency, error):
    user = h.new_user(db)
    with h.nothing_written(db), pytest.raises(error):
        ledger.create_payment_intent(db, user, "stripe", D(amount), currency)


def test_intent_for_an_unknown_user_or_with_a_bad_provider_name_is_refused(db):
    with pytest.raises(UnknownUser):
        ledger.create_payment_intent(db, uuid.uuid4(), "stripe", D(5), "USD")
    with pytest.raises(InvalidArgument):
        ledger.create_payment_intent(db, h.new_user(db), "Stripe; DROP", D(5), "USD")


def test_attach_moves_created_to_pending_once(db):
    user = h.new_user(db)
    started = ledger.create_payment_intent(db, user, "stripe", D(5), "USD")
    first = ledger.attach_payment_checkout(db, started.intent_id, "cs_1", "https://pay.example/1")
    assert (first.status, first.replayed) == ("pending", False)
    assert ledger.attach_payment_checkout(db, started.intent_id, "cs_1", "https://pay.example/1").replayed
    with pytest.raises(IdempotencyConflict):
        ledger.attach_payment_checkout(db, started.intent_id, "cs_2", "https://pay.example/2")
    with pytest.raises(UnknownPayment):
        ledger.attach_payment_checkout(db, uuid.uuid4(), "cs_3", "https://pay.example/3")


def test_a_failed_checkout_marks_only_a_created_intent(db):
    user = h.new_user(db)
    started = ledger.create_payment_intent(db, user, "fondy", D(5), "USD")
    assert ledger.fail_payment_intent(db, started.intent_id, "Fondy refused").status == "failed"
    # The user retries the same request and the checkout is created this time: the intent is payable.
    revived = ledger.attach_payment_checkout(db, started.intent_id, "order-1", "https://pay.example/o")
    assert revived.status == "pending"
    assert ledger.payment_intent(db, started.intent_id).status == "pending"
    with pytest.raises(UnknownPayment):
        ledger.fail_payment_intent(db, uuid.uuid4(), "x")


# ---- crediting ------------------------------------------------------------------------------------


def test_paid_event_credits_once_and_a_replay_is_acknowledged_and_ignored(db):
    user = h.new_user(db)
    i = intent(db, user, "25.00")
    event = paid(i, event_id="evt_1")
    result = ledger.record_payment_event(db, event)
    assert (result.outcome, result.credited_usd, result.duplicate) == ("credited", D(25), False)
    assert result.intent_status == "succeeded" and result.user_id == user
    replay = ledger.record_payment_event(db, event)
    assert replay.duplicate and replay.outcome == "credited" and replay.transaction_id == result.transaction_id
    # The same payment reported under another event id (reconciliation, a second event type) is not a credit.
    other = ledger.record_payment_event(db, paid(i, event_id="reconcile:x:paid"))
    assert other.outcome == "already_credited" and not other.duplicate
    assert balance(db, user) == D(25)
    [row] = topups(db, user)
    assert (row["payment_provider"], row["payment_id"]) == ("stripe", str(i.intent_id))
    assert row["metadata"]["event_id"] == "evt_1"
    assert h.counts(db)["payment_events"] == 2
    details = ledger.payment_intent(db, i.intent_id, user)
    assert (details.status, details.credited_usd, details.transaction_id) == ("succeeded", D(25), row["id"])
    with pytest.raises(UnknownPayment):
        ledger.payment_intent(db, i.intent_id, h.new_user(db))  # not another user's to read


def in_review(db, i: ledger.PaymentIntent, user: uuid.UUID, expected_detail: str) -> None:
    """The intent is in review with `expected_detail`, nothing was credited, and the view lists it."""
    details = ledger.payment_intent(db, i.intent_id)
    assert (details.status, details.credited_usd, details.transaction_id) == ("review", None, None)
    assert balance(db, user) == 0 and topups(db, user) == []
    assert db.execute("SELECT reason, detail FROM billing.payments_needing_review WHERE intent_id = %s",
                      (i.intent_id,)).fetchall() == [("review", expected_detail)]


def test_an_amount_other_than_asked_goes_to_review_and_credits_nothing(db):
    # Not credited as paid (45.50) with a flag: nothing is credited until an operator has looked.
    user = h.new_user(db)
    i = intent(db, user, "50.00")
    result = ledger.record_payment_event(db, paid(i, amount="45.50"))
    assert (result.outcome, result.intent_status, result.credited_usd, result.transaction_id) == (
        "review", "review", None, None)
    in_review(db, i, user, "asked 50.00 USD, paid 45.50 USD")
    # The same payment reported again (reconciliation, a second event type) stays in review.
    again = ledger.record_payment_event(db, paid(i, amount="45.50"))
    assert again.outcome == "already_in_review" and balance(db, user) == 0


def test_a_usd_intent_paid_in_uah_goes_to_review(db):
    ledger.set_exchange_rate(db, D("40"))
    user = h.new_user(db)
    i = intent(db, user, "10.00", "USD")
    result = ledger.record_payment_event(db, paid(i, amount="400.00", currency="UAH"))
    assert (result.outcome, result.credited_usd) == ("review", None)
    in_review(db, i, user, "asked 10.00 USD, paid 400.00 UAH")


def test_a_currency_the_ledger_does_not_keep_goes_to_review(db):
    user = h.new_user(db)
    i = intent(db, user, "10.00")
    result = ledger.record_payment_event(db, paid(i, amount="9.20", currency="EUR"))
    assert (result.outcome, result.intent_status, result.credited_usd) == ("review", "review", None)
    in_review(db, i, user, "asked 10.00 USD, paid 9.20 EUR")


def test_a_payment_through_another_checkout_goes_to_review_and_the_intents_own_still_credits(db):
    # Another product's paid session naming our intent must not be credited at its amount_total.
    user = h.new_user(db)
    i = intent(db, user, "25.00")
    foreign = replace(paid(i, payment_ref="pi_foreign"), external_id="cs_payment_link")
    result = ledger.record_payment_event(db, foreign)
    assert (result.outcome, result.credited_usd) == ("review", None)
    in_review(db, i, user, f"paid through checkout cs_payment_link, not the intent's checkout cs_{i.intent_id.hex}")
    # The customer pays at our own checkout: exactly what was asked, so it is credited after all, and
    # the note about the other payment stays for an operator.
    own = ledger.record_payment_event(db, paid(i))
    assert (own.outcome, own.credited_usd) == ("credited", D(25))
    details = ledger.payment_intent(db, i.intent_id)
    assert details.status == "succeeded" and "cs_payment_link" in (details.mismatch or "")
    assert db.execute("SELECT reason FROM billing.payments_needing_review WHERE intent_id = %s",
                      (i.intent_id,)).fetchall() == [("mismatch",)]
    # Another payment naming the intent after it was credited: stored for review, nothing credited.
    late = ledger.record_payment_event(db, replace(paid(i, payment_ref="pi_third"), external_id="cs_other"))
    assert (late.outcome, late.credited_usd) == ("unmatched", None)
    assert balance(db, user) == D(25)
    assert ("unmatched", i.intent_id) in db.execute(
        "SELECT reason, intent_id FROM billing.payments_needing_review").fetchall()


def test_a_payment_naming_an_intent_without_a_recorded_checkout_goes_to_review(db):
    user = h.new_user(db)
    started = ledger.create_payment_intent(db, user, "stripe", D("8.00"), "USD")  # checkout never attached
    facts = PaymentFacts(provider="stripe", event_id="evt_cut", event_type="checkout.session.completed",
                         payload="{}", action="paid", intent_id=started.intent_id, external_id="cs_cut",
                         payment_ref="pi_cut", amount=D(8), currency="USD")
    assert ledger.record_payment_event(db, facts).outcome == "review"
    in_review(db, started, user, "paid through checkout cs_cut, but the intent has no checkout recorded")
    # Once the checkout is recorded (a retried start), reconciliation's report of it credits it.
    ledger.attach_payment_checkout(db, started.intent_id, "cs_cut", "https://pay.example/cut")
    healed = ledger.record_payment_event(db, replace(facts, event_id="reconcile:cs_cut:paid"))
    assert (healed.outcome, healed.credited_usd) == ("credited", D(8))


def test_a_reason_only_the_caller_can_check_sends_the_payment_to_review(db):
    user = h.new_user(db)
    i = intent(db, user, "5.00", provider="fondy")
    facts = replace(paid(i, provider="fondy"), review_reason="merchant 42 is not this gateway's merchant 1396424")
    assert ledger.record_payment_event(db, facts).outcome == "review"
    in_review(db, i, user, "merchant 42 is not this gateway's merchant 1396424")


def test_a_payment_already_recorded_on_another_intent_is_not_credited_twice(db):
    user = h.new_user(db)
    first, second = intent(db, user, "5.00"), intent(db, user, "5.00")
    ledger.record_payment_event(db, paid(first, payment_ref="pi_shared"))
    result = ledger.record_payment_event(db, paid(second, payment_ref="pi_shared"))
    assert result.outcome == "review" and balance(db, user) == D(5)
    note = ledger.payment_intent(db, second.intent_id).mismatch or ""
    assert f"already recorded on intent {first.intent_id}" in note


def test_uah_payment_is_converted_at_the_stored_rate_and_the_rate_recorded(db):
    ledger.set_exchange_rate(db, D("41.25"))
    user = h.new_user(db)
    i = intent(db, user, "1000.00", "UAH")
    result = ledger.record_payment_event(db, paid(i))
    assert result.credited_usd == D("24.24242424")  # 1000 / 41.25, 8 places
    [row] = topups(db, user)
    assert (row["currency"], row["amount_uah"], row["exchange_rate"]) == ("UAH", D("1000.00"), D("41.25"))
    assert ledger.payment_intent(db, i.intent_id).exchange_rate == D("41.25")


def test_events_for_unknown_intents_are_stored_and_credit_nothing(db):
    ghost = PaymentFacts(provider="stripe", event_id="evt_ghost", event_type="checkout.session.completed",
                         payload="{}", action="paid", intent_id=uuid.uuid4(), external_id="cs_other",
                         amount=D(10), currency="USD")
    with h.nothing_written(db, ignore=("payment_events",)):
        result = ledger.record_payment_event(db, ghost)
    assert result.outcome == "unknown_intent" and result.transaction_id is None
    assert db.execute("SELECT reason, event_id FROM billing.payments_needing_review").fetchall() == [
        ("unknown_intent", "evt_ghost")
    ]


def test_an_event_of_another_provider_does_not_touch_the_intent(db):
    user = h.new_user(db)
    i = intent(db, user, "10.00", provider="stripe")
    result = ledger.record_payment_event(db, paid(i, provider="fondy"))
    assert result.outcome == "unknown_intent" and balance(db, user) == 0


def test_ignored_event_types_are_stored_only(db):
    facts = PaymentFacts(provider="stripe", event_id="evt_x", event_type="customer.created", payload="{}")
    assert ledger.record_payment_event(db, facts).outcome == "ignored"
    assert h.counts(db)["payment_events"] == 1


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"amount": D("10.001")}, InvalidAmount),
        ({"amount": D("-1")}, InvalidAmount),
        ({"amount": None}, InvalidAmount),
        ({"currency": "US"}, InvalidArgument),
        ({"action": "steal"}, InvalidArgument),
        ({"event_id": ""}, InvalidArgument),
        ({"provider": "Bad Name"}, InvalidArgument),
        ({"event_id": "x" * 256}, InvalidArgument),
    ],
)
def test_malformed_facts_are_refused_and_store_nothing(db, change, error):
    user = h.new_user(db)
    i = intent(db, user)
    with h.nothing_written(db), pytest.raises(error):
        ledger.record_payment_event(db, replace(paid(i), **change))


# ---- failure, expiry, out of order ----------------------------------------------------------------


def test_failed_and_expired_events_close_only_open_intents(db):
    user = h.new_user(db)
    i = intent(db, user)
    expired = PaymentFacts(provider="stripe", event_id="evt_exp", event_type="checkout.session.expired", payload="{}",
                           action="expired", intent_id=i.intent_id)
    assert ledger.record_payment_event(db, expired).intent_status == "expired"
    # Success after expiry: the money was taken, so it is credited.
    late = ledger.record_payment_event(db, paid(i))
    assert (late.outcome, late.intent_status) == ("credited", "succeeded")
    # An expiry (or failure) reported after the success changes nothing.
    again = PaymentFacts(provider="stripe", event_id="evt_fail", event_type="checkout.session.async_payment_failed",
                         payload="{}", action="failed", intent_id=i.intent_id)
    assert ledger.record_payment_event(db, again).outcome == "ignored"
    assert balance(db, user) == D(10)


def test_stale_intents_expire_and_still_credit_if_paid_later(db):
    user = h.new_user(db)
    start = h.at(2026, 3, 1, 12)
    h.set_clock(db, start)
    stale = intent(db, user, ttl=dt.timedelta(minutes=30))
    fresh_started = start + dt.timedelta(minutes=50)
    h.set_clock(db, fresh_started)
    fresh = intent(db, user, ttl=dt.timedelta(minutes=30))
    h.set_clock(db, start + dt.timedelta(minutes=61))
    assert ledger.expire_payment_intents(db) == 1
    assert ledger.expire_payment_intents(db) == 0
    assert ledger.payment_intent(db, stale.intent_id).status == "expired"
    assert ledger.payment_intent(db, fresh.intent_id).status == "pending"
    assert [o.intent_id for o in ledger.open_payment_intents(db, min_age=dt.timedelta(0))] == [
        stale.intent_id, fresh.intent_id
    ]
    assert ledger.record_payment_event(db, paid(stale)).outcome == "credited"
    h.set_clock(db, None)


def test_refund_before_success_is_kept_and_applied_when_the_payment_is_credited(db):
    user = h.new_user(db)
    i = intent(db, user, "20.00")
    early = ledger.record_payment_event(db, refund(f"pi_{i.intent_id.hex}", "5.00"))
    assert early.outcome == "deferred" and balance(db, user) == 0
    result = ledger.record_payment_event(db, paid(i))
    assert result.outcome == "credited,reversed" and result.reversed_usd == D(5)
    assert balance(db, user) == D(15)


# ---- refunds and chargebacks ----------------------------------------------------------------------


def test_refund_after_success_is_clawed_back_and_may_take_the_balance_below_zero(db):
    user = h.new_user(db)
    i = intent(db, user, "10.00")
    credit = ledger.record_payment_event(db, paid(i))
    ledger.charge(db, user, "spent-1", D("7.5"))
    result = ledger.record_payment_event(db, refund(f"pi_{i.intent_id.hex}", "10.00"))
    assert (result.outcome, result.reversed_usd) == ("reversed", D(10))
    assert balance(db, user) == D("-7.5")
    clawback = h.ledger_rows(db, user)[-1]
    assert (clawback["type"], clawback["amount_usd"], clawback["refund_of"]) == ("adjustment", D(-10),
                                                                                 credit.transaction_id)
    assert clawback["actor"] == "payment:stripe"
    with pytest.raises(InsufficientFunds):
        ledger.charge(db, user, "spent-2", D("0.01"))  # refused until repaid
    assert ledger.payment_intent(db, i.intent_id).reversed_usd == D(10)


def test_cumulative_refunds_apply_the_difference_whatever_their_order(db):
    user = h.new_user(db)
    i = intent(db, user, "30.00")
    ledger.record_payment_event(db, paid(i))
    ref = f"pi_{i.intent_id.hex}"
    assert ledger.record_payment_event(db, refund(ref, "12.00")).reversed_usd == D(12)
    assert ledger.record_payment_event(db, refund(ref, "5.00")).outcome == "already_reversed"  # older, arrived late
    assert ledger.record_payment_event(db, refund(ref, "20.00")).reversed_usd == D(8)
    assert ledger.record_payment_event(db, refund(ref, "99.00")).reversed_usd == D(10)  # never past the credit
    assert balance(db, user) == 0


def test_uah_refund_converts_at_the_top_ups_rate_and_a_full_one_takes_back_exactly_the_credit(db):
    ledger.set_exchange_rate(db, D("41.25"))
    user = h.new_user(db)
    i = intent(db, user, "1000.00", "UAH")
    ledger.record_payment_event(db, paid(i))
    ledger.set_exchange_rate(db, D("50"))  # a later rate does not change the top-up's
    ref = f"pi_{i.intent_id.hex}"
    assert ledger.record_payment_event(db, refund(ref, "412.50", "UAH")).reversed_usd == D(10)
    assert ledger.record_payment_event(db, refund(ref, "1000.00", "UAH")).reversed_usd == D("14.24242424")
    row = h.ledger_rows(db, user)[-1]
    assert (row["currency"], row["exchange_rate"], row["amount_uah"]) == ("UAH", D("41.25"), D("-587.50"))
    assert balance(db, user) == 0 and D(h.account_row(db, user)["balance_uah"]) == 0


def test_chargeback_is_clawed_back_and_given_back_when_won(db):
    user = h.new_user(db)
    i = intent(db, user, "40.00")
    ledger.record_payment_event(db, paid(i))
    ref = f"pi_{i.intent_id.hex}"
    lost = ledger.record_payment_event(db, refund(ref, "40.00", key="dispute:dp_1", kind="chargeback"))
    assert lost.reversed_usd == D(40) and balance(db, user) == 0
    won = ledger.record_payment_event(db, refund(ref, "40.00", key="dispute:dp_1", kind="chargeback", reinstated=True))
    assert (won.outcome, won.reversed_usd) == ("reinstated", D(-40))
    # A late "dispute created" after the dispute was won changes nothing.
    late = ledger.record_payment_event(db, refund(ref, "40.00", key="dispute:dp_1", kind="chargeback"))
    assert late.outcome == "already_reversed"
    assert balance(db, user) == D(40)


def test_reversal_in_another_currency_is_flagged_not_applied(db):
    user = h.new_user(db)
    i = intent(db, user, "10.00")
    ledger.record_payment_event(db, paid(i))
    result = ledger.record_payment_event(db, refund(f"pi_{i.intent_id.hex}", "10.00", "EUR"))
    assert result.reversed_usd == 0 and balance(db, user) == D(10)
    assert "reported in EUR" in (ledger.payment_intent(db, i.intent_id).mismatch or "")


# ---- races --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_deliveries_of_one_event_credit_once(db, connect, db_url):
    # 48 sessions (the test server allows 100 connections in all); 100 concurrent HTTP deliveries
    # through the gateway's pool are in tests/payments/test_webhooks.py.
    user = h.new_user(db)
    i = intent(db, user, "33.33")
    event = paid(i, event_id="evt_dup")
    conns = hc.open_connections(connect, db_url, 48)
    outcomes = hc.run_together(conns, lambda _n, c: ledger.record_payment_event(c, event))
    hc.assert_only(outcomes)
    results = hc.values_of(outcomes)
    assert sum(not r.duplicate for r in results) == 1
    assert {r.transaction_id for r in results} == {results[0].transaction_id}
    assert balance(db, user) == D("33.33") and len(topups(db, user)) == 1
    assert h.counts(db)["payment_events"] == 1


def test_concurrent_starts_with_one_idempotency_key_make_one_intent(db, connect, db_url):
    user = h.new_user(db)
    conns = hc.open_connections(connect, db_url, 16)
    outcomes = hc.run_together(
        conns, lambda _n, c: ledger.create_payment_intent(c, user, "stripe", D("20.00"), "USD", "same-click")
    )
    hc.assert_only(outcomes)
    results = hc.values_of(outcomes)
    assert len({r.intent_id for r in results}) == 1 and sum(not r.replayed for r in results) == 1
    assert h.counts(db)["payment_intents"] == 1


@pytest.mark.slow
def test_webhook_racing_reconciliation_and_a_second_worker_credit_once(db, connect, db_url):
    user = h.new_user(db)
    intents = [intent(db, user, "5.00") for _ in range(20)]
    conns = hc.open_connections(connect, db_url, 12)

    def work(n: int, c: Any) -> list[ledger.PaymentEventResult]:
        # 4 webhook workers (same event ids), 4 reconcilers (their own ids), 4 with a refund of 1.00.
        results = []
        for item in intents:
            if n < 4:
                results.append(ledger.record_payment_event(c, paid(item, event_id=f"evt_{item.intent_id}")))
            elif n < 8:
                results.append(ledger.record_payment_event(c, paid(item, event_id=f"reconcile:{item.intent_id}")))
            else:
                results.append(ledger.record_payment_event(
                    c, refund(f"pi_{item.intent_id.hex}", "1.00", event_id=f"evt_refund_{item.intent_id}")))
        return results

    outcomes = hc.run_together(conns, work)
    hc.assert_only(outcomes)
    assert len(topups(db, user)) == 20
    # Every payment credited 5 and clawed back 1, once, whichever came first.
    assert balance(db, user) == D(80)
    applied = [r for rs in hc.values_of(outcomes) for r in rs if not r.duplicate]
    credited = [r for r in applied if "credited" in r.outcome.split(",")]
    assert len(credited) == 20


def test_migration_0005_rolls_back_alone_and_reapplies(db_url, conn):
    from api.ops import migrate
    from tests.conftest import DB_DIR
    from tests.helpers import catalog_snapshot, migration_ids

    before = catalog_snapshot(db_url)
    # The later migrations (0006 role split, ...) go first and come back with it.
    later = [m for m in migration_ids() if m > "0005_payments"]
    assert migrate.downgrade(db_url, DB_DIR, "0004_gateway") == [*later[::-1], "0005_payments"]
    gone = conn.execute(
        "SELECT to_regclass('billing.payment_intents'), to_regclass('billing.payment_events'),"
        " to_regclass('billing.payments'), to_regprocedure('billing.fail_payment_intent(uuid, text)')"
    ).fetchone()
    assert gone == (None, None, None, None)
    assert migrate.upgrade(db_url, DB_DIR) == ["0005_payments", *later]
    assert catalog_snapshot(db_url) == before


@pytest.mark.slow
def test_reversals_racing_paid_replays_of_credited_payments_never_deadlock(db, connect, db_url):
    # A refund names the payment only (Stripe charge.refunded: payment_intent); a reconciliation or a
    # second event type names our intent too. Both lock the payment in the same order.
    user = h.new_user(db)
    intents = [intent(db, user, "5.00") for _ in range(15)]
    for item in intents:
        ledger.record_payment_event(db, paid(item))
    conns = hc.open_connections(connect, db_url, 10)

    def work(n: int, c: Any) -> None:
        for round_ in range(3):
            for item in intents if n % 2 else reversed(intents):
                if n < 5:
                    ledger.record_payment_event(c, paid(item, event_id=f"replay-{n}-{round_}-{item.intent_id}"))
                else:
                    amount = f"{(n - 4) * 0.5 + round_ * 0.1:.2f}"
                    ledger.record_payment_event(c, refund(f"pi_{item.intent_id.hex}", amount))

    outcomes = hc.run_together(conns, work)
    hc.assert_only(outcomes)
    # Cumulative refunds: the largest reported (5 * 0.5 + 0.2 = 2.70) wins for every payment.
    assert balance(db, user) == 15 * (D(5) - D("2.70"))


def test_a_reversal_that_names_no_payment_takes_nothing(db):
    # plpgsql_check found this branch appending a text literal to a text[] (parsed as an array literal).
    user = h.new_user(db)
    i = intent(db, user)
    facts = PaymentFacts(provider="stripe", event_id="evt_norefs", event_type="charge.refunded", payload="{}",
                         action="reversal", intent_id=i.intent_id, reversal_key="refunds", reversal_kind="refund",
                         reversed_amount=D(1), reversal_currency="USD")
    result = ledger.record_payment_event(db, facts)
    assert result.outcome == "unknown_intent" and result.detail == "the reversal names no payment: nothing taken back"
    assert h.counts(db)["payment_reversals"] == 0


# ---- review: an operator credits what was not credited automatically ------------------------------


def test_an_operator_credits_a_payment_in_review_once_with_actor_and_reason_recorded(db):
    user = h.new_user(db)
    i = intent(db, user, "50.00")
    ledger.record_payment_event(db, paid(i, amount="40.00"))
    credit = ledger.credit_reviewed_payment(db, i.intent_id, "user:ops@example.com", "paid 40 of 50, agreed")
    assert (credit.status, credit.amount, credit.currency, credit.credited_usd, credit.replayed) == (
        "succeeded", D(40), "USD", D(40), False)
    assert balance(db, user) == D(40)
    [row] = topups(db, user)
    assert (row["payment_provider"], row["payment_id"], row["amount_usd"]) == ("stripe", str(i.intent_id), D(40))
    assert row["metadata"]["reviewed_by"] == "user:ops@example.com"
    assert row["metadata"]["review_reason"] == "paid 40 of 50, agreed"
    assert row["metadata"]["mismatch"] == "asked 50.00 USD, paid 40.00 USD"
    intent_row = db.execute("SELECT status, reviewed_by, review_reason, reviewed_at IS NOT NULL, mismatch"
                            " FROM billing.payment_intents WHERE id = %s", (i.intent_id,)).fetchone()
    assert intent_row == ("succeeded", "user:ops@example.com", "paid 40 of 50, agreed", True, None)
    assert db.execute("SELECT count(*) FROM billing.payments_needing_review WHERE intent_id = %s",
                      (i.intent_id,)).fetchone() == (0,)  # looked at
    # A replay returns the original credit; other figures are a conflict; nothing more is credited.
    again = ledger.credit_reviewed_payment(db, i.intent_id, "user:other", "again")
    assert again.replayed and again.transaction_id == credit.transaction_id
    with pytest.raises(IdempotencyConflict):
        ledger.credit_reviewed_payment(db, i.intent_id, "user:ops@example.com", "more", D(50))
    # The provider's later reports of the same payment change nothing.
    assert ledger.record_payment_event(db, paid(i, amount="40.00")).outcome == "already_credited"
    assert balance(db, user) == D(40) and len(topups(db, user)) == 1


def test_an_operator_converts_a_payment_in_a_currency_the_ledger_does_not_keep(db):
    ledger.set_exchange_rate(db, D("40"))
    user = h.new_user(db)
    i = intent(db, user, "20.00")
    ledger.record_payment_event(db, paid(i, amount="20.00", currency="EUR"))
    with pytest.raises(UnsupportedCurrency):
        ledger.credit_reviewed_payment(db, i.intent_id, "ops", "as paid")  # 20 EUR cannot be credited as is
    with pytest.raises(InvalidArgument):
        ledger.credit_reviewed_payment(db, i.intent_id, "ops", "in USD", currency="USD")  # how much?
    credit = ledger.credit_reviewed_payment(db, i.intent_id, "ops", "20 EUR at 1.08", D("21.60"), "usd")
    assert (credit.amount, credit.currency, credit.credited_usd) == (D("21.60"), "USD", D("21.60"))
    # A partial refund in the payment's currency takes back its share of the credit.
    ref = f"pi_{i.intent_id.hex}"
    assert ledger.record_payment_event(db, refund(ref, "5.00", "EUR")).reversed_usd == D("5.40")
    assert ledger.record_payment_event(db, refund(ref, "20.00", "EUR")).reversed_usd == D("16.20")
    assert balance(db, user) == 0


@pytest.mark.parametrize("state", ["pending", "succeeded", "expired"])
def test_only_a_payment_in_review_is_credited_by_hand(db, state):
    user = h.new_user(db)
    i = intent(db, user, "5.00")
    if state == "succeeded":
        ledger.record_payment_event(db, paid(i))
    elif state == "expired":
        ledger.record_payment_event(db, PaymentFacts(provider="stripe", event_id="evt_e", event_type="x",
                                                     payload="{}", action="expired", intent_id=i.intent_id))
    before = balance(db, user)
    with h.nothing_written(db), pytest.raises(InvalidState) as refused:
        ledger.credit_reviewed_payment(db, i.intent_id, "ops", "why not", D(5), "USD")
    assert refused.value.detail["status"] == state
    assert balance(db, user) == before
    with pytest.raises(UnknownPayment):
        ledger.credit_reviewed_payment(db, uuid.uuid4(), "ops", "x")
    with pytest.raises(InvalidArgument):
        ledger.credit_reviewed_payment(db, i.intent_id, "ops", " ")  # a reason is required


def test_a_reversal_of_a_payment_in_review_claws_nothing_back_until_an_operator_credits_it(db):
    user = h.funded_user(db, D(3))
    i = intent(db, user, "10.00")
    ledger.record_payment_event(db, paid(i, amount="8.00"))
    ref = f"pi_{i.intent_id.hex}"
    early = ledger.record_payment_event(db, refund(ref, "8.00"))
    assert (early.outcome, early.reversed_usd) == ("deferred", D(0))
    assert balance(db, user) == D(3)  # the user's own money is untouched: this payment was never credited
    credit = ledger.credit_reviewed_payment(db, i.intent_id, "ops", "late look")
    assert (credit.credited_usd, credit.reversed_usd) == (D(8), D(8))  # refunded since: taken back with it
    assert balance(db, user) == D(3)


def test_verify_ledger_flags_a_credit_of_other_figures_than_asked_without_review(db):
    user = h.new_user(db)
    i = intent(db, user, "10.00")
    ledger.record_payment_event(db, paid(i))
    assert ledger.verify_ledger(db) == []
    db.execute("UPDATE billing.payment_intents SET amount = 9.99 WHERE id = %s", (i.intent_id,))
    [violation] = ledger.verify_ledger(db)
    assert violation.invariant == "payments" and "without an operator's review" in violation.detail
    db.execute("UPDATE billing.payment_intents SET amount = 10 WHERE id = %s", (i.intent_id,))
    # Clawed back from a payment that was never credited: also flagged.
    other = intent(db, user, "5.00")
    ledger.record_payment_event(db, paid(other, amount="4.00"))
    db.execute("INSERT INTO billing.payment_reversals (provider, payment_ref, reversal_key, kind, currency, amount,"
               " clawed_usd) VALUES ('stripe', %s, 'refunds', 'refund', 'USD', 1, 1)", (f"pi_{other.intent_id.hex}",))
    assert [v.invariant for v in ledger.verify_ledger(db)] == ["reversals"]
    db.execute("DELETE FROM billing.payment_reversals WHERE payment_ref = %s", (f"pi_{other.intent_id.hex}",))


def test_a_payload_over_64_kib_is_refused_and_stores_nothing(db):
    user = h.new_user(db)
    i = intent(db, user)
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.record_payment_event(db, replace(paid(i), payload="x" * 65537))
    with h.nothing_written(db), pytest.raises(InvalidArgument):
        ledger.record_payment_event(db, replace(paid(i), payload="я" * 32769))  # bytes, not characters
    assert ledger.record_payment_event(db, replace(paid(i), payload="x" * 65536)).outcome == "credited"


@pytest.mark.slow
def test_an_operator_credit_racing_the_intents_own_payment_credits_once(db, connect, db_url):
    user = h.new_user(db)
    intents = [intent(db, user, "5.00") for _ in range(10)]
    for item in intents:  # another product's payment put each in review
        ledger.record_payment_event(db, replace(paid(item, payment_ref=f"pi_other_{item.intent_id.hex}"),
                                                external_id="cs_other"))
    conns = hc.open_connections(connect, db_url, 8)

    def work(n: int, c: Any) -> None:
        for item in intents:
            try:
                if n % 2:
                    ledger.credit_reviewed_payment(c, item.intent_id, f"ops-{n}", "looked")
                else:
                    ledger.record_payment_event(c, paid(item, event_id=f"evt_own_{n}_{item.intent_id}"))
            except (InvalidState, IdempotencyConflict):
                pass  # the other path got there first (or another operator, with the same figures: a replay)

    outcomes = hc.run_together(conns, work)
    hc.assert_only(outcomes)
    assert len(topups(db, user)) == 10 and balance(db, user) == D(50)


def test_migration_0007_labels_credits_made_as_paid_before_it_and_rolls_back_alone(db_url, conn):
    from api.ops import migrate
    from tests.conftest import DB_DIR
    from tests.helpers import catalog_snapshot

    before = catalog_snapshot(db_url)
    # What 0005's record_payment_event did with a mismatch: credit what was paid, flag it. Written before
    # rolling back, by the current functions (later migrations change what the ledger rows carry).
    user = ledger.ensure_account(conn, "legacy-user")
    i = ledger.create_payment_intent(conn, user, "stripe", D(50), "USD")
    credit = ledger.top_up(conn, user, D(40), "stripe", str(i.intent_id))
    assert migrate.downgrade(db_url, DB_DIR, "0006_role_split")[-1] == "0007_payment_review"
    assert conn.execute("SELECT to_regprocedure('billing.credit_reviewed_payment(uuid, text, text, numeric, text)')"
                        ).fetchone() == (None,)
    conn.execute(
        "UPDATE billing.payment_intents SET status = 'succeeded', paid_amount = 40, paid_currency = 'USD',"
        " transaction_id = %s, credited_usd = 40, mismatch = 'asked 50.00 USD, paid 40.00 USD' WHERE id = %s",
        (credit.transaction_id, i.intent_id))
    migrate.upgrade(db_url, DB_DIR)
    assert conn.execute("SELECT reviewed_by, review_reason FROM billing.payment_intents WHERE id = %s",
                        (i.intent_id,)).fetchone() == (
        "migration:0007", "credited as paid before payments went to review: asked 50.00 USD, paid 40.00 USD")
    assert ledger.verify_ledger(conn) == []
    assert catalog_snapshot(db_url) == before
