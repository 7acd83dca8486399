"""Rate limits at the edge: keyed GCRA (a token bucket kept as one timestamp) over a store of per-key state.

A limit (``abuse.rate_limits.<name>``, parsed by ``api.abuse.config.parse_limit``) sustains ``count`` per
period and lets ``burst`` through at once. Each (limit, subject) pair — a client address, a user, an API
key — is one key, ``<key_prefix>:<limit name>:<subject>``, holding one number. The algorithm is
pyrate-limiter's ``GCRA``; where the state lives is the storage knob:

* ``memory://`` (the embedded default, one gateway): a dict in this process, bounded — a key whose bucket
  has refilled holds nothing worth keeping and is dropped, and past ``memory_max_keys`` the least recently
  used keys go first, so a flood of distinct addresses cannot grow the process without bound.
* ``redis://…`` (several gateways on one ledger): pyrate-limiter's ``RedisStateStore``, which runs the GCRA
  step as one Lua script (atomic across every gateway) and lets the key expire once its bucket has refilled.
  Start-up fails when Redis cannot be reached. If Redis fails while serving, the gateway logs it, counts it
  (``tollgate_rate_limit_store_errors``) and falls back to its own counters for a few seconds before trying
  Redis again: limits then hold per process (fail-soft), never switched off and never refusing everyone.

``RateLimiter.hit(checks)`` spends one unit of every check, all or nothing: when one refuses, the units
already spent by the others are given back, so a refused request costs no budget (the IP budget of an
office is not drained by one of its users hitting their own limit). The refusal names the limit and how
long to wait; ``RateLimited`` is its HTTP answer (429, ``Retry-After``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from pyrate_limiter import GCRA, Rate
from pyrate_limiter.abstracts.algorithm import Decision
from pyrate_limiter.buckets import RedisStateStore

from api.abuse.config import LimitSpec, RateLimitSettings
from api.errors import TollgateError

log = logging.getLogger("tollgate.abuse.ratelimit")

ALGORITHM = GCRA()
# After Redis fails, how long this process keeps its own counters before asking Redis again.
FALLBACK_SECONDS = 5.0
# At most one "store unreachable" error in the log per this many seconds (the metric counts every one).
LOG_EVERY_SECONDS = 10.0
# Idle keys looked at (and dropped when refilled) per check of the memory store: amortised expiry.
SWEEP_PER_CHECK = 2


def rate_of(limit: LimitSpec) -> Rate:
    return Rate(limit.count, limit.period_seconds * 1000, burst=limit.burst)


@dataclass(frozen=True)
class Check:
    """One unit to spend: ``limit`` (a knob name) for ``subject`` (an address, a user id, a key name)."""

    limit: str
    subject: str


@dataclass(frozen=True)
class Refusal:
    """A check that refused: the limit, and how long until one more request would pass."""

    limit: LimitSpec
    retry_after_ms: int

    @property
    def retry_after(self) -> int:
        """Whole seconds to wait, at least 1 (Retry-After is an integer)."""
        return max(1, math.ceil(self.retry_after_ms / 1000))

    def message(self) -> str:
        hint = ""
        if self.limit.name.endswith("_per_anonymous"):
            hint = "; signed-in callers (a JWT or an API key) have a larger budget"
        return (
            f"rate limited: {self.limit.name} ({self.limit.describe()}) is used up; retry in {self.retry_after} s"
            + hint
        )

    def error(self) -> RateLimited:
        return RateLimited(self)


class RateLimited(TollgateError):
    """429: a rate limit is used up. The body names the limit and the wait; so do the headers (Retry-After,
    and the IETF draft's RateLimit-Policy / RateLimit)."""

    status = 429
    code = "rate_limited"

    def __init__(self, refusal: Refusal) -> None:
        limit = refusal.limit
        wait = refusal.retry_after
        super().__init__(
            refusal.message(),
            headers={
                "Retry-After": str(wait),
                "RateLimit-Policy": f'"{limit.name}";q={limit.count};w={limit.period_seconds}',
                "RateLimit": f'"{limit.name}";r=0;t={wait}',
            },
            limit=limit.name,
            retry_after=wait,
        )
        self.refusal = refusal


class StoreUnavailable(RuntimeError):
    """The configured shared store (Redis) cannot be reached at start-up."""


class MemoryStore:
    """Per-key GCRA state in this process, bounded in keys (module docstring). Not shared between processes.

    The event loop makes each step atomic: ``step`` does not await between reading and writing a key.
    """

    def __init__(self, max_keys: int, clock: Callable[[], int] | None = None) -> None:
        self.max_keys = max_keys
        self._clock = clock or (lambda: time.monotonic_ns() // 1_000_000)
        # key -> theoretical arrival time (µs, pyrate-limiter's GCRA state), least recently used first.
        self._tat: OrderedDict[str, int] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._tat)

    async def step(self, key: str, rate: Rate, weight: int) -> Decision:
        now = self._clock()
        previous = self._tat.pop(key, 0)
        state, decision = ALGORITHM.step([rate], (previous,), now, weight)
        tat = int(state[0])
        if tat > now * 1000:
            self._tat[key] = tat  # not refilled yet: remember it, as the most recently used
        self._sweep(now)
        return decision

    def _sweep(self, now: int) -> None:
        for _ in range(SWEEP_PER_CHECK):
            if not self._tat:
                return
            key, tat = next(iter(self._tat.items()))
            if tat > now * 1000:
                break
            del self._tat[key]
        while len(self._tat) > self.max_keys:
            self._tat.popitem(last=False)
            self.evicted += 1

    async def aclose(self) -> None:
        self._tat.clear()


class RedisStore:
    """Per-key GCRA state in Redis, shared by every gateway: pyrate-limiter's RedisStateStore, one per key."""

    def __init__(self, url: str, timeout_ms: int) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        seconds = timeout_ms / 1000
        # No retries: a check that cannot be answered in time falls back to this process's counters.
        self.redis = Redis.from_url(
            url, socket_timeout=seconds, socket_connect_timeout=seconds, retry=Retry(NoBackoff(), 0)
        )
        self._stores: OrderedDict[str, RedisStateStore] = OrderedDict()

    async def ping(self) -> None:
        await self.redis.ping()

    async def step(self, key: str, rate: Rate, weight: int) -> Decision:
        # The Lua step is given the wall clock in ms: the gateways' clocks must agree (NTP), as they must for
        # the ledger's own timestamps.
        now = time.time_ns() // 1_000_000
        result: Any = self._store(key).check(ALGORITHM, [rate], now, weight)  # type: ignore[no-untyped-call]
        decision: Decision = await result
        return decision

    def _store(self, key: str) -> RedisStateStore:
        # A small cache only saves re-hashing the script per call; the state itself lives in Redis.
        store = self._stores.pop(key, None) or RedisStateStore(self.redis, key)
        self._stores[key] = store
        if len(self._stores) > 1024:
            self._stores.popitem(last=False)
        return store

    async def aclose(self) -> None:
        await self.redis.aclose()


Store = MemoryStore | RedisStore


class RateLimiter:
    """The configured limits over their store (module docstring). ``enabled=False``: every check passes."""

    def __init__(
        self, settings: RateLimitSettings, *, enabled: bool = True, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.enabled = enabled
        self.limits = settings.limits()
        self._rates = {name: rate_of(limit) for name, limit in self.limits.items()}
        self.shared = not settings.storage.startswith("memory://")
        self.local = MemoryStore(settings.memory_max_keys)
        self.store: Store = (
            RedisStore(settings.storage, settings.redis_timeout_ms) if self.shared and enabled else self.local
        )
        self._fallback_until = 0.0
        self._logged_at = -math.inf
        self.limited = Counter(
            "tollgate_rate_limited",
            "Requests refused by a rate limit, by limit name",
            ["limit"],
            registry=registry,
        )
        self.store_errors = Counter(
            "tollgate_rate_limit_store_errors",
            "Rate-limit checks the shared store (Redis) failed to answer (this process's counters were used)",
            registry=registry,
        )
        for name in self.limits:
            self.limited.labels(name)
        keys = Gauge(
            "tollgate_rate_limit_keys",
            "Keys held in this process's rate-limit counters (memory://, or while Redis is unreachable)",
            registry=registry,
        )
        keys.set_function(lambda: len(self.local))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RateLimiter]:
        """Connect the store (a shared one must answer now) and close it at the end."""
        if isinstance(self.store, RedisStore):
            try:
                await self.store.ping()
            except Exception as exc:
                await self.store.aclose()
                raise StoreUnavailable(
                    f"abuse.rate_limits.storage: cannot reach Redis at {_redact(self.settings.storage)}: {exc}"
                ) from None
            log.info("rate limits shared in Redis", extra={"storage": _redact(self.settings.storage)})
        try:
            yield self
        finally:
            await self.store.aclose()

    async def hit(self, checks: Sequence[Check]) -> Refusal | None:
        """Spend one unit of each check (those whose limit is off are skipped), all or nothing; the first
        refusal, or None when every check passed."""
        if not self.enabled:
            return None
        spent: list[Check] = []
        for check in checks:
            rate = self._rates.get(check.limit)
            if rate is None:
                continue
            decision = await self._step(check, rate, 1)
            if decision.allowed:
                spent.append(check)
                continue
            await self.give_back(spent)
            self.limited.labels(check.limit).inc()
            return Refusal(self.limits[check.limit], decision.retry_after_ms or 1000)
        return None

    async def give_back(self, checks: Sequence[Check]) -> None:
        """Return the units ``checks`` spent (a later limit of the same request refused it)."""
        if not self.enabled:
            return
        for check in reversed(checks):
            rate = self._rates.get(check.limit)
            if rate is not None:
                # A negative weight moves the key's arrival time back by the unit it spent.
                await self._step(check, rate, -1)

    async def _step(self, check: Check, rate: Rate, weight: int) -> Decision:
        key = f"{self.settings.key_prefix}:{check.limit}:{check.subject}"
        if self.store is not self.local and time.monotonic() >= self._fallback_until:
            try:
                return await self.store.step(key, rate, weight)
            except Exception as exc:  # redis.RedisError, OSError, TimeoutError: fail soft, never closed
                self._store_failed(exc)
        return await self.local.step(key, rate, weight)

    def _store_failed(self, exc: Exception) -> None:
        self.store_errors.inc()
        now = time.monotonic()
        self._fallback_until = now + FALLBACK_SECONDS
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = now
            log.error(
                "rate-limit store unreachable (%s: %s): limits hold per process for the next %.0f s",
                type(exc).__name__,
                exc,
                FALLBACK_SECONDS,
            )


def _redact(url: str) -> str:
    """The storage URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"
