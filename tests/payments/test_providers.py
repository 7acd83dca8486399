"""The provider modules on their own: configuration, signature verification and how each event type is
reduced to facts (no gateway, no database; the end-to-end flows are in test_gateway_payments.py)."""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from api.gateway.config import load_settings
from api.payments.base import CommonSettings, WebhookRejected, from_minor_units, minor_units
from api.payments.providers import fondy, stripe_checkout
from api.payments.registry import amount_bounds, load_providers, provider_modules
from tests.payments.fakes import FakeStripe, fondy_signature, sign_stripe

SECRET = "whsec_unit"
COMMON = CommonSettings()


@pytest.fixture
def stripe_provider():
    return stripe_checkout.StripeProvider("sk_test_unit", SECRET, COMMON, api_base="http://127.0.0.1:9")


@pytest.fixture
def fondy_provider():
    return fondy.FondyProvider(1396424, "fondy-key", COMMON, api_base="http://127.0.0.1:9")


def stripe_delivery(kind: str, obj: dict[str, Any], timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    payload, headers = FakeStripe.delivery(FakeStripe.event(kind, obj), SECRET, timestamp)
    return payload, {k.lower(): v for k, v in headers.items()}


# ---- registry and configuration -------------------------------------------------------------------


def test_every_module_in_providers_is_a_provider_and_none_is_configured_by_default():
    assert set(provider_modules()) == {"stripe_checkout", "fondy"}
    assert load_providers({}) == {}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOLLGATE_STRIPE_SECRET_KEY": "sk_test_x"}, "TOLLGATE_STRIPE_WEBHOOK_SECRET not set"),
        ({"TOLLGATE_STRIPE_WEBHOOK_SECRET": "whsec_x"}, "TOLLGATE_STRIPE_SECRET_KEY not set"),
        ({"TOLLGATE_STRIPE_SECRET_KEY": "pk_live_x", "TOLLGATE_STRIPE_WEBHOOK_SECRET": "whsec_x"}, "secret key"),
        ({"TOLLGATE_FONDY_MERCHANT_ID": "123"}, "TOLLGATE_FONDY_PASSWORD not set"),
        ({"TOLLGATE_FONDY_MERCHANT_ID": "abc", "TOLLGATE_FONDY_PASSWORD": "k"}, "merchant id"),
        ({"TOLLGATE_TOPUP_MIN_USD": "-1"}, "TOLLGATE_TOPUP_MIN_USD"),
        ({"TOLLGATE_TOPUP_MAX_UAH": "1.001"}, "TOLLGATE_TOPUP_MAX_UAH"),
        ({"TOLLGATE_TOPUP_MIN_USD": "50", "TOLLGATE_TOPUP_MAX_USD": "10"}, "above"),
        ({"TOLLGATE_PAYMENT_TTL_MINUTES": "5"}, "TOLLGATE_PAYMENT_TTL_MINUTES"),
        ({"TOLLGATE_PUBLIC_URL": "ftp://x"}, "TOLLGATE_PUBLIC_URL"),
    ],
)
def test_bad_payment_configuration_fails_at_start_naming_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        load_settings(env)


def test_amount_bounds_default_and_configured():
    assert amount_bounds({})["USD"] == (Decimal("1.00"), Decimal("1000.00"))
    assert amount_bounds({"TOLLGATE_TOPUP_MIN_UAH": "20", "TOLLGATE_TOPUP_MAX_UAH": "100.50"})["UAH"] == (
        Decimal(20), Decimal("100.50"))


def test_minor_units_are_exact():
    assert minor_units(Decimal("25.10")) == 2510
    with pytest.raises(ValueError):
        minor_units(Decimal("0.001"))
    assert from_minor_units(2510, "a") == Decimal("25.10")
    assert from_minor_units("99", "a") == Decimal("0.99")
    for bad in (True, -1, "1e3", 1.5, None, "12" * 10, Decimal("1.5")):
        with pytest.raises(WebhookRejected):
            from_minor_units(bad, "a")


# ---- Stripe ---------------------------------------------------------------------------------------


def session(**changes: Any) -> dict[str, Any]:
    intent = str(uuid.uuid4())
    return {"id": "cs_1", "object": "checkout.session", "payment_status": "paid", "status": "complete",
            "amount_total": 1234, "currency": "usd", "client_reference_id": intent, "payment_intent": "pi_1",
            "metadata": {"tollgate_intent": intent}, **changes}


def test_stripe_checkout_events_become_facts(stripe_provider):
    obj = session()
    facts = stripe_provider.parse_webhook(*stripe_delivery("checkout.session.completed", obj))
    assert (facts.action, facts.amount, facts.currency, str(facts.intent_id)) == (
        "paid", Decimal("12.34"), "USD", obj["client_reference_id"])
    assert (facts.external_id, facts.payment_ref) == ("cs_1", "pi_1")
    unpaid_session = session(payment_status="unpaid")
    unpaid = stripe_provider.parse_webhook(*stripe_delivery("checkout.session.completed", unpaid_session))
    assert unpaid.action == "ignore"  # an async payment method: wait for async_payment_succeeded
    later = stripe_provider.parse_webhook(*stripe_delivery("checkout.session.async_payment_succeeded", session()))
    assert later.action == "paid"
    failed = stripe_provider.parse_webhook(*stripe_delivery("checkout.session.async_payment_failed", session()))
    assert failed.action == "failed"
    expired = stripe_provider.parse_webhook(*stripe_delivery("checkout.session.expired", session()))
    assert expired.action == "expired"
    # Not ours (no intent reference): parsed, the ledger answers unknown_intent.
    foreign = stripe_provider.parse_webhook(
        *stripe_delivery("checkout.session.completed", session(client_reference_id=None, metadata={})))
    assert foreign.intent_id is None


def test_stripe_refunds_and_disputes_become_reversals(stripe_provider):
    charge = {"id": "ch_1", "object": "charge", "amount_refunded": 500, "currency": "usd", "payment_intent": "pi_1"}
    refund = stripe_provider.parse_webhook(*stripe_delivery("charge.refunded", charge))
    assert (refund.action, refund.reversal_key, refund.reversed_amount, refund.payment_ref) == (
        "reversal", "refunds", Decimal(5), "pi_1")
    dispute = {"id": "dp_1", "object": "dispute", "amount": 1234, "currency": "usd", "payment_intent": "pi_1",
               "status": "needs_response"}
    opened = stripe_provider.parse_webhook(*stripe_delivery("charge.dispute.created", dispute))
    assert (opened.reversal_key, opened.reversal_kind, opened.reinstated) == ("dispute:dp_1", "chargeback", False)
    won = stripe_provider.parse_webhook(*stripe_delivery("charge.dispute.closed", {**dispute, "status": "won"}))
    assert won.reinstated
    inquiry = stripe_provider.parse_webhook(
        *stripe_delivery("charge.dispute.created", {**dispute, "status": "warning_needs_response"}))
    assert inquiry.action == "ignore"  # no funds withdrawn


def test_stripe_signature_problems_are_rejected(stripe_provider):
    payload, _ = stripe_delivery("checkout.session.completed", session())
    now = int(time.time())
    for bad in (
        {},
        {"stripe-signature": ""},
        {"stripe-signature": sign_stripe(payload, "whsec_other")},
        {"stripe-signature": sign_stripe(payload, SECRET, now - 301)},
        {"stripe-signature": sign_stripe(payload, SECRET, now + 301)},
        {"stripe-signature": f"t={now},v0=" + "0" * 64},
    ):
        with pytest.raises(WebhookRejected):
            stripe_provider.parse_webhook(payload, bad)
    not_an_event = json.dumps({"id": "x", "object": "charge"}).encode()
    with pytest.raises(WebhookRejected, match="not a Stripe event"):
        stripe_provider.parse_webhook(not_an_event, {"stripe-signature": sign_stripe(not_an_event, SECRET)})
    huge_amount = FakeStripe.event("checkout.session.completed", session(amount_total=10**16))
    body = json.dumps(huge_amount).encode()
    with pytest.raises(WebhookRejected, match=r"out of range|not an integer"):
        stripe_provider.parse_webhook(body, {"stripe-signature": sign_stripe(body, SECRET)})


# ---- Fondy ----------------------------------------------------------------------------------------


def fondy_fields(**changes: Any) -> dict[str, Any]:
    fields = {"order_id": str(uuid.uuid4()), "merchant_id": 1396424, "order_status": "approved", "amount": "41250",
              "currency": "UAH", "actual_amount": "41250", "actual_currency": "UAH", "payment_id": 8123,
              "reversal_amount": "0", "response_status": "success", "masked_card": "444455XXXXXX1111",
              "sender_email": "", **changes}
    fields["signature"] = fondy_signature("fondy-key", fields)
    return fields


def test_a_fondy_callback_is_only_a_prompt_to_ask_the_status_api(fondy_provider):
    # Fondy signs values, not names: a callback's fields cannot be believed; it names the order
    # to ask about, and recorded as it is it would credit nothing.
    headers = {"content-type": "application/json"}
    fields = fondy_fields()
    prompt = fondy_provider.parse_webhook(json.dumps(fields).encode(), headers)
    assert (prompt.action, prompt.amount, prompt.external_id, str(prompt.intent_id)) == (
        "ignore", None, fields["order_id"], fields["order_id"])
    wrapped = fondy_provider.parse_webhook(json.dumps({"response": fields}).encode(), headers)
    shouting = fondy_provider.parse_webhook(json.dumps({**fields, "signature": fields["signature"].upper()}).encode(),
                                            headers)
    assert wrapped.event_id == shouting.event_id == prompt.event_id


def test_fondy_order_states_become_facts_named_by_the_state(fondy_provider):
    def facts(**changes: Any) -> Any:
        return fondy_provider._facts(fondy_fields(**changes), "{}")

    approved = facts(order_id="o-1")
    assert (approved.action, approved.amount, approved.currency) == ("paid", Decimal("412.50"), "UAH")
    assert (approved.payment_ref, approved.reversal_key, approved.review_reason) == ("8123", None, None)
    assert approved.event_id == "order:o-1:approved:8123:0"
    assert facts(order_id="o-1", payment_id="8123").event_id == approved.event_id  # int or text: one state
    partial = facts(order_id="o-1", reversal_amount="1000")
    assert (partial.action, partial.reversal_key, partial.reversed_amount) == ("paid", "refunds", Decimal(10))
    assert partial.event_id == "order:o-1:approved:8123:1000"
    reversed_all = facts(order_status="reversed", reversal_amount="41250")
    assert reversed_all.reversed_amount == Decimal("412.50")
    assert facts(order_status="declined").action == "failed"
    assert facts(order_status="expired").action == "expired"
    assert facts(order_status="processing").action == "ignore"
    # Fondy's two amounts disagree, or another merchant: paid, with a reason that sends it to review.
    short = facts(actual_amount="40000")
    assert (short.amount, short.review_reason) == (Decimal(400), "Fondy order of 412.50 UAH reports 400.00 UAH paid")
    other = facts(merchant_id=42)
    assert other.review_reason == "Fondy merchant 42 is not ours (1396424)"
    no_actual = facts(actual_amount="", actual_currency="")
    assert (no_actual.amount, no_actual.currency, no_actual.review_reason) == (Decimal("412.50"), "UAH", None)


def test_fondy_bad_callbacks_are_rejected(fondy_provider):
    headers = {"content-type": "application/json"}
    fields = fondy_fields()
    cases = [
        {**fields, "signature": "0" * 40},
        {**fields, "actual_amount": "99999999"},  # changed after signing
        {k: v for k, v in fields.items() if k != "signature"},
        {**fondy_fields(merchant_id=1), "signature": fondy_signature("fondy-key", {**fields, "merchant_id": 1})},
        {"nested": {"a": 1}},
    ]
    for case in cases:
        with pytest.raises(WebhookRejected):
            fondy_provider.parse_webhook(json.dumps(case).encode(), headers)
    with pytest.raises(WebhookRejected):
        fondy_provider.parse_webhook(b"[1, 2]", headers)
    with pytest.raises(WebhookRejected):
        fondy_provider.parse_webhook(b"\xff", headers)


def test_webhooks_are_public_paths_even_when_anonymous_callers_are_refused():
    from api.gateway.http.endpoints import is_public

    assert is_public("/api/payments/stripe/webhook") and is_public("/api/payments/fondy/webhook")
    assert not is_public("/api/payments/stripe/webhook/x") and not is_public("/api/payments/../billing/balance")
    assert not is_public("/api/billing/topup")


@pytest.mark.parametrize("bad_id", [" ", "", "evt\x00", "evt\n1", "x" * 256])
def test_verified_events_with_ids_the_ledger_would_refuse_are_rejected_as_malformed(stripe_provider, bad_id):
    # The fuzz found a validly signed event with id " " reaching the ledger (422, which a provider
    # retries for days): ids are checked where the event is parsed, and refused with 400.
    event = {**FakeStripe.event("checkout.session.completed", session()), "id": bad_id}
    body = json.dumps(event).encode()
    with pytest.raises(WebhookRejected, match="event id"):
        stripe_provider.parse_webhook(body, {"stripe-signature": sign_stripe(body, SECRET)})


@pytest.mark.parametrize("bad", ["usd1", "US", "ДОЛ", "", 840])
def test_currencies_the_ledger_would_refuse_are_rejected_when_parsed(stripe_provider, fondy_provider, bad):
    body = json.dumps(FakeStripe.event("checkout.session.completed", session(currency=bad))).encode()
    with pytest.raises(WebhookRejected, match="currency"):
        stripe_provider.parse_webhook(body, {"stripe-signature": sign_stripe(body, SECRET)})
    fields = fondy_fields(actual_currency=bad, currency=bad)
    with pytest.raises(WebhookRejected, match="currency"):
        fondy_provider._facts(fields, "{}")
