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
    [abuse.anonymous]                    # TOLLGATE_ABUSE_ANONYMOUS_<KNOB>

A knob's environment variable is ``TOLLGATE_ABUSE_`` + the section + ``_`` + the knob, upper case; it wins
over the file. Types follow the dataclass fields: booleans (true/false), integers, exact decimals (strings or
integers in TOML, never floats: some are money), strings, and lists of strings (comma separated in the
environment). Unknown keys, wrong types and out-of-range values are errors naming the key
(``AbuseConfigError``), at start-up.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

ENV_PREFIX = "TOLLGATE_ABUSE_"


class AbuseConfigError(ValueError):
    """The [abuse] configuration is wrong; the message names the key (or the environment variable)."""


# A limit's spelling: "<count>/<period>[ burst <n>]", or "off".
LIMIT_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*(?:burst\s+(\d+)\s*)?$")
PERIOD_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
STORAGE_SCHEMES = ("memory://", "redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class LimitSpec:
    """One rate limit: ``count`` per ``period`` sustained (GCRA), up to ``burst`` at once."""

    name: str  # the knob: "tool_calls_per_ip"
    count: int
    period: str  # second, minute, hour or day
    burst: int

    @property
    def period_seconds(self) -> int:
        return PERIOD_SECONDS[self.period]

    def describe(self) -> str:
        return f"{self.count} per {self.period}, {self.burst} at once"


def parse_limit(name: str, spec: str) -> LimitSpec | None:
    """The limit of knob ``name`` spelled ``spec``; None for "off". AbuseConfigError names the knob."""
    if spec.strip().lower() == "off":
        return None
    match = LIMIT_SPEC.match(spec.lower())
    if match is None:
        raise AbuseConfigError(
            f'abuse.rate_limits.{name}={spec!r}: write "<count>/<second|minute|hour|day>", optionally followed by'
            ' " burst <n>" ("600/minute burst 120"), or "off"'
        )
    count, period, burst = int(match[1]), match[2], int(match[3] or match[1])
    if not 1 <= count <= 10**9 or not 1 <= burst <= 10**9:
        raise AbuseConfigError(f"abuse.rate_limits.{name}={spec!r}: the count and the burst must be 1 to 1000000000")
    return LimitSpec(name, count, period, burst)


@dataclass(frozen=True)
class RateLimitSettings:
    """Rate limits at the edge (api.abuse.ratelimit, docs/abuse.md "Rate limits"). A limit is
    ``"<count>/<second|minute|hour|day>"`` with an optional ``" burst <n>"`` (GCRA: ``count`` per period
    sustained, up to ``n`` at once; the burst defaults to the count); ``"off"`` disables that limit. Every
    limit is checked when the settings are made, so a misspelt one stops the gateway at start-up."""

    # memory:// keeps the counters in this process (the embedded default: one gateway). Several gateways
    # serving one ledger must share them: redis://host:port/db (or rediss://, unix://).
    storage: str = "memory://"
    key_prefix: str = "tollgate"
    # memory:// only: at most this many keys (subjects x limits) are remembered; the least recently used
    # go first (a key idle long enough to have refilled is dropped anyway).
    memory_max_keys: int = 100_000
    # redis://: how long one check may wait for Redis before the gateway falls back to its own counters.
    redis_timeout_ms: int = 250
    tool_calls_per_ip: str = "600/minute burst 120"
    tool_calls_per_user: str = "600/minute burst 120"
    tool_calls_per_api_key: str = "1200/minute burst 240"
    tool_calls_per_anonymous: str = "60/minute burst 20"
    billing_per_ip: str = "300/minute burst 60"
    billing_per_user: str = "120/minute burst 30"
    topups_per_ip: str = "20/hour burst 5"
    topups_per_user: str = "10/hour burst 3"
    webhooks_per_ip: str = "600/minute burst 120"
    # New MCP sessions (POST /mcp without a session id, GET /sse) per client address.
    sessions_per_ip: str = "120/minute burst 30"
    # Every message on open MCP sessions (POST /mcp with a session id, POST /messages/), refused at the edge before
    # the MCP SDK parses it: a flood over a few sessions costs the gateway a 429, not a JSON-RPC round.
    mcp_messages_per_ip: str = "1200/minute burst 240"

    def __post_init__(self) -> None:
        self.limits()
        if not self.storage.startswith(STORAGE_SCHEMES):
            raise AbuseConfigError(
                f"abuse.rate_limits.storage={self.storage!r}: use memory:// (this process) or redis://host:port/db"
                " (shared by every gateway; also rediss:// and unix://)"
            )
        if not self.key_prefix or any(char.isspace() for char in self.key_prefix):
            raise AbuseConfigError("abuse.rate_limits.key_prefix must be a non-empty word without spaces")
        if self.memory_max_keys < 100:
            raise AbuseConfigError(f"abuse.rate_limits.memory_max_keys={self.memory_max_keys} must be at least 100")
        if not 1 <= self.redis_timeout_ms <= 60_000:
            raise AbuseConfigError(f"abuse.rate_limits.redis_timeout_ms={self.redis_timeout_ms} must be 1 to 60000")

    def limits(self) -> dict[str, LimitSpec]:
        """The limits that are on, by knob name."""
        parsed = {
            item.name: parse_limit(item.name, getattr(self, item.name))
            for item in dataclasses.fields(self)
            if "_per_" in item.name
        }
        return {name: limit for name, limit in parsed.items() if limit is not None}


@dataclass(frozen=True)
class ConnectionSettings:
    """Connection hygiene (api.abuse.connections): read timeouts, a cap on connections, and caps on MCP sessions
    and SSE streams. 0 turns a knob off. With ``abuse.enabled = false`` only the header timeout and the header
    size cap stay (``relaxed``): they bound what a socket that never sends a request may cost."""

    # A request's head (request line and headers) must arrive within this many seconds of its first byte (of
    # the connection, for the first request); otherwise the connection is closed. uvicorn has no such timeout.
    header_timeout_seconds: int = 10
    # A request head larger than this is answered 431 and the connection closed (httptools has no limit).
    header_max_bytes: int = 65_536
    # A request's body must have arrived this many seconds after its head: 408, and the connection is closed.
    body_timeout_seconds: int = 30
    # Open connections of this process (uvicorn's limit_concurrency): past it, requests are answered 503.
    max_connections: int = 4096
    # Open MCP sessions (/mcp and /sse together): in total (503), and per principal (429). A principal is a JWT
    # user, an API key, or an anonymous client by its address (api.abuse.clientip).
    mcp_sessions_total: int = 1000
    mcp_sessions_per_principal: int = 20
    # A session with no request for this long is ended (/mcp: no request in flight and no open GET stream;
    # /sse: no message posted and none sent).
    mcp_session_idle_seconds: int = 600
    # Open event streams per principal: GET /sse (each also a session) and the GET /mcp stream of a session.
    sse_streams_per_principal: int = 5

    def relaxed(self) -> ConnectionSettings:
        """What is left with abuse.enabled = false: the header timeout and size cap, nothing else."""
        return dataclasses.replace(
            self,
            body_timeout_seconds=0,
            max_connections=0,
            mcp_sessions_total=0,
            mcp_sessions_per_principal=0,
            mcp_session_idle_seconds=0,
            sse_streams_per_principal=0,
        )


@dataclass(frozen=True)
class MetricsSettings:
    """Who may read /metrics (api.gateway.http.ops): an administrator's JWT, or ``Authorization: Bearer <token>``
    when a token is set (best set in the environment, TOLLGATE_ABUSE_METRICS_TOKEN). With a port, /metrics is
    served on that port of the gateway's host only (the token, when set, is required there too) and not on the
    main port. Unlike the other sections, ``abuse.enabled = false`` does not open /metrics: it shows revenue."""

    token: str | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if self.port is not None and not 1 <= self.port <= 65535:
            raise AbuseConfigError(f"abuse.metrics.port={self.port} must be a TCP port (1-65535)")
        if self.token is not None and len(self.token) < 16:
            raise AbuseConfigError("abuse.metrics.token must be at least 16 characters (a random secret)")


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
class AnonymousSettings:
    """Callers without credentials (docs/abuse.md, "Anonymous callers"). Who may call what is per tool, with
    its price (``[pricing.<tool>] anonymous = "deny" | "free" | "free:N/day"``, billing.tool_pricing); this
    section holds what the gateway adds to a refusal."""

    # Where a person gets an API key or signs in; quoted in every anonymous refusal when set.
    sign_in_url: str | None = None


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
    anonymous: AnonymousSettings = field(default_factory=AnonymousSettings)

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
    "anonymous": AnonymousSettings,
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
    url = settings.anonymous.sign_in_url
    if url is not None and not (
        url.startswith(("https://", "http://")) and len(url) <= 500 and url.isprintable() and " " not in url
    ):
        raise AbuseConfigError(f"abuse.anonymous.sign_in_url: {url!r} is not an http(s) URL of at most 500 characters")
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
            number = int(raw)
        except ValueError:
            raise AbuseConfigError(f"{variable}={raw!r} is not an integer") from None
        return _check_int(number, variable)
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
            raise AbuseConfigError(f'{key}: write amounts as strings or integers ("0.50"), never TOML floats')
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
