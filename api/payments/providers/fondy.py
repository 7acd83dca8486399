"""Fondy (CloudIPSP): the checkout API over httpx, callbacks verified by Fondy's SHA-1 signature.

Environment (both or neither):
  TOLLGATE_FONDY_MERCHANT_ID   the merchant id (digits)
  TOLLGATE_FONDY_PASSWORD      the merchant's payment key, which signs requests and callbacks
  TOLLGATE_FONDY_API_BASE      optional: another API base URL (default https://pay.fondy.eu; tests
                               point it at a local double)

Signature (Fondy protocol 1.0): SHA-1 hex of the payment key and the values of every non-empty
parameter except ``signature`` and ``response_signature_string``, sorted by parameter name, joined
with ``|``. Callbacks are compared in constant time (hmac.compare_digest). Fondy signs no timestamp,
so there is no tolerance window: a replayed callback is recognised by its event id (order, status and
signature) and changes nothing.

A top-up is one order whose ``order_id`` is our intent id; its callback URL is
``{TOLLGATE_PUBLIC_URL}/api/payments/fondy/webhook``. Callbacks are state snapshots:
  approved → paid (actual_amount / actual_currency when present); reversal_amount > 0 (also with
  order_status reversed) → reversal bucket "refunds" = the cumulative reversal_amount;
  declined → failed; expired → expired; created / processing → stored, ignored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx

from api.jsonio import JSONBodyError, dumps, loads
from api.ledger import OpenIntent, PaymentFacts
from api.payments.base import (
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


def signature(password: str, params: Mapping[str, Any]) -> str:
    """Fondy's request/callback signature over `params`."""
    values = [str(params[key]) for key in sorted(params) if key not in UNSIGNED and params[key] not in ("", None)]
    return hashlib.sha1("|".join([password, *values]).encode("utf-8")).hexdigest()  # noqa: S324 - Fondy's algorithm


class FondyProvider:
    name = NAME

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
            raise ProviderUnavailable(
                f"Fondy refused: {response.get('error_message', 'no message')} (code {response.get('error_code')})"
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

    # ---- callbacks --------------------------------------------------------------------------------

    def _verified(self, fields: Mapping[str, Any]) -> None:
        given = fields.get("signature")
        if not isinstance(given, str) or not given:
            raise WebhookRejected("Fondy callback without a signature")
        expected = signature(self.password, fields)
        if not hmac.compare_digest(expected.encode(), given.lower().encode()):
            raise WebhookRejected("Fondy signature does not match")
        if str(fields.get("merchant_id")) != str(self.merchant_id):
            raise WebhookRejected("Fondy callback for another merchant")

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> PaymentFacts:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookRejected("the body is not UTF-8") from None
        fields: Any
        if content_type == "application/x-www-form-urlencoded":
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=200)
            fields = dict(pairs)
        else:
            try:
                fields = loads(body)
            except JSONBodyError as exc:
                raise WebhookRejected(f"the body is not JSON: {exc}") from None
            if isinstance(fields, dict) and isinstance(fields.get("response"), dict):
                fields = fields["response"]
        if not isinstance(fields, dict) or not all(isinstance(v, str | int) for v in fields.values()):
            raise WebhookRejected("the body is not a Fondy callback (a flat object of fields)")
        self._verified(fields)
        return self._facts(fields, text, event_id=None)

    def _facts(self, fields: Mapping[str, Any], payload: str, event_id: str | None) -> PaymentFacts:
        order = identifier(fields.get("order_id"), "Fondy order_id", 100)
        status = identifier(fields.get("order_status"), "Fondy order_status", 30)
        try:
            intent_id: uuid.UUID | None = uuid.UUID(order)
        except ValueError:
            intent_id = None
        payment_id = fields.get("payment_id")
        payment_ref = identifier(str(payment_id), "Fondy payment_id", 100) if payment_id not in (None, "") else None
        facts = PaymentFacts(
            provider=NAME,
            event_id=event_id or f"{order}:{status}:{fields.get('signature')}",
            event_type=f"order.{status}"[:100],
            payload=payload,
            intent_id=intent_id,
            external_id=order,
            payment_ref=payment_ref,
        )
        if status in ("approved", "reversed"):
            amount = fields.get("actual_amount") or fields.get("amount")
            currency = currency_code(fields.get("actual_currency") or fields.get("currency"), "Fondy currency")
            facts = replace(facts, action="paid", amount=from_minor_units(amount, "amount"), currency=currency)
            reversed_amount = from_minor_units(fields.get("reversal_amount") or 0, "reversal_amount")
            if reversed_amount > 0 or status == "reversed":
                if payment_ref is None:
                    raise WebhookRejected("Fondy reversal without a payment_id")
                facts = replace(
                    facts,
                    reversal_key="refunds",
                    reversal_kind="refund",
                    reversed_amount=reversed_amount if reversed_amount > 0 else facts.amount,
                    reversal_currency=facts.currency,
                )
            if facts.amount == 0:
                raise WebhookRejected("Fondy callback with a zero amount")
        elif status == "declined":
            facts = replace(facts, action="failed")
        elif status == "expired":
            facts = replace(facts, action="expired")
        return facts

    async def fetch(self, intent: OpenIntent) -> list[PaymentFacts]:
        response = await self._call("/api/status/order_id", {"order_id": str(intent.intent_id), "version": "1.0"})
        try:
            self._verified(response)
        except WebhookRejected as exc:
            raise ProviderUnavailable(f"Fondy's status answer does not verify: {exc}") from None
        status = response.get("order_status")
        paid = response.get("actual_amount") or response.get("amount")
        state = f"{status}:{paid}:{response.get('reversal_amount') or 0}"
        try:
            facts = self._facts(response, dumps(response), event_id=f"reconcile:{intent.intent_id}:{state}"[:255])
        except WebhookRejected as exc:
            raise ProviderUnavailable(f"Fondy's status answer is incomplete: {exc}") from None
        return [] if facts.action == "ignore" else [facts]
