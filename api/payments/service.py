"""The payment flows on top of the SQL API: start a payment, apply a webhook, reconcile.

Money never moves here: ``billing.record_payment_event`` credits and claws back, in one transaction
per event. This module only talks to providers (outside any database transaction) and hands the
SQL functions what they report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.errors import TollgateError
from api.ledger import aio as aledger
from api.ledger.types import PaymentEventResult, PaymentIntent
from api.payments.base import (
    CheckoutRequest,
    CommonSettings,
    PaymentProvider,
    ProviderConfigError,
    ProviderUnavailable,
    WebhookRejected,
)
from api.payments.registry import amount_bounds, load_common, load_providers

log = logging.getLogger("tollgate.payments")


class PaymentsUnavailable(TollgateError):
    """No provider is configured, or not the one asked for. Answered 503 on a top-up; the webhook route
    answers 404 (no such provider)."""

    status = 503
    code = "payments_unavailable"


class AmountOutOfBounds(TollgateError, ValueError):
    """A top-up below the configured minimum or above the maximum (``field`` names the amount)."""

    status = 422
    code = "amount_out_of_range"


@dataclass(frozen=True)
class StartedPayment:
    intent: PaymentIntent
    checkout_url: str | None
    expires_at: dt.datetime


@dataclass
class ReconcileReport:
    checked: int = 0
    events_applied: int = 0
    credited: int = 0
    review: int = 0
    reversed: int = 0
    expired: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


class Payments:
    """The configured providers and the flows that use them (one per gateway process or CLI run)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        providers: Mapping[str, PaymentProvider],
        common: CommonSettings,
        bounds: Mapping[str, tuple[Decimal, Decimal]],
        default_provider: str | None = None,
    ) -> None:
        self.pool = pool
        self.providers = dict(providers)
        self.common = common
        self.bounds = dict(bounds)
        self.default_provider = default_provider

    @classmethod
    def from_env(cls, pool: AsyncConnectionPool[Any], env: Mapping[str, str]) -> Payments:
        default = env.get("TOLLGATE_PAYMENT_DEFAULT_PROVIDER", "").strip() or None
        providers = load_providers(env)
        if default is not None and default not in providers:
            raise ProviderConfigError(
                f"TOLLGATE_PAYMENT_DEFAULT_PROVIDER={default!r} is not a configured provider "
                f"({', '.join(sorted(providers)) or 'none configured'})"
            )
        return cls(pool, providers, load_common(env), amount_bounds(env), default)

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()

    def provider(self, name: str | None) -> PaymentProvider:
        if not self.providers:
            raise PaymentsUnavailable(
                "no payment provider is configured on this gateway, so top-ups cannot be paid here; "
                "ask an administrator to credit your account"
            )
        if name is None:
            name = self.default_provider or (next(iter(self.providers)) if len(self.providers) == 1 else None)
            if name is None:
                raise PaymentsUnavailable(f"choose a provider: one of {', '.join(sorted(self.providers))}")
        provider = self.providers.get(name)
        if provider is None:
            raise PaymentsUnavailable(
                f"provider {name[:50]!r} is not configured here; use one of {', '.join(sorted(self.providers))}"
            )
        return provider

    def check_amount(self, amount: Decimal, currency: str) -> None:
        low, high = self.bounds[currency]
        if amount != amount.quantize(Decimal("0.01")):
            raise AmountOutOfBounds(
                f"a top-up is paid in whole cents: {amount} {currency} has more than 2 decimals",
                field=f"amount_{currency.lower()}",
            )
        if not low <= amount <= high:
            raise AmountOutOfBounds(
                f"a top-up in {currency} must be from {low} to {high}, not {amount}", field=f"amount_{currency.lower()}"
            )

    # ---- 1. start ---------------------------------------------------------------------------------

    async def start_payment(
        self,
        user_id: uuid.UUID,
        amount: Decimal,
        currency: str,
        provider_name: str | None,
        idempotency_key: str | None,
        client_ip: IPv4Address | IPv6Address | None = None,
    ) -> StartedPayment:
        """Record the intent, create the provider's checkout, record it; the user pays at the URL.

        A replay (same Idempotency-Key) returns the same intent and URL; a replay of one whose checkout
        creation was cut off tries again with the same provider idempotency key (Stripe returns the
        same session). The ledger's payment fraud rules (caps per account and per ``client_ip``'s network,
        card testing, a new account's first top-ups) decide first: a refused start raises PaymentRefused
        before any provider is called, its audit row committed. Raises ProviderUnavailable (the intent is
        then marked failed) or a BillingError.
        """
        provider = self.provider(provider_name)
        self.check_amount(amount, currency)
        async with self.pool.connection() as conn:
            intent = await aledger.create_payment_intent(
                conn, user_id, provider.name, amount, currency, idempotency_key, ttl=self.common.ttl,
                client_ip=client_ip,
            )
        # A replay returns the payment as it is, except one whose checkout was never created (cut off,
        # or the provider was down: a retry of the same request tries again).
        retry = intent.status == "created" or (intent.status == "failed" and intent.external_id is None)
        if not retry or intent.checkout_url is not None:
            return StartedPayment(intent, intent.checkout_url, intent.expires_at)
        request = CheckoutRequest(
            intent_id=intent.intent_id,
            user_id=user_id,
            amount=intent.amount,
            currency=intent.currency,
            description=f"Tollgate balance top-up ({intent.amount} {intent.currency})",
            success_url=self.common.success_url.replace("{intent_id}", str(intent.intent_id)),
            cancel_url=self.common.cancel_url.replace("{intent_id}", str(intent.intent_id)),
            callback_url=f"{self.common.public_url}/api/payments/{provider.name}/webhook",
            expires_at=intent.expires_at,
        )
        try:
            checkout = await provider.create_checkout(request)
        except ProviderUnavailable as exc:
            log.warning("checkout not created", extra={"intent_id": str(intent.intent_id), "reason": str(exc)})
            async with self.pool.connection() as conn:
                await aledger.fail_payment_intent(conn, intent.intent_id, str(exc)[:1000])
            raise
        async with self.pool.connection() as conn:
            attached = await aledger.attach_payment_checkout(
                conn, intent.intent_id, checkout.external_id, checkout.url, checkout.expires_at
            )
        log.info(
            "payment started",
            extra={
                "intent_id": str(intent.intent_id),
                "provider": provider.name,
                "amount": str(amount),
                "currency": currency,
            },
        )
        return StartedPayment(
            dataclasses.replace(
                intent,
                status=attached.status,
                external_id=attached.external_id,
                checkout_url=attached.checkout_url,
                expires_at=attached.expires_at,
            ),
            attached.checkout_url,
            attached.expires_at,
        )

    # ---- 2. webhooks ------------------------------------------------------------------------------

    async def handle_webhook(self, provider_name: str, body: bytes, headers: Mapping[str, str]) -> PaymentEventResult:
        """Verify, confirm (where the provider offers it), store and apply one delivery. Raises
        WebhookRejected (nothing stored), ProviderUnavailable (the provider could not confirm it now:
        nothing stored, the provider should retry) or PaymentsUnavailable (no such provider here)."""
        provider = self.providers.get(provider_name)
        if provider is None:
            raise PaymentsUnavailable(f"no payment provider {provider_name[:50]!r} is configured here")
        if len(body) > provider.max_body_bytes:
            raise WebhookRejected(f"the body is larger than {provider.max_body_bytes} bytes: no provider sends that")
        facts = await provider.confirm(provider.parse_webhook(body, headers))
        async with self.pool.connection() as conn:
            result = await aledger.record_payment_event(conn, facts)
        steps = result.outcome.split(",")
        level = logging.WARNING if {"unknown_intent", "review", "unmatched"} & set(steps) else logging.INFO
        log.log(
            level,
            "payment event %s %s: %s%s",
            provider_name,
            facts.event_type,
            result.outcome,
            " (replay)" if result.duplicate else "",
            extra={"event_id": facts.event_id, "intent_id": str(result.intent_id), "detail": result.detail},
        )
        return result

    # ---- 3. reconciliation ------------------------------------------------------------------------

    async def reconcile(
        self,
        provider_name: str | None = None,
        min_age: dt.timedelta = dt.timedelta(minutes=5),
        lookback: dt.timedelta = dt.timedelta(days=7),
        grace: dt.timedelta = dt.timedelta(hours=1),
    ) -> ReconcileReport:
        """Ask the providers about open and recent intents and apply what they report (idempotently:
        the facts carry event ids stable for an unchanged state); then expire open intents past
        their expiry plus `grace` that no provider reported paid."""
        report = ReconcileReport()
        async with self.pool.connection() as conn:
            intents = await aledger.open_payment_intents(conn, provider_name, min_age, lookback)
        for intent in intents:
            provider = self.providers.get(intent.provider)
            if provider is None:
                continue  # a provider configured once and not now: its intents wait (or expire below)
            report.checked += 1
            try:
                facts = await provider.fetch(intent)
            except (ProviderUnavailable, WebhookRejected) as exc:
                report.errors.append(f"{intent.intent_id}: {exc}")
                continue
            for fact in facts:
                async with self.pool.connection() as conn:
                    result = await aledger.record_payment_event(conn, fact)
                if result.duplicate:
                    continue
                report.events_applied += 1
                steps = result.outcome.split(",")
                report.credited += "credited" in steps
                report.review += "review" in steps
                report.reversed += "reversed" in steps or "reinstated" in steps
                log.info("reconciled %s: %s", intent.intent_id, result.outcome, extra={"detail": result.detail})
        async with self.pool.connection() as conn:
            report.expired = await aledger.expire_payment_intents(conn, grace)
        return report
