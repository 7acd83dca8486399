"""Fondy (CloudIPSP): the checkout API over httpx; callbacks verified, then confirmed with Fondy's
order-status API before anything is recorded.

Environment (both or neither):
  TOLLGATE_FONDY_MERCHANT_ID   the merchant id (digits)
  TOLLGATE_FONDY_PASSWORD      the merchant's payment key, which signs requests and callbacks
  TOLLGATE_FONDY_API_BASE      optional: another API base URL (default https://pay.fondy.eu; tests
                               point it at a local double)

Signature (Fondy protocol 1.0): SHA-1 hex of the payment key and the values of every non-empty
parameter except ``signature`` and ``response_signature_string``, sorted by parameter name, joined
with ``|``. Only the values are signed, not the names: whoever holds a signed result can move values
onto other keys (the card BIN into ``actual_amount``) and the signature still verifies; empty fields
can be added at will. Fondy posts the same signed fields to ``response_url`` through the payer's
browser, so every payer holds the signed result of their own order. Hence:

* A callback is only a prompt. It must verify (signature compared in constant time, our merchant id),
  be at most 64 KiB and 200 fields (a form with a repeated field is refused), and then its ``order_id``
  is asked about with ``POST /api/status/order_id`` (our signed request; the signed answer is verified
  and must be about that order). The facts recorded -- status, amounts, currencies, payment id,
  reversal -- are the status API's, and so is the stored payload. Fondy unreachable, or its answer not
  verifying: the callback is answered 503 and Fondy retries it (nothing stored, nothing credited);
  Fondy knows no such order: 400. Fondy (now Flitt) repeats a callback not answered 200 after 2 s,
  1 min, 5 min, 10 min, 1 h and 1 day and waits 30 s for an answer, so the status call's timeout
  (TOLLGATE_PAYMENT_TIMEOUT_SECONDS, 20 s by default) keeps the callback within it; after the last
  retry, ``tollgate payments reconcile`` asks the same API.
* The event id is derived from the confirmed state, never from the callback's spelling:
  ``order:<order_id>:<order_status>:<payment_id>:<reversal_amount in minor units>``. The webhook and
  ``tollgate payments reconcile`` (which asks the same API) derive the same id for the same state, so
  one payment state is one ``payment_events`` row however often, and however spelt, it is delivered.
* A payment is credited only when the confirmed order is approved for exactly the intent's amount and
  currency (``actual_amount``/``actual_currency`` when Fondy reports them; they must then also agree
  with ``amount``/``currency``) and our merchant id; anything else goes to review, uncredited
  (``billing.record_payment_event`` checks amount, currency and order against the intent; the merchant
  and Fondy's two amounts are checked here and passed as the review reason).

A top-up is one order whose ``order_id`` is our intent id; its callback URL is
``{TOLLGATE_PUBLIC_URL}/api/payments/fondy/webhook``. Confirmed states:
  approved -> paid; reversal_amount > 0 (also with order_status reversed: paid, then all reversed) ->
  reversal bucket "refunds" = the cumulative reversal_amount; declined -> failed; expired -> expired;
  created / processing -> stored, ignored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx

from api.jsonio import JSONBodyError, dumps, loads
from api.ledger.types import OpenIntent, PaymentFacts
from api.payments.base import (
    MAX_EVENT_BYTES,
    MAX_EVENT_FIELDS,
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

NAME = "fondy"
DEFAULT_API_BASE = "https://pay.fondy.eu"
UNSIGNED = frozenset({"signature", "response_signature_string"})
ORDER_NOT_FOUND = 1018  # Fondy's error_code for an order it does not know

log = logging.getLogger("tollgate.payments")


class FondyRefused(ProviderUnavailable):
    """Fondy answered, with response_status "failure" (``fondy_code`` is its error_code)."""

    def __init__(self, message: str, fondy_code: object) -> None:
        super().__init__(message)
        self.fondy_code = fondy_code


def from_env(env: Mapping[str, str], common: CommonSettings) -> FondyProvider | None:
    names = ("TOLLGATE_FONDY_MERCHANT_ID", "TOLLGATE_FONDY_PASSWORD")
    found = credentials(env, "Fondy", names)
    if found is None:
        return None
    merchant, password = (found[name] for name in names)
    if not merchant.isdigit() or len(merchant) > 20:
        raise ProviderConfigError(f"TOLLGATE_FONDY_MERCHANT_ID={merchant!r} is not a Fondy merchant id (digits)")
    base = api_base(env, "TOLLGATE_FONDY_API_BASE", DEFAULT_API_BASE)
    assert base is not None
    return FondyProvider(int(merchant), password, common, api_base=base)


def _intent_id(order: str) -> uuid.UUID | None:
    """Our intent id, when the order is one of ours (its order_id is the intent id)."""
    try:
        return uuid.UUID(order)
    except ValueError:
        return None


def signature(password: str, params: Mapping[str, Any]) -> str:
    """Fondy's request/callback signature over `params`."""
    values = [str(params[key]) for key in sorted(params) if key not in UNSIGNED and params[key] not in ("", None)]
    return hashlib.sha1("|".join([password, *values]).encode("utf-8")).hexdigest()  # noqa: S324 - Fondy's algorithm


class FondyProvider:
    name = NAME
    max_body_bytes = MAX_EVENT_BYTES

    def __init__(
        self, merchant_id: int, password: str, common: CommonSettings, api_base: str = DEFAULT_API_BASE
    ) -> None:
        self.merchant_id = merchant_id
        self.password = password
        self.common = common
        self.client = httpx.AsyncClient(base_url=api_base.rstrip("/"), timeout=common.timeout_seconds)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _call(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        request = {**request, "merchant_id": self.merchant_id}
        request["signature"] = signature(self.password, request)
        try:
            answer = await self.client.post(
                path, content=dumps({"request": request}), headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"Fondy could not be reached: {type(exc).__name__}") from exc
        if answer.status_code != 200:
            raise ProviderUnavailable(f"Fondy answered HTTP {answer.status_code}")
        try:
            body = loads(answer.content)
        except JSONBodyError as exc:
            raise ProviderUnavailable(f"Fondy answered something that is not JSON: {exc}") from None
        response = body.get("response") if isinstance(body, dict) else None
        if not isinstance(response, dict):
            raise ProviderUnavailable("Fondy's answer has no response object")
        if response.get("response_status") != "success":
            raise FondyRefused(
                f"Fondy refused: {str(response.get('error_message', 'no message'))[:200]} "
                f"(code {str(response.get('error_code'))[:20]})",
                response.get("error_code"),
            )
        return response

    async def create_checkout(self, request: CheckoutRequest) -> Checkout:
        lifetime = max(60, int((request.expires_at - dt.datetime.now(dt.UTC)).total_seconds()))
        response = await self._call(
            "/api/checkout/url/",
            {
                "order_id": str(request.intent_id),
                "order_desc": request.description,
                "amount": minor_units(request.amount),
                "currency": request.currency,
                "server_callback_url": request.callback_url,
                "response_url": request.success_url,
                "lifetime": lifetime,
                "version": "1.0",
            },
        )
        url = response.get("checkout_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ProviderUnavailable("Fondy's answer has no checkout_url")
        return Checkout(external_id=str(request.intent_id), url=url, expires_at=request.expires_at)

    # ---- callbacks ----------------------------------------------------------------------------------

    def _signed(self, fields: Mapping[str, Any]) -> bool:
        given = fields.get("signature")
        if not isinstance(given, str) or not given:
            return False
        return hmac.compare_digest(signature(self.password, fields).encode(), given.lower().encode())

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> PaymentFacts:
        """Verify a callback and reduce it to what it claims; ``confirm`` asks Fondy before anything is
        recorded (module docstring)."""
        if len(body) > self.max_body_bytes:
            raise WebhookRejected(f"the body is larger than {self.max_body_bytes} bytes: not a Fondy callback")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookRejected("the body is not UTF-8") from None
        fields: Any
        if content_type == "application/x-www-form-urlencoded":
            try:
                pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_EVENT_FIELDS)
            except ValueError:
                raise WebhookRejected(f"the form has more than {MAX_EVENT_FIELDS} fields") from None
            fields = dict(pairs)
            if len(fields) != len(pairs):
                raise WebhookRejected("the form repeats a field")
        else:
            try:
                fields = loads(body)
            except JSONBodyError as exc:
                raise WebhookRejected(f"the body is not JSON: {exc}") from None
            if isinstance(fields, dict) and isinstance(fields.get("response"), dict):
                fields = fields["response"]
        if not isinstance(fields, dict) or not all(isinstance(v, str | int) for v in fields.values()):
            raise WebhookRejected("the body is not a Fondy callback (a flat object of fields)")
        if len(fields) > MAX_EVENT_FIELDS:
            raise WebhookRejected(f"the callback has more than {MAX_EVENT_FIELDS} fields")
        if not self._signed(fields):
            raise WebhookRejected("Fondy signature is missing or does not match")
        if str(fields.get("merchant_id")) != str(self.merchant_id):
            raise WebhookRejected("Fondy callback for another merchant")
        order = identifier(fields.get("order_id"), "Fondy order_id", 100)
        claimed_status = str(fields.get("order_status", ""))[:30] or "-"
        # Only a prompt: which order to ask about. Recorded as it is it would credit nothing (action
        # ignore); confirm() replaces it with what Fondy's status API reports.
        return PaymentFacts(
            provider=NAME,
            event_id=f"callback:{order}",
            event_type=f"callback.{claimed_status}",
            payload=text,
            intent_id=_intent_id(order),
            external_id=order,
        )

    async def confirm(self, claimed: PaymentFacts) -> PaymentFacts:
        """What Fondy's order-status API reports about the order the callback names (module docstring)."""
        assert claimed.external_id is not None  # parse_webhook always names the order
        confirmed = await self._status(claimed.external_id)
        if claimed.event_type.removeprefix("callback.") != confirmed.event_type.removeprefix("order."):
            log.warning(
                "Fondy callback claims another state than the order's: the order's is recorded",
                extra={
                    "order_id": claimed.external_id,
                    "claimed": claimed.event_type,
                    "confirmed": confirmed.event_type,
                },
            )
        return confirmed

    async def _status(self, order_id: str) -> PaymentFacts:
        """The order's state from POST /api/status/order_id, verified, as facts. ProviderUnavailable when
        Fondy cannot be asked or its answer cannot be trusted; WebhookRejected when it knows no such order."""
        try:
            response = await self._call("/api/status/order_id", {"order_id": order_id, "version": "1.0"})
        except FondyRefused as exc:
            if str(exc.fondy_code) == str(ORDER_NOT_FOUND):
                raise WebhookRejected(f"Fondy knows no order {order_id[:100]!r}") from None
            raise
        if not self._signed(response):
            raise ProviderUnavailable("Fondy's status answer does not verify")
        if str(response.get("order_id")) != order_id:
            raise ProviderUnavailable("Fondy's status answer is about another order")
        # The stored payload: the answer's signed, non-empty fields (what the facts come from).
        kept = {k: v for k, v in response.items() if v not in ("", None)}
        payload = dumps(kept)
        if len(payload.encode()) > MAX_EVENT_BYTES:
            raise ProviderUnavailable(f"Fondy's status answer is larger than {MAX_EVENT_BYTES} bytes")
        try:
            return self._facts(kept, payload)
        except WebhookRejected as exc:
            raise ProviderUnavailable(f"Fondy's status answer is incomplete: {exc}") from None

    def _facts(self, fields: Mapping[str, Any], payload: str) -> PaymentFacts:
        """One order state as facts, its event id derived from the state (module docstring)."""
        order = identifier(fields.get("order_id"), "Fondy order_id", 100)
        status = identifier(fields.get("order_status"), "Fondy order_status", 30)
        payment_id = fields.get("payment_id")
        payment_ref = identifier(str(payment_id), "Fondy payment_id", 100) if payment_id not in (None, "") else None
        reversed_amount = from_minor_units(fields.get("reversal_amount") or 0, "reversal_amount")
        facts = PaymentFacts(
            provider=NAME,
            event_id=f"order:{order}:{status}:{payment_ref or '-'}:{int(reversed_amount * 100)}",
            event_type=f"order.{status}"[:100],
            payload=payload,
            intent_id=_intent_id(order),
            external_id=order,
            payment_ref=payment_ref,
        )
        if status in ("approved", "reversed"):
            ordered = from_minor_units(fields.get("amount"), "amount")
            ordered_currency = currency_code(fields.get("currency"), "Fondy currency")
            actual = fields.get("actual_amount")
            amount = from_minor_units(actual, "actual_amount") if actual not in (None, "") else ordered
            actual_currency = fields.get("actual_currency")
            currency = (
                currency_code(actual_currency, "Fondy actual_currency")
                if actual_currency not in (None, "")
                else ordered_currency
            )
            if amount == 0:
                raise WebhookRejected("Fondy order with a zero amount")
            reasons = []
            if (amount, currency) != (ordered, ordered_currency):
                reasons.append(f"Fondy order of {ordered} {ordered_currency} reports {amount} {currency} paid")
            if str(fields.get("merchant_id")) != str(self.merchant_id):
                reasons.append(f"Fondy merchant {str(fields.get('merchant_id'))[:20]} is not ours ({self.merchant_id})")
            facts = replace(
                facts, action="paid", amount=amount, currency=currency, review_reason="; ".join(reasons) or None
            )
            if reversed_amount > 0 or status == "reversed":
                if payment_ref is None:
                    raise WebhookRejected("Fondy reversal without a payment_id")
                facts = replace(
                    facts,
                    reversal_key="refunds",
                    reversal_kind="refund",
                    reversed_amount=reversed_amount if reversed_amount > 0 else amount,
                    reversal_currency=currency,
                )
        elif status == "declined":
            facts = replace(facts, action="failed")
        elif status == "expired":
            facts = replace(facts, action="expired")
        return facts

    async def fetch(self, intent: OpenIntent) -> list[PaymentFacts]:
        try:
            facts = await self._status(str(intent.intent_id))
        except WebhookRejected as exc:
            raise ProviderUnavailable(str(exc)) from None
        return [] if facts.action == "ignore" else [facts]
