"""Finds the provider modules and builds the configured providers from the environment.

Every module in ``api.payments.providers`` that defines ``from_env(env, common)`` is a provider: adding
one (say Monobank, whose webhooks are ECDSA-signed) is one new module there and its variables in
docs/payments.md. A provider none of whose variables are set is simply not offered.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Protocol

from api.payments import providers as providers_package
from api.payments.base import CommonSettings, PaymentProvider, ProviderConfigError


class _ProviderModule(Protocol):
    def from_env(self, env: Mapping[str, str], common: CommonSettings) -> PaymentProvider | None: ...


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = _get(env, name) or default
    if not value.startswith(("http://", "https://")) or len(value) > 1000:
        raise ProviderConfigError(f"{name}={value!r} is not an http(s) URL")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ProviderConfigError(f"{name}={raw!r} must be a whole number from {low} to {high}")
    return int(raw)


def load_common(env: Mapping[str, str]) -> CommonSettings:
    public_url = _url(env, "TOLLGATE_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
    return CommonSettings(
        success_url=_url(env, "TOLLGATE_PAYMENT_SUCCESS_URL", f"{public_url}/api/billing/payments/{{intent_id}}"),
        cancel_url=_url(env, "TOLLGATE_PAYMENT_CANCEL_URL", f"{public_url}/api/billing/payments/{{intent_id}}"),
        public_url=public_url,
        # Stripe accepts Checkout Sessions that expire 30 minutes to 24 hours after creation.
        ttl=dt.timedelta(minutes=_positive_int(env, "TOLLGATE_PAYMENT_TTL_MINUTES", 60, 30, 1440)),
        webhook_tolerance=dt.timedelta(seconds=_positive_int(env, "TOLLGATE_WEBHOOK_TOLERANCE_SECONDS", 300, 1, 86400)),
        timeout_seconds=float(_positive_int(env, "TOLLGATE_PAYMENT_TIMEOUT_SECONDS", 20, 1, 300)),
    )


def provider_modules() -> dict[str, _ProviderModule]:
    """Every provider module by its module name."""
    found: dict[str, _ProviderModule] = {}
    for info in pkgutil.iter_modules(providers_package.__path__):
        module = importlib.import_module(f"{providers_package.__name__}.{info.name}")
        if callable(getattr(module, "from_env", None)):
            found[info.name] = module
    return found


def load_providers(env: Mapping[str, str]) -> dict[str, PaymentProvider]:
    """The configured providers by name (none configured: empty). Raises ProviderConfigError naming
    the variable when a provider is configured only in part or wrongly."""
    common = load_common(env)
    configured: dict[str, PaymentProvider] = {}
    for module in provider_modules().values():
        provider = module.from_env(env, common)
        if provider is not None:
            configured[provider.name] = provider
    return configured


def amount_bounds(env: Mapping[str, str]) -> dict[str, tuple[Decimal, Decimal]]:
    """The smallest and largest top-up a user may start, per currency (TOLLGATE_TOPUP_{MIN,MAX}_{USD,UAH})."""
    defaults = {"USD": (Decimal("1.00"), Decimal("1000.00")), "UAH": (Decimal("50.00"), Decimal("40000.00"))}
    bounds: dict[str, tuple[Decimal, Decimal]] = {}
    for currency, (low_default, high_default) in defaults.items():
        values = []
        for edge, default in (("MIN", low_default), ("MAX", high_default)):
            name = f"TOLLGATE_TOPUP_{edge}_{currency}"
            raw = _get(env, name)
            if raw is None:
                values.append(default)
                continue
            try:
                value = Decimal(raw)
            except InvalidOperation:
                raise ProviderConfigError(f"{name}={raw!r} is not a decimal amount") from None
            if not value.is_finite() or value <= 0 or value != value.quantize(Decimal("0.01")) or value >= 10**9:
                raise ProviderConfigError(f"{name}={raw!r} must be a positive amount with at most 2 decimals")
            values.append(value)
        if values[0] > values[1]:
            raise ProviderConfigError(f"TOLLGATE_TOPUP_MIN_{currency} is above TOLLGATE_TOPUP_MAX_{currency}")
        bounds[currency] = (values[0], values[1])
    return bounds
