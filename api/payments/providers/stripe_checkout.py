"""Stripe: Checkout Sessions through the official ``stripe`` SDK, webhooks verified by the SDK.

Environment (both or neither):
  TOLLGATE_STRIPE_SECRET_KEY       the API secret key (sk_live_... / sk_test_... / rk_...)
  TOLLGATE_STRIPE_WEBHOOK_SECRET   the endpoint's signing secret (whsec_...)
  TOLLGATE_STRIPE_API_BASE         optional: another API base URL (tests point it at a local double)

A top-up is one Checkout Session in payment mode: one line item of the amount, our intent id as
``client_reference_id`` and in the metadata of the session and of its PaymentIntent, created with the
intent id as Stripe idempotency key (a retried start returns the same session). Its id is recorded on
the intent (``billing.attach_payment_checkout``).

Webhooks: the signature (HMAC-SHA256 of a timestamp and the whole body, with the endpoint's secret) is
verified by the SDK, and a timestamp more than the tolerance in the future is refused too; bodies over
64 KiB are refused before that. Stripe signs all of the body and sends it server to server, so the
event is recorded as Stripe states it (``confirm`` adds no round trip). What is credited is decided by
``billing.record_payment_event``: only a paid session whose id is the checkout recorded on the intent,
at the intent's amount and currency. Any other paid session naming the intent -- another product of
the same Stripe account, such as a Payment Link opened with ``?client_reference_id=<intent>``, or a
session paid for another amount or currency -- is stored and goes to review, uncredited.

Reconciliation retrieves the session recorded on the intent with its PaymentIntent and latest charge
(paid? refunded?) and, when the charge is disputed, the payment's disputes.

Events acted on (anything else is stored and ignored):
  checkout.session.completed (payment_status paid), checkout.session.async_payment_succeeded -> paid
  checkout.session.async_payment_failed -> failed;  checkout.session.expired -> expired
  charge.refunded -> reversal bucket "refunds" = the charge's cumulative amount_refunded
  charge.dispute.created / updated / funds_withdrawn / closed / funds_reinstated -> bucket
      "dispute:<id>" = the disputed amount; reinstated when the dispute is won (inquiries, status
      warning_*, withdraw no funds and are ignored)
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import stripe

from api.jsonio import JSONBodyError, dumps, loads
from api.ledger.types import OpenIntent, PaymentFacts
from api.payments.base import (
    MAX_EVENT_BYTES,
    Checkout,
    CheckoutRequest,
    CommonSettings,
    ProviderConfigError,
    ProviderUnavailable,
    WebhookRejected,
    api_base,
    credentials,
    currency_code,
    from_minor_units,
    identifier,
    minor_units,
)

NAME = "stripe"
PAID_EVENTS = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})
DISPUTE_EVENTS = frozenset(
    {
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.closed",
        "charge.dispute.funds_reinstated",
    }
)


def from_env(env: Mapping[str, str], common: CommonSettings) -> StripeProvider | None:
    names = ("TOLLGATE_STRIPE_SECRET_KEY", "TOLLGATE_STRIPE_WEBHOOK_SECRET")
    found = credentials(env, "Stripe", names)
    if found is None:
        return None
    key, secret = (found[name] for name in names)
    if not key.startswith(("sk_", "rk_")):
        raise ProviderConfigError("TOLLGATE_STRIPE_SECRET_KEY must be a Stripe secret key (sk_... or rk_...)")
    return StripeProvider(key, secret, common, api_base=api_base(env, "TOLLGATE_STRIPE_API_BASE", None))


def _intent_id(value: object) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _payload(obj: Mapping[str, Any]) -> str:
    """An object Stripe's API answered, as the payload the ledger stores (at most 64 KiB)."""
    text = dumps(obj)
    if len(text.encode()) > MAX_EVENT_BYTES:
        raise ProviderUnavailable(f"Stripe answered an object larger than {MAX_EVENT_BYTES} bytes")
    return text


def _ref(value: object) -> str | None:
    """A field that is an id, or an expanded object with an id; None when absent."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return None if value is None else identifier(value, "an object id")


class StripeProvider:
    name = NAME
    max_body_bytes = MAX_EVENT_BYTES

    def __init__(self, api_key: str, webhook_secret: str, common: CommonSettings, api_base: str | None = None) -> None:
        self.common = common
        self.webhook_secret = webhook_secret
        self.http = stripe.HTTPXClient(timeout=common.timeout_seconds)
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self.http,
            max_network_retries=2,
        )

    async def aclose(self) -> None:
        await self.http.close_async()  # type: ignore[no-untyped-call]  # untyped in stripe 16.1

    # ---- checkout ---------------------------------------------------------------------------------

    async def create_checkout(self, request: CheckoutRequest) -> Checkout:
        intent = str(request.intent_id)
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": request.currency.lower(),
                        "unit_amount": minor_units(request.amount),
                        "product_data": {"name": request.description},
                    },
                }
            ],
            "client_reference_id": intent,
            "metadata": {"tollgate_intent": intent, "tollgate_user": str(request.user_id)},
            "payment_intent_data": {"metadata": {"tollgate_intent": intent}},
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "expires_at": int(request.expires_at.timestamp()),
        }
        try:
            session = await self.client.v1.checkout.sessions.create_async(
                params,  # type: ignore[arg-type]
                options={"idempotency_key": f"tollgate-checkout-{intent}"},
            )
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe refused or could not be reached: {exc.user_message or exc}") from exc
        if not session.url:
            raise ProviderUnavailable("Stripe created a Checkout Session without a URL")
        expires = dt.datetime.fromtimestamp(session.expires_at, dt.UTC) if session.expires_at else None
        return Checkout(external_id=session.id, url=session.url, expires_at=expires)

    # ---- webhooks ---------------------------------------------------------------------------------

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> PaymentFacts:
        if len(body) > self.max_body_bytes:
            raise WebhookRejected(f"the body is larger than {self.max_body_bytes} bytes: not a Stripe event")
        header = headers.get("stripe-signature")
        tolerance = int(self.common.webhook_tolerance.total_seconds())
        try:
            text = body.decode("utf-8")
            stripe.WebhookSignature.verify_header(text, header, self.webhook_secret, tolerance=tolerance)
        except UnicodeDecodeError:
            raise WebhookRejected("the body is not UTF-8") from None
        except stripe.SignatureVerificationError as exc:
            raise WebhookRejected(f"Stripe signature: {exc.user_message or exc}") from None
        # The SDK refuses old timestamps only; a signature dated in the future is as suspect.
        assert header is not None
        stamps = [part[2:] for part in header.split(",") if part.startswith("t=")]
        if not stamps or not stamps[0].isdigit() or int(stamps[0]) > time.time() + tolerance:
            raise WebhookRejected("Stripe signature: timestamp outside the tolerance window")
        try:
            event = loads(body)
        except JSONBodyError as exc:
            raise WebhookRejected(f"the body is not JSON: {exc}") from None
        if not isinstance(event, dict) or event.get("object") != "event":
            raise WebhookRejected("the body is not a Stripe event")
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise WebhookRejected("the Stripe event has no data.object")
        event_type = identifier(event.get("type"), "event type", 100)
        return self._facts(identifier(event.get("id"), "event id"), event_type, obj, text)

    async def confirm(self, claimed: PaymentFacts) -> PaymentFacts:
        """Stripe's event as it is: Stripe signs the whole body (with a timestamp) and sends it server to
        server, so no payer can relay or rearrange it; the credit rules are the ledger's."""
        return claimed

    def _facts(self, event_id: str, event_type: str, obj: Mapping[str, Any], payload: str) -> PaymentFacts:
        base = PaymentFacts(provider=NAME, event_id=event_id, event_type=event_type, payload=payload)
        if event_type.startswith("checkout.session."):
            metadata = obj.get("metadata")
            tagged = metadata.get("tollgate_intent") if isinstance(metadata, dict) else None
            base = replace(
                base,
                intent_id=_intent_id(obj.get("client_reference_id")) or _intent_id(tagged),
                external_id=_ref(obj.get("id")),
                payment_ref=_ref(obj.get("payment_intent")),
            )
            if event_type in PAID_EVENTS and obj.get("payment_status") == "paid":
                return replace(
                    base,
                    action="paid",
                    amount=from_minor_units(obj.get("amount_total"), "amount_total"),
                    currency=currency_code(obj.get("currency")),
                )
            if event_type == "checkout.session.async_payment_failed":
                return replace(base, action="failed")
            if event_type == "checkout.session.expired":
                return replace(base, action="expired")
            return base
        if event_type == "charge.refunded":
            return replace(
                base,
                action="reversal",
                payment_ref=_ref(obj.get("payment_intent")),
                reversal_key="refunds",
                reversal_kind="refund",
                reversed_amount=from_minor_units(obj.get("amount_refunded"), "amount_refunded"),
                reversal_currency=currency_code(obj.get("currency")),
            )
        if event_type in DISPUTE_EVENTS:
            status = obj.get("status")
            if isinstance(status, str) and status.startswith("warning_"):
                return base  # an inquiry: no funds were withdrawn
            dispute = identifier(obj.get("id"), "dispute id", 70)
            return replace(
                base,
                action="reversal",
                payment_ref=_ref(obj.get("payment_intent")),
                reversal_key=f"dispute:{dispute}",
                reversal_kind="chargeback",
                reversed_amount=from_minor_units(obj.get("amount"), "amount"),
                reversal_currency=currency_code(obj.get("currency")),
                reinstated=status == "won" or event_type == "charge.dispute.funds_reinstated",
            )
        return base

    # ---- reconciliation ---------------------------------------------------------------------------

    async def fetch(self, intent: OpenIntent) -> list[PaymentFacts]:
        if intent.external_id is None:
            return []  # the session was never created (or its creation was cut off): nothing to ask
        try:
            session = await self.client.v1.checkout.sessions.retrieve_async(
                intent.external_id, params={"expand": ["payment_intent.latest_charge"]}
            )
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe: {exc.user_message or exc}") from exc
        obj = loads(str(session))
        facts: list[PaymentFacts] = []
        if obj.get("payment_status") == "paid":
            facts.append(self._facts(f"reconcile:{session.id}:paid", "checkout.session.completed", obj, _payload(obj)))
        elif obj.get("status") == "expired":
            facts.append(
                self._facts(f"reconcile:{session.id}:expired", "checkout.session.expired", obj, _payload(obj))
            )
        payment = obj.get("payment_intent")
        charge = payment.get("latest_charge") if isinstance(payment, dict) else None
        if isinstance(charge, dict) and charge.get("amount_refunded"):
            event_id = f"reconcile:{charge.get('id')}:refunded:{charge.get('amount_refunded')}"
            facts.append(self._facts(event_id, "charge.refunded", charge, _payload(charge)))
        if isinstance(charge, dict) and charge.get("disputed") and isinstance(payment, dict):
            facts.extend(await self._disputes(str(payment.get("id"))))
        return facts

    async def _disputes(self, payment_intent: str) -> list[PaymentFacts]:
        """The disputes of a payment as facts (a dispute webhook may have been missed too)."""
        try:
            listed = await self.client.v1.disputes.list_async(params={"payment_intent": payment_intent, "limit": 100})
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe: {exc.user_message or exc}") from exc
        facts = []
        for dispute in loads(str(listed)).get("data", []):
            status = dispute.get("status")
            kind = "charge.dispute.closed" if status in ("won", "lost") else "charge.dispute.updated"
            event_id = f"reconcile:{dispute.get('id')}:{status}:{dispute.get('amount')}"
            facts.append(self._facts(event_id, kind, dispute, _payload(dispute)))
        return facts
