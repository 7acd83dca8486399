"""The one place where database errors become Tollgate exceptions.

The PL/pgSQL functions raise custom SQLSTATEs of the ``BL`` class (see ``ERROR_CODES``); each carries a
message a person can act on, and a DETAIL that is a JSON object with the figures. ``translate_errors``
turns a psycopg error into the matching ``BillingError`` subclass, with the detail parsed (numbers as
``Decimal``) and the HTTP status the gateway answers with. Nothing else in ``api/`` matches on SQLSTATEs
or message text.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

import psycopg

from api.errors import TollgateError


@dataclass(frozen=True)
class ErrorCode:
    """One entry of the registry: the SQLSTATE, a stable name for clients, and the HTTP status."""

    sqlstate: str
    name: str
    http_status: int
    meaning: str


# The registry. db/README.md lists the same codes; tests/sql/test_errors.py proves that every code raised in
# db/ is here, that every code here is raised somewhere, and that the README table matches.
ERROR_CODES: tuple[ErrorCode, ...] = (
    ErrorCode("BL001", "insufficient_funds", 402, "available balance (balance - holds) is below the amount"),
    ErrorCode("BL002", "daily_limit_exceeded", 429, "today's spend + holds + amount would pass the daily limit"),
    ErrorCode("BL003", "monthly_limit_exceeded", 429, "the month's spend + holds + amount would pass the limit"),
    ErrorCode("BL004", "account_inactive", 403, "the account is deactivated: no new charges or holds"),
    ErrorCode("BL005", "idempotency_conflict", 409, "the key was used before with different parameters"),
    ErrorCode("BL006", "invalid_amount", 422, "null, NaN, infinite, negative/zero, >8 decimals or >= 1e12"),
    ErrorCode("BL007", "unknown_user", 404, "no billing account for that user id"),
    ErrorCode("BL008", "unknown_request", 404, "no reservation / tracked call with that request id"),
    ErrorCode("BL009", "invalid_argument", 422, "a non-money argument is missing, empty, too long or malformed"),
    ErrorCode("BL010", "unknown_transaction", 404, "no ledger transaction with that id"),
    ErrorCode("BL011", "refund_exceeds_charge", 409, "refunds of a charge would add up to more than the charge"),
    ErrorCode("BL012", "invalid_state", 409, "the operation does not apply in the object's current state"),
    ErrorCode("BL013", "no_exchange_rate", 422, "a UAH amount needs an exchange rate and none is set"),
    ErrorCode("BL014", "unsupported_currency", 422, "the currency is not USD or UAH"),
    ErrorCode("BL015", "unknown_api_key", 404, "no API key with that name"),
    ErrorCode("BL016", "unknown_payment", 404, "no payment intent with that id (for this user)"),
    ErrorCode("BL040", "anonymous_denied", 401, "the tool is not served to callers without credentials: sign in"),
    ErrorCode("BL041", "anonymous_quota_exceeded", 429, "this anonymous client used the tool's free calls of the day"),
    ErrorCode("BL030", "refund_cap_exceeded", 409, "refunds to the account in the period would pass the cap"),
    ErrorCode("BL031", "unknown_flag", 404, "no account flag with that id"),
    ErrorCode("BL090", "ledger_append_only", 409, "ledger rows cannot be updated or deleted"),
)

BY_SQLSTATE: dict[str, ErrorCode] = {code.sqlstate: code for code in ERROR_CODES}


class BillingError(TollgateError):
    """A refusal from the billing functions. ``detail`` holds the figures (Decimal for numbers).

    ``status`` and ``code`` (``TollgateError``) are the registry entry's HTTP status and name; ``error_code``
    is the whole entry."""

    sqlstate: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.sqlstate:
            cls.status = BY_SQLSTATE[cls.sqlstate].http_status
            cls.code = BY_SQLSTATE[cls.sqlstate].name

    def __init__(self, message: str, detail: dict[str, Any] | None = None, hint: str | None = None) -> None:
        self.detail: dict[str, Any] = detail or {}
        self.hint = hint
        extra: dict[str, Any] = {"details": self.detail} if self.detail else {}
        if hint:
            extra["hint"] = hint
        super().__init__(message, **extra)

    @property
    def error_code(self) -> ErrorCode:
        return BY_SQLSTATE[self.sqlstate]


class InsufficientFunds(BillingError):
    sqlstate = "BL001"


class LimitExceeded(BillingError):
    """Base of the two limit refusals; ``detail["limit"]`` says which ("daily" or "monthly")."""


class DailyLimitExceeded(LimitExceeded):
    sqlstate = "BL002"


class MonthlyLimitExceeded(LimitExceeded):
    sqlstate = "BL003"


class AccountInactive(BillingError):
    sqlstate = "BL004"


class IdempotencyConflict(BillingError):
    sqlstate = "BL005"


class InvalidAmount(BillingError):
    sqlstate = "BL006"


class UnknownUser(BillingError):
    sqlstate = "BL007"


class UnknownRequest(BillingError):
    sqlstate = "BL008"


class InvalidArgument(BillingError):
    sqlstate = "BL009"


class UnknownTransaction(BillingError):
    sqlstate = "BL010"


class RefundExceedsCharge(BillingError):
    sqlstate = "BL011"


class InvalidState(BillingError):
    sqlstate = "BL012"


class NoExchangeRate(BillingError):
    sqlstate = "BL013"


class UnsupportedCurrency(BillingError):
    sqlstate = "BL014"


class UnknownApiKey(BillingError):
    sqlstate = "BL015"


class UnknownPayment(BillingError):
    sqlstate = "BL016"


class AnonymousDenied(BillingError):
    sqlstate = "BL040"


class AnonymousQuotaExceeded(BillingError):
    """``detail``: daily_calls (the limit) and resets_at (when it renews)."""

    sqlstate = "BL041"
class RefundCapExceeded(BillingError):
    """A refund that would take the account's refunds in the cap's period past the cap (velocity.refund_cap_usd):
    ``detail`` has cap_usd, period_days, refunded_usd, requested_usd and remaining_usd. Nothing was written: the
    caller records the refusal with ``record_refused_refund``."""

    sqlstate = "BL030"


class UnknownFlag(BillingError):
    sqlstate = "BL031"


class LedgerAppendOnly(BillingError):
    sqlstate = "BL090"


EXCEPTIONS: dict[str, type[BillingError]] = {
    cls.sqlstate: cls
    for cls in (
        InsufficientFunds,
        DailyLimitExceeded,
        MonthlyLimitExceeded,
        AccountInactive,
        IdempotencyConflict,
        InvalidAmount,
        UnknownUser,
        UnknownRequest,
        InvalidArgument,
        UnknownTransaction,
        RefundExceedsCharge,
        InvalidState,
        NoExchangeRate,
        UnsupportedCurrency,
        UnknownApiKey,
        UnknownPayment,
        AnonymousDenied,
        AnonymousQuotaExceeded,
        RefundCapExceeded,
        UnknownFlag,
        LedgerAppendOnly,
    )
}


class PaymentRefused(TollgateError):
    """A top-up start refused by a payment fraud rule (billing.create_payment_intent; docs/abuse.md).

    Not a SQLSTATE: the function answers the refusal as a result row, so that the audit row it writes
    (billing.abuse_events) commits, and the wrappers raise this from that row. Answered 429 with
    ``Retry-After`` (seconds, from the ledger's clock), the rule's name, when it stops refusing, and the
    message the ledger worded for the user."""

    status = 429
    code = "payment_refused"

    def __init__(self, message: str, rule: str, retry_at: dt.datetime | None, retry_after: int | None) -> None:
        headers = {"Retry-After": str(max(int(retry_after), 1))} if retry_after is not None else None
        extra: dict[str, Any] = {"rule": rule}
        if retry_at is not None:
            extra["retry_at"] = retry_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        super().__init__(message, headers=headers, **extra)
        self.rule = rule
        self.retry_at = retry_at
        self.retry_after = retry_after


MONEY_SUFFIXES = ("_usd", "_uah")


def parse_detail(detail: str | None) -> dict[str, Any]:
    """The functions put a JSON object in DETAIL; fractions and amounts (keys ending in _usd or
    _uah) become Decimal, never float; other whole numbers (ids, counts) stay int."""
    if not detail:
        return {}
    try:
        parsed = json.loads(detail, parse_float=Decimal)
    except json.JSONDecodeError:
        return {"text": detail}
    if not isinstance(parsed, dict):
        return {"value": parsed}
    # A whole amount such as 2 arrives as a JSON integer; money is Decimal whatever its digits.
    return {
        key: Decimal(value) if key.endswith(MONEY_SUFFIXES) and type(value) is int else value
        for key, value in parsed.items()
    }


def from_psycopg(error: psycopg.Error) -> BillingError | None:
    """The BillingError for a psycopg error raised by a billing function, or None for any other error."""
    sqlstate = error.sqlstate
    if sqlstate is None or sqlstate not in EXCEPTIONS:
        return None
    diag = error.diag
    return EXCEPTIONS[sqlstate](
        diag.message_primary or str(error), parse_detail(diag.message_detail), diag.message_hint
    )


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise billing refusals from the database as BillingError subclasses; let the rest through."""
    try:
        yield
    except psycopg.Error as error:
        billing_error = from_psycopg(error)
        if billing_error is None:
            raise
        raise billing_error from error
