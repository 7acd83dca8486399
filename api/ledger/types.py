"""The pure half of the ledger's wrappers: row types and parameter building, no I/O.

``api.ledger.aio`` (hand-written, async) and ``api.ledger.sync`` (generated from it) both import from here,
so the twins differ only in ``await``: each SQL function's result is a frozen dataclass below, and every
argument that needs converting (money, JSON, anchors) is built by a function below. Both modules re-export
the row types, so callers keep writing ``ledger.RequestStart`` / ``aledger.RequestStart``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import Any, TypeVar

from psycopg.types.json import Jsonb

__all__ = [  # the row types and Money, re-exported by api.ledger.aio and api.ledger.sync
    "AccountFlag",
    "AccountSettings",
    "Adjustment",
    "ApiKey",
    "ApiKeyIdentity",
    "ApiKeyRevocation",
    "BalanceCheck",
    "BrokenAnchor",
    "Charge",
    "CheckoutAttached",
    "Completion",
    "Configuration",
    "ExchangeRate",
    "FlagDecision",
    "IntentStatus",
    "LedgerHead",
    "LimitCheck",
    "Limits",
    "Money",
    "OpenIntent",
    "PaymentDetails",
    "PaymentEventResult",
    "PaymentFacts",
    "PaymentIntent",
    "Refund",
    "Release",
    "RequestStart",
    "Reservation",
    "ReviewedCredit",
    "Settlement",
    "ToolPricingRow",
    "TopUp",
    "TrackedRequest",
    "Transaction",
    "UnbilledCall",
    "VelocityRun",
    "Violation",
    "WrittenOffCall",
]

Row = TypeVar("Row")
Money = Decimal | int
# An address or network for an inet parameter (psycopg adapts each; text is cast by the query).
IPAddressParam = IPv4Address | IPv6Address | IPv4Interface | IPv6Interface | str


@dataclass(frozen=True)
class BalanceCheck:
    sufficient: bool
    balance_usd: Decimal
    held_usd: Decimal
    available_usd: Decimal
    shortfall_usd: Decimal


@dataclass(frozen=True)
class LimitCheck:
    allowed: bool
    limit_type: str
    spent_usd: Decimal
    held_usd: Decimal
    limit_usd: Decimal
    remaining_usd: Decimal
    resets_at: dt.datetime
    override: bool


@dataclass(frozen=True)
class Reservation:
    reservation_id: int | None
    request_id: str
    status: str
    amount_usd: Decimal
    expires_at: dt.datetime | None
    available_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class Settlement:
    """billing.settle: what was charged (at most the hold plus what the balance and limits cover) and what
    was written off (``actual - charged``, never charged)."""

    transaction_id: int | None
    request_id: str
    status: str
    charged_usd: Decimal
    written_off_usd: Decimal
    released_usd: Decimal
    balance_after_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class Release:
    request_id: str
    status: str
    released_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class Charge:
    transaction_id: int | None
    request_id: str
    status: str
    amount_usd: Decimal
    balance_before_usd: Decimal
    balance_after_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class TopUp:
    transaction_id: int
    amount_usd: Decimal
    amount_uah: Decimal | None
    currency: str
    exchange_rate: Decimal | None
    balance_before_usd: Decimal
    balance_after_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class Refund:
    transaction_id: int
    refund_of: int
    amount_usd: Decimal
    balance_before_usd: Decimal
    balance_after_usd: Decimal
    refunded_total_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class Adjustment:
    transaction_id: int
    amount_usd: Decimal
    balance_before_usd: Decimal
    balance_after_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class AccountSettings:
    user_id: uuid.UUID
    daily_limit_usd: Decimal
    monthly_limit_usd: Decimal
    is_active: bool
    billing_enabled: bool
    limit_override: bool


@dataclass(frozen=True)
class Limits:
    user_id: uuid.UUID
    daily_limit_usd: Decimal
    monthly_limit_usd: Decimal


@dataclass(frozen=True)
class Transaction:
    id: int
    user_id: uuid.UUID
    type: str
    currency: str
    amount_usd: Decimal
    amount_uah: Decimal | None
    exchange_rate: Decimal | None
    balance_before_usd: Decimal
    balance_after_usd: Decimal
    request_id: str | None
    payment_provider: str | None
    payment_id: str | None
    refund_of: int | None
    actor: str | None
    description: str | None
    metadata: dict[str, Any]
    created_at: dt.datetime


@dataclass(frozen=True)
class TrackedRequest:
    tracking_id: int
    request_id: str
    status: str
    replayed: bool


@dataclass(frozen=True)
class Completion:
    """billing.complete_request: ``price_usd`` is the call's price as computed; of it, ``charged_usd`` was
    charged and ``written_off_usd`` written off (both 0 for callers without a user or billing disabled)."""

    request_id: str
    status: str
    price_usd: Decimal | None
    charged_usd: Decimal
    written_off_usd: Decimal
    transaction_id: int | None
    billed: bool
    replayed: bool


@dataclass(frozen=True)
class Violation:
    invariant: str
    user_id: uuid.UUID | None
    transaction_id: int | None
    detail: str


@dataclass(frozen=True)
class LedgerHead:
    user_id: uuid.UUID
    version: int
    ledger_head: str  # SHA-256, hex


@dataclass(frozen=True)
class BrokenAnchor:
    user_id: uuid.UUID
    version: int
    problem: str  # missing | rewritten


@dataclass(frozen=True)
class ExchangeRate:
    id: int
    currency: str
    per_usd: Decimal
    valid_from: dt.datetime


@dataclass(frozen=True)
class ToolPricingRow:
    tool_name: str
    base_price_usd: Decimal
    markup_percent: Decimal
    estimate_usd: Decimal | None
    variable_cost: bool
    description: str | None
    updated_at: dt.datetime
    max_price_usd: Decimal | None
    per_input_char_usd: Decimal | None
    # What callers without credentials get: the setting (deny / free, with a daily cap; None: the default
    # that follows the price) and the effective answer: "deny", "free" or "free:N/day".
    anonymous_policy: str | None = None
    anonymous_daily_calls: int | None = None
    anonymous_access: str = "free"

    @property
    def anonymous_label(self) -> str:
        """The effective anonymous policy, marked "(default)" when it follows the price."""
        return self.anonymous_access if self.anonymous_policy is not None else f"{self.anonymous_access} (default)"


@dataclass(frozen=True)
class Configuration:
    time_zone: str
    hold_ttl: dt.timedelta


@dataclass(frozen=True)
class RequestStart:
    """The pre-flight of a metered call (billing.begin_request): tracking record, estimate and hold."""

    tracking_id: int
    request_id: str
    status: str
    estimate_usd: Decimal
    reservation_id: int | None
    reservation_status: str | None
    available_usd: Decimal | None
    replayed: bool


@dataclass(frozen=True)
class ApiKey:
    """An API key as listed (never its digest). ``revoked_at`` is None for a live key (and on creation)."""

    id: int
    name: str
    key_prefix: str | None
    user_id: uuid.UUID | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


@dataclass(frozen=True)
class ApiKeyRevocation:
    name: str
    revoked_at: dt.datetime
    replayed: bool


@dataclass(frozen=True)
class ApiKeyIdentity:
    """Who an API key is: ``name`` is the client key of its calls, ``user_id`` the user it bills (or None)."""

    name: str
    user_id: uuid.UUID | None
    revoked: bool
    key_hash: bytes


@dataclass(frozen=True)
class UnbilledCall:
    request_id: str
    tool_name: str
    user_id: uuid.UUID | None
    client_key: str | None
    created_at: dt.datetime
    age: dt.timedelta
    hold_usd: Decimal | None
    hold_status: str | None
    hold_expires_at: dt.datetime | None


@dataclass(frozen=True)
class WrittenOffCall:
    """A row of billing.written_off_calls: a call charged less than its price, and why."""

    request_id: str
    written_off_at: dt.datetime
    user_id: uuid.UUID
    tool_name: str | None
    hold_usd: Decimal | None
    price_usd: Decimal
    max_price_usd: Decimal | None
    charged_usd: Decimal
    written_off_usd: Decimal
    reason: str
    transaction_id: int | None


@dataclass(frozen=True)
class PaymentIntent:
    """A payment a user started (billing.create_payment_intent / attach_payment_checkout)."""

    intent_id: uuid.UUID
    provider: str
    status: str
    amount: Decimal
    currency: str
    external_id: str | None
    checkout_url: str | None
    expires_at: dt.datetime
    created_at: dt.datetime
    replayed: bool
    # Set only on a refusal by a payment fraud rule, which the wrappers raise as PaymentRefused instead.
    rule: str | None = None
    message: str | None = None
    retry_at: dt.datetime | None = None
    retry_after: int | None = None


@dataclass(frozen=True)
class CheckoutAttached:
    intent_id: uuid.UUID
    status: str
    external_id: str | None
    checkout_url: str | None
    expires_at: dt.datetime
    replayed: bool


@dataclass(frozen=True)
class IntentStatus:
    intent_id: uuid.UUID
    status: str


@dataclass(frozen=True)
class PaymentDetails:
    """billing.payment_intent: a payment as its owner sees it."""

    intent_id: uuid.UUID
    provider: str
    status: str
    amount: Decimal
    currency: str
    checkout_url: str | None
    expires_at: dt.datetime
    paid_amount: Decimal | None
    paid_currency: str | None
    credited_usd: Decimal | None
    exchange_rate: Decimal | None
    transaction_id: int | None
    reversed_usd: Decimal
    mismatch: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class OpenIntent:
    """billing.open_payment_intents: an intent reconciliation asks its provider about."""

    intent_id: uuid.UUID
    user_id: uuid.UUID
    provider: str
    status: str
    amount: Decimal
    currency: str
    external_id: str | None
    payment_ref: str | None
    expires_at: dt.datetime
    created_at: dt.datetime


@dataclass(frozen=True)
class PaymentFacts:
    """What a verified provider event says, reduced to the arguments of billing.record_payment_event.

    ``action`` is paid / failed / expired / reversal / ignore; a reversal (or a paid snapshot that also
    reports one) names its bucket (``reversal_key``), kind (refund / chargeback) and the cumulative
    amount the provider reports reversed. ``payload`` is what the provider said (at most 64 KiB), stored
    for audit. ``review_reason``: something the caller found that the ledger cannot check (another
    merchant, say); a paid payment with one goes to review, uncredited.
    """

    provider: str
    event_id: str
    event_type: str
    payload: str
    action: str = "ignore"
    intent_id: uuid.UUID | None = None
    external_id: str | None = None
    payment_ref: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    reversal_key: str | None = None
    reversal_kind: str | None = None
    reversed_amount: Decimal | None = None
    reversal_currency: str | None = None
    reinstated: bool = False
    review_reason: str | None = None

    def params(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "payload": self.payload,
            "intent_id": self.intent_id,
            "external_id": self.external_id,
            "payment_ref": self.payment_ref,
            "action": self.action,
            "amount": money_param(self.amount, "amount"),
            "currency": self.currency,
            "reversal_key": self.reversal_key,
            "reversal_kind": self.reversal_kind,
            "reversed_amount": money_param(self.reversed_amount, "reversed_amount"),
            "reversal_currency": self.reversal_currency,
            "reinstated": self.reinstated,
            "review_reason": self.review_reason,
        }


@dataclass(frozen=True)
class PaymentEventResult:
    """billing.record_payment_event: what applying an event did (``outcome``: comma-separated steps)."""

    event_row_id: int
    outcome: str
    detail: str | None
    intent_id: uuid.UUID | None
    intent_status: str | None
    user_id: uuid.UUID | None
    transaction_id: int | None
    credited_usd: Decimal | None
    reversed_usd: Decimal
    duplicate: bool


@dataclass(frozen=True)
class ReviewedCredit:
    """billing.credit_reviewed_payment: an operator's credit of a payment that was in review."""

    intent_id: uuid.UUID
    status: str
    user_id: uuid.UUID
    transaction_id: int
    amount: Decimal
    currency: str
    credited_usd: Decimal
    exchange_rate: Decimal | None
    reversed_usd: Decimal
    replayed: bool


@dataclass(frozen=True)
class AbusePolicy:
    """A stored figure of an abuse rule (billing.abuse_policy). ``changed``: set_abuse_policy wrote it."""

    name: str
    value: Decimal
    updated_at: dt.datetime
    updated_by: str
    changed: bool = False


@dataclass(frozen=True)
class AbuseEvent:
    """One row of the audit trail of abuse rules (billing.abuse_events): a rule that fired or a decision."""

    id: int
    created_at: dt.datetime
    rule: str
    action: str
    user_id: uuid.UUID | None
    client_ip: IPv4Address | IPv6Address | None
    detail: dict[str, Any]
    actor: str


@dataclass(frozen=True)
class AnonymousCall:
    """billing.begin_anonymous_call: an anonymous call counted (not tracked, never charged).

    ``usage_day`` and ``client_network`` name its billing.anonymous_usage row (for
    record_anonymous_failure); ``access`` is the policy applied ("free" or "free:N/day"), ``calls_today``
    the count with this call, ``daily_calls`` N (None: unlimited), ``resets_at`` when today's count ends."""

    usage_day: dt.date
    client_network: IPv4Interface | IPv6Interface | IPv4Address | IPv6Address
    access: str
    calls_today: int
    daily_calls: int | None
    resets_at: dt.datetime


@dataclass(frozen=True)
class VelocityRun:
    """One run of the velocity detector (billing.detect_velocity). ``status``: ran, busy (another gateway's
    run holds the lock) or recent (one ran within half the check interval)."""

    status: str
    flags_raised: int
    accounts_paused: int
    spike_candidates: int
    fanout_candidates: int
    buckets_rolled_up: int


@dataclass(frozen=True)
class AccountFlag:
    """A suspicion raised on an account (billing.list_account_flags): the rule, its figures, the decision."""

    id: int
    user_id: uuid.UUID
    external_id: str
    rule: str
    status: str
    raised_at: dt.datetime
    detail: dict[str, Any]
    paused: bool
    decided_at: dt.datetime | None
    decided_by: str | None
    reason: str | None
    account_active: bool


@dataclass(frozen=True)
class FlagDecision:
    """An operator's decision on a flag (billing.decide_account_flag); ``replayed``: it was already so decided."""

    id: int
    user_id: uuid.UUID
    rule: str
    status: str
    decided_at: dt.datetime
    decided_by: str
    reason: str
    account_active: bool
    replayed: bool


def money_param(value: Money | None, field: str) -> Decimal | None:
    """Decimal (or int) through; float refused here, before binary noise can become money."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{field} must be a Decimal, not {type(value).__name__}")
    return Decimal(value)


def jsonb_param(value: list[Any] | dict[str, Any] | None) -> Jsonb | None:
    """A JSON argument, or None. No ``dumps=`` here: every connection from ``api.ledger.db`` renders JSON
    with ``api.jsonio.dumps`` (Decimal as its exact digits, floats refused), sync and async alike."""
    return None if value is None else Jsonb(value)


def anchor_params(anchors: Sequence[LedgerHead]) -> dict[str, Any]:
    """billing.verify_anchors' three parallel arrays."""
    return {
        "user_ids": [anchor.user_id for anchor in anchors],
        "versions": [anchor.version for anchor in anchors],
        "hashes": [bytes.fromhex(anchor.ledger_head) for anchor in anchors],
    }
