"""The abuse controls' configuration: the ``[abuse]`` section of tollgate.toml, each knob overridable from the
environment. One place, on by default with sane limits (docs/abuse.md lists every knob and what a user sees
when it fires).

::

    [abuse]
    enabled = true                       # TOLLGATE_ABUSE_ENABLED: false switches every control off
    trusted_proxies = ["10.0.0.0/8"]     # TOLLGATE_ABUSE_TRUSTED_PROXIES (comma separated)

    [abuse.rate_limits]                  # TOLLGATE_ABUSE_RATE_LIMITS_<KNOB>
    storage = "redis://127.0.0.1:6379/0"
    tool_calls_per_ip = "300/minute burst 60"

    [abuse.connections]                  # TOLLGATE_ABUSE_CONNECTIONS_<KNOB>
    [abuse.metrics]                      # TOLLGATE_ABUSE_METRICS_<KNOB>
    [abuse.payments]                     # TOLLGATE_ABUSE_PAYMENTS_<KNOB>
    [abuse.velocity]                     # TOLLGATE_ABUSE_VELOCITY_<KNOB>

A knob's environment variable is ``TOLLGATE_ABUSE_`` + the section + ``_`` + the knob, upper case; it wins
over the file. Types follow the dataclass fields: booleans (true/false), integers, exact decimals (strings or
integers in TOML, never floats: some are money), strings, and lists of strings (comma separated in the
environment). Unknown keys, wrong types and out-of-range values are errors naming the key
(``AbuseConfigError``), at start-up.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

ENV_PREFIX = "TOLLGATE_ABUSE_"


class AbuseConfigError(ValueError):
    """The [abuse] configuration is wrong; the message names the key (or the environment variable)."""


@dataclass(frozen=True)
class RateLimitSettings:
    """Rate limits at the edge (api.abuse.ratelimit). A limit is ``"<count>/<second|minute|hour|day>"``
    with an optional ``" burst <n>"`` (GCRA: ``count`` per period sustained, up to ``n`` at once; the burst
    defaults to the count); ``"off"`` disables that limit."""

    # memory:// keeps the counters in this process (the embedded default: one gateway). Several gateways
    # serving one ledger must share them: redis://host:port/db.
    storage: str = "memory://"
    key_prefix: str = "tollgate"
    tool_calls_per_ip: str = "600/minute burst 120"
    tool_calls_per_user: str = "600/minute burst 120"
    tool_calls_per_api_key: str = "1200/minute burst 240"
    tool_calls_per_anonymous: str = "60/minute burst 20"
    billing_per_ip: str = "300/minute burst 60"
    billing_per_user: str = "120/minute burst 30"
    topups_per_ip: str = "20/hour burst 5"
    topups_per_user: str = "10/hour burst 3"
    webhooks_per_ip: str = "600/minute burst 120"


@dataclass(frozen=True)
class ConnectionSettings:
    """Connection hygiene (api.abuse.connections): read timeouts and caps on MCP sessions and SSE streams."""

    header_timeout_seconds: int = 10
    body_timeout_seconds: int = 30
    mcp_sessions_total: int = 1000
    mcp_sessions_per_principal: int = 20
    mcp_session_idle_seconds: int = 600
    sse_streams_per_principal: int = 5


@dataclass(frozen=True)
class MetricsSettings:
    """Who may read /metrics: a bearer token (the secret is best set in the environment), or a port of its own.
    Neither set: /metrics answers administrators only."""

    token: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class PaymentRules:
    """Payment fraud rules, enforced by the ledger (billing.abuse_policy, names ``payments.<knob>``). 0 turns
    a cap off."""

    intents_per_hour_per_user: int = 10
    intents_per_hour_per_ip: int = 20
    failed_per_day_per_user: int = 5
    failed_per_day_per_ip: int = 10
    new_account_days: int = 7
    new_account_topups: int = 3
    new_account_topup_usd: Decimal = Decimal(200)
    cooling_off_hours: int = 24
    cooling_off_spendable_usd: Decimal = Decimal(5)
    disputes_to_deactivate: int = 2


@dataclass(frozen=True)
class VelocityRules:
    """Velocity flags and refund caps, enforced by the ledger (billing.abuse_policy, names ``velocity.<knob>``;
    billing.detect_velocity and billing.refund). 0 turns a rule off. The defaults here are the defaults the
    SQL functions use when no figure is stored (keep them equal). ``review_contact`` is not a figure: it is
    text the gateway adds to the answer of a paused account (how to reach the operator), never stored."""

    window_minutes: int = 10  # the window spend and fan-out are measured over
    spike_factor: Decimal = Decimal(10)  # a spike: window spend > factor x max(trailing average, min_spend_usd)
    trailing_days: int = 7  # the period of an account's own average spend per window
    min_spend_usd: Decimal = Decimal(1)  # the floor of a baseline (an account with no history)
    fanout_api_keys: int = 10  # more distinct API keys than this in a window: flagged
    fanout_ips: int = 20  # more distinct client addresses than this in a window: flagged
    pause: bool = False  # a flag also deactivates the account until an operator clears it
    check_interval_seconds: int = 60  # how often each gateway runs the detector
    refund_cap_usd: Decimal = Decimal(100)  # operator refunds to one account per period, at most
    refund_cap_days: int = 30  # the period of the refund cap
    review_contact: str = ""  # e.g. "support@example.com": told to a paused account's caller


@dataclass(frozen=True)
class AbuseSettings:
    enabled: bool = True
    # CIDRs (or addresses) of the reverse proxies whose X-Forwarded-For is believed (api.abuse.clientip).
    trusted_proxies: tuple[str, ...] = ()
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    payments: PaymentRules = field(default_factory=PaymentRules)
    velocity: VelocityRules = field(default_factory=VelocityRules)

    def ledger_policy(self) -> dict[str, Decimal]:
        """The figures the ledger enforces, by their billing.abuse_policy name (booleans as 0/1)."""
        policy: dict[str, Decimal] = {}
        for section in ("payments", "velocity"):
            values = getattr(self, section)
            for item in dataclasses.fields(values):
                value = getattr(values, item.name)
                if isinstance(value, str):
                    continue  # text for the gateway's answers, not a figure the ledger enforces
                policy[f"{section}.{item.name}"] = Decimal(int(value)) if isinstance(value, bool) else Decimal(value)
        return policy


_SECTIONS: dict[str, type[Any]] = {
    "rate_limits": RateLimitSettings,
    "connections": ConnectionSettings,
    "metrics": MetricsSettings,
    "payments": PaymentRules,
    "velocity": VelocityRules,
}
_MAX_INT = 10**12


def load_abuse_settings(table: Mapping[str, Any] | None, environ: Mapping[str, str]) -> AbuseSettings:
    """The settings from tollgate.toml's ``[abuse]`` table (None: absent) and the environment."""
    table = dict(table or {})
    top = {item.name: item for item in dataclasses.fields(AbuseSettings) if item.name not in _SECTIONS}
    unknown = sorted(set(table) - set(top) - set(_SECTIONS))
    if unknown:
        raise AbuseConfigError(f"[abuse]: unknown key {unknown[0]!r} (known: {', '.join(sorted([*top, *_SECTIONS]))})")
    values: dict[str, Any] = _section_values(AbuseSettings, table, environ, "abuse", ENV_PREFIX, skip=set(_SECTIONS))
    for name, section_type in _SECTIONS.items():
        raw = table.get(name, {})
        if not isinstance(raw, Mapping):
            raise AbuseConfigError(f"[abuse]: {name} must be a table ([abuse.{name}])")
        section_values = _section_values(
            section_type, raw, environ, f"abuse.{name}", f"{ENV_PREFIX}{name.upper()}_", skip=set()
        )
        values[name] = section_type(**section_values)
    settings = AbuseSettings(**values)
    for proxy in settings.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise AbuseConfigError(f"abuse.trusted_proxies: {proxy!r} is not an IP address or CIDR network") from None
    return settings


def _section_values(
    cls: type[Any], table: Mapping[str, Any], environ: Mapping[str, str], where: str, env_prefix: str, skip: set[str]
) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = {item.name for item in dataclasses.fields(cls) if item.name not in skip}
    unknown = sorted(set(table) - fields - skip)
    if unknown:
        raise AbuseConfigError(f"[{where}]: unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    values: dict[str, Any] = {}
    for name in sorted(fields):
        variable = env_prefix + name.upper()
        raw_env = environ.get(variable, "").strip()
        if raw_env:
            values[name] = _from_text(hints[name], raw_env, variable)
        elif name in table:
            values[name] = _from_toml(hints[name], table[name], f"{where}.{name}")
    return values


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of a field's annotation."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return args[0], True
    return hint, False


def _from_text(hint: Any, raw: str, variable: str) -> Any:
    kind, optional = _base_type(hint)
    if optional and raw.lower() in ("none", "off"):
        return None
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise AbuseConfigError(f"{variable}={raw!r} is not a boolean (use true or false)")
    if kind is int:
        try:
            return _check_int(int(raw), variable)
        except ValueError:
            raise AbuseConfigError(f"{variable}={raw!r} is not an integer") from None
    if kind is Decimal:
        return _check_decimal(raw, variable)
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _from_toml(hint: Any, value: Any, key: str) -> Any:
    kind, optional = _base_type(hint)
    if value is None and optional:
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise AbuseConfigError(f"{key} must be true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AbuseConfigError(f"{key} must be an integer")
        return _check_int(value, key)
    if kind is Decimal:
        if isinstance(value, float):
            raise AbuseConfigError(f"{key}: write amounts as strings or integers (\"0.50\"), never TOML floats")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise AbuseConfigError(f"{key} must be a decimal string or an integer")
        return _check_decimal(str(value), key)
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise AbuseConfigError(f"{key} must be a list of strings")
        return tuple(value)
    if not isinstance(value, str):
        raise AbuseConfigError(f"{key} must be a string")
    return value


def _check_int(value: int, key: str) -> int:
    if not 0 <= value < _MAX_INT:
        raise AbuseConfigError(f"{key}={value} must be between 0 and {_MAX_INT - 1}")
    return value


def _check_decimal(raw: str, key: str) -> Decimal:
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise AbuseConfigError(f"{key}={raw!r} is not a decimal number") from None
    if not value.is_finite() or value < 0 or value >= _MAX_INT or value.as_tuple().exponent < -8:  # type: ignore[operator]
        raise AbuseConfigError(f"{key}={raw!r} must be a number >= 0 and < 1e12 with at most 8 decimals")
    return value
