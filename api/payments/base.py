"""What every payment provider module implements, and the settings they share."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from api.errors import TollgateError
from api.ledger.types import OpenIntent, PaymentFacts


class WebhookRejected(TollgateError):
    """A delivery that must not be acted on or stored: bad or missing signature, stale timestamp,
    a body that is not what the provider sends. Answered 400 (the webhook route words the message)."""

    status = 400
    code = "invalid_webhook"


class ProviderUnavailable(TollgateError):
    """The provider refused or could not be reached while creating a checkout or reading a payment.
    Answered 502 on a top-up; the webhook route answers 503 (the provider should retry)."""

    status = 502
    code = "payment_provider_unavailable"


# No provider sends more than this for one event (Stripe events and Fondy callbacks are a few KiB): a
# bigger delivery is refused (400) before it is verified, and the ledger stores at most this much per event.
MAX_EVENT_BYTES = 64 * 1024
# Nor more fields than this in a flat form or JSON callback (Fondy sends about 40).
MAX_EVENT_FIELDS = 200


class ProviderConfigError(ValueError):
    """A provider is partly configured (some of its environment variables set, others missing or bad)."""


@dataclass(frozen=True)
class CommonSettings:
    """Payment settings shared by the providers (docs/payments.md, "Settings", lists the variables)."""

    # Where the provider sends the user after paying or giving up (may contain {intent_id}).
    success_url: str = "http://127.0.0.1:8000/api/billing/balance"
    cancel_url: str = "http://127.0.0.1:8000/api/billing/balance"
    # The gateway's public base URL: providers that take a callback URL per payment (Fondy) are given
    # {public_url}/api/payments/{provider}/webhook.
    public_url: str = "http://127.0.0.1:8000"
    # How long a checkout stays payable.
    ttl: dt.timedelta = dt.timedelta(hours=1)
    # Signed webhooks older (or newer) than this are refused, where the provider signs a timestamp.
    webhook_tolerance: dt.timedelta = dt.timedelta(minutes=5)
    # Per request timeout of provider API calls.
    timeout_seconds: float = 20.0


@dataclass(frozen=True)
class CheckoutRequest:
    """What a provider needs to create the page a user pays at."""

    intent_id: uuid.UUID
    user_id: uuid.UUID
    amount: Decimal
    currency: str
    description: str
    success_url: str
    cancel_url: str
    callback_url: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class Checkout:
    """The provider's checkout: its id (Stripe Checkout Session, Fondy order) and the URL to pay at."""

    external_id: str
    url: str
    expires_at: dt.datetime | None = None


class PaymentProvider(Protocol):
    """One payment provider. Implementations live in api/payments/providers/<name>.py.

    A webhook delivery is ``parse_webhook`` (verify the signature, reduce the body to the facts it
    claims), then ``confirm`` (the facts to record: the claim as it is where the provider signs the
    whole body and sends it server to server, or what the provider's API answers when asked, where a
    signed body can be relayed or rearranged by the payer)."""

    name: str
    # The largest delivery accepted (larger: 400 before anything is verified or stored).
    max_body_bytes: int

    async def create_checkout(self, request: CheckoutRequest) -> Checkout:
        """Create the provider's checkout for an intent (idempotent per intent id where the provider
        supports it). Raises ProviderUnavailable when the provider refuses or cannot be reached."""
        ...

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> PaymentFacts:
        """Verify a delivery's signature over the raw body, then reduce it to the facts it claims.
        Raises WebhookRejected before looking at the content when the signature does not verify."""
        ...

    async def confirm(self, claimed: PaymentFacts) -> PaymentFacts:
        """The facts to record for a verified delivery: `claimed` itself, or what the provider's API
        reports about the same payment (server to server). Raises ProviderUnavailable when the provider
        cannot confirm now (the webhook is answered 503 so that the provider retries; nothing is stored),
        WebhookRejected when the provider says the claim is about nothing it knows."""
        ...

    async def fetch(self, intent: OpenIntent) -> list[PaymentFacts]:
        """What the provider reports now about an intent (reconciliation), as facts with event ids that
        are stable for an unchanged state. Raises ProviderUnavailable."""
        ...

    async def aclose(self) -> None:
        """Release HTTP clients."""
        ...


def credentials(env: Mapping[str, str], provider: str, names: tuple[str, ...]) -> dict[str, str] | None:
    """The provider's required variables, all set (a dict), none set (None: not configured), or some
    set: ProviderConfigError naming the missing ones."""
    values = {name: env.get(name, "").strip() for name in names}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ProviderConfigError(f"{provider} is configured in part: {', '.join(missing)} not set")
    return values


def api_base(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    """An optional API base URL override (tests point providers at local doubles)."""
    value = env.get(name, "").strip() or default
    if value is not None and not value.startswith(("http://", "https://")):
        raise ProviderConfigError(f"{name}={value!r} is not an http(s) URL")
    return value


def identifier(value: object, field: str, max_length: int = 255) -> str:
    """An id a provider sent (event, payment, order, status): a non-blank string of at most
    `max_length` printable characters, as the ledger's functions take it; else WebhookRejected."""
    if not isinstance(value, str) or not value.strip() or len(value) > max_length or not value.isprintable():
        raise WebhookRejected(f"{field} is missing or not an id")
    return value


def currency_code(value: object, field: str = "currency") -> str:
    """A provider's currency as the ledger takes it: three ASCII letters, upper-cased; else WebhookRejected."""
    if not isinstance(value, str) or len(value) != 3 or not (value.isascii() and value.isalpha()):
        raise WebhookRejected(f"{field} is not a three-letter currency code")
    return value.upper()


def minor_units(amount: Decimal) -> int:
    """An amount of 2 decimals in cents / kopiykas."""
    cents = amount * 100
    if cents != cents.to_integral_value():
        raise ValueError(f"{amount} has more than 2 decimal places")
    return int(cents)


def from_minor_units(value: object, field: str) -> Decimal:
    """A provider's integer minor-unit amount (int or digit string) as a Decimal of 2 places."""
    if isinstance(value, bool):
        raise WebhookRejected(f"{field} is not an amount")
    if isinstance(value, int):
        number = value
    elif (isinstance(value, str) and value.isdigit() and len(value) <= 15) or (
        isinstance(value, Decimal) and value == value.to_integral_value() and abs(value) < Decimal(10) ** 15
    ):
        number = int(value)
    else:
        raise WebhookRejected(f"{field} is not an integer amount of minor units")
    if number < 0 or number >= 10**14:
        raise WebhookRejected(f"{field} is out of range")
    return (Decimal(number) / 100).quantize(Decimal("0.01"))
