"""The rate limiter itself (api.abuse.ratelimit, api.abuse.config's limit spellings), in-process: the spelling
of a limit, the GCRA arithmetic, all-or-nothing checks, and the memory store's bound. The gateway's use of it,
over real sockets and processes, is tested in test_ratelimit_gateway.py and test_ratelimit_shared.py."""

from __future__ import annotations

import gc
import ipaddress
import tracemalloc

import pytest

from api.abuse.config import AbuseConfigError, LimitSpec, RateLimitSettings, load_abuse_settings, parse_limit
from api.abuse.ratelimit import Check, MemoryStore, RateLimited, RateLimiter, Refusal, rate_of
from api.gateway.ratelimits import address_key

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_a_limit_is_spelt_count_per_period_with_an_optional_burst() -> None:
    assert parse_limit("x", "600/minute burst 120") == LimitSpec("x", 600, "minute", 120)
    assert parse_limit("x", "20/hour") == LimitSpec("x", 20, "hour", 20)
    assert parse_limit("x", " 5 / Second ") == LimitSpec("x", 5, "second", 5)
    assert parse_limit("x", "off") is None


@pytest.mark.parametrize(
    "spec", ["600", "600/minutes", "ten/minute", "0/minute", "5/minute burst 0", "5/minute burst", "-1/day", ""]
)
def test_a_misspelt_limit_stops_start_up_naming_its_knob(spec: str) -> None:
    with pytest.raises(AbuseConfigError, match=r"abuse\.rate_limits\.billing_per_ip"):
        load_abuse_settings({"rate_limits": {"billing_per_ip": spec}}, {})
    if spec:  # an empty variable counts as unset
        with pytest.raises(AbuseConfigError, match=r"abuse\.rate_limits\.billing_per_ip"):
            load_abuse_settings(None, {"TOLLGATE_ABUSE_RATE_LIMITS_BILLING_PER_IP": spec})


def test_storage_must_be_memory_or_redis() -> None:
    with pytest.raises(AbuseConfigError, match=r"abuse\.rate_limits\.storage"):
        load_abuse_settings({"rate_limits": {"storage": "postgres://x"}}, {})
    settings = load_abuse_settings(None, {"TOLLGATE_ABUSE_RATE_LIMITS_STORAGE": "redis://127.0.0.1:6379/0"})
    assert settings.rate_limits.storage == "redis://127.0.0.1:6379/0"


def test_every_default_limit_is_on() -> None:
    limits = RateLimitSettings().limits()
    assert set(limits) == {
        "tool_calls_per_ip",
        "tool_calls_per_user",
        "tool_calls_per_api_key",
        "tool_calls_per_anonymous",
        "billing_per_ip",
        "billing_per_user",
        "topups_per_ip",
        "topups_per_user",
        "webhooks_per_ip",
        "sessions_per_ip",
        "mcp_messages_per_ip",
    }


class ManualClock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


async def test_gcra_lets_the_burst_through_then_the_sustained_rate() -> None:
    clock = ManualClock()
    store = MemoryStore(1000, clock)
    rate = rate_of(LimitSpec("x", 60, "minute", 5))
    admitted = [(await store.step("k", rate, 1)).allowed for _ in range(8)]
    assert admitted == [True] * 5 + [False] * 3
    refused = await store.step("k", rate, 1)
    assert refused.retry_after_ms == 1000  # one unit per second
    clock.ms += 1000
    assert (await store.step("k", rate, 1)).allowed
    assert not (await store.step("k", rate, 1)).allowed


async def test_a_request_refused_by_one_limit_spends_none_of_the_others() -> None:
    limiter = RateLimiter(RateLimitSettings(billing_per_ip="60/hour burst 8", billing_per_user="60/hour burst 5"))
    first = [await limiter.hit([Check("billing_per_ip", "ip"), Check("billing_per_user", "a")]) for _ in range(7)]
    second = [await limiter.hit([Check("billing_per_ip", "ip"), Check("billing_per_user", "b")]) for _ in range(4)]
    assert [refusal is None for refusal in first] == [True] * 5 + [False] * 2
    assert {refusal.limit.name for refusal in first if refusal} == {"billing_per_user"}
    # The address had 8: user a spent 5 (its 2 refused requests were given back), user b gets the other 3.
    assert [refusal is None for refusal in second] == [True] * 3 + [False]
    assert second[-1] is not None and second[-1].limit.name == "billing_per_ip"


async def test_a_limit_that_is_off_is_not_checked_and_disabled_means_no_limit() -> None:
    off = RateLimiter(RateLimitSettings(webhooks_per_ip="off"))
    assert all([await off.hit([Check("webhooks_per_ip", "ip")]) is None for _ in range(1000)])
    disabled = RateLimiter(RateLimitSettings(webhooks_per_ip="1/day"), enabled=False)
    assert all([await disabled.hit([Check("webhooks_per_ip", "ip")]) is None for _ in range(10)])


def test_the_429_names_the_limit_and_waits_whole_seconds() -> None:
    limit = LimitSpec("topups_per_user", 10, "hour", 3)
    error = RateLimited(Refusal(limit, 1))
    assert error.status == 429 and error.code == "rate_limited"
    assert error.headers["Retry-After"] == "1"  # never 0: a client would retry at once
    assert error.extra == {"limit": "topups_per_user", "retry_after": 1}
    assert error.headers["RateLimit-Policy"] == '"topups_per_user";q=10;w=3600'
    assert RateLimited(Refusal(limit, 359_001)).headers["Retry-After"] == "360"
    assert "topups_per_user (10 per hour, 3 at once)" in error.message


async def test_the_memory_store_forgets_keys_once_their_bucket_has_refilled() -> None:
    clock = ManualClock()
    store = MemoryStore(10_000, clock)
    rate = rate_of(LimitSpec("x", 60, "minute", 10))
    for number in range(500):
        await store.step(f"idle-{number}", rate, 1)
    assert len(store) == 500
    clock.ms += 60_000  # every bucket has refilled: nothing is worth keeping
    for _ in range(300):
        await store.step("active", rate, 1)
        clock.ms += 1000
    assert len(store) <= 2


async def test_the_memory_store_stays_bounded_under_a_flood_of_distinct_keys() -> None:
    store = MemoryStore(1000)
    rate = rate_of(LimitSpec("x", 1, "day", 1))  # nothing refills during the test: every key stays live
    gc.collect()
    tracemalloc.start()
    try:
        for number in range(50_000):
            await store.step(f"tool_calls_per_ip:10.{number >> 16}.{(number >> 8) & 255}.{number & 255}", rate, 1)
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(store) == 1000
    assert store.evicted == 49_000
    assert current < 1_000_000, f"{current} bytes held for 1000 keys"


def test_ipv6_clients_are_keyed_by_their_64_block() -> None:
    one = address_key(ipaddress.ip_address("2001:db8:1:2:aaaa::1"))
    other = address_key(ipaddress.ip_address("2001:db8:1:2:ffff:ffff:ffff:ffff"))
    assert one == other == "2001:db8:1:2::/64"
    assert address_key(ipaddress.ip_address("2001:db8:1:3::1")) != one
    assert address_key(ipaddress.ip_address("203.0.113.7")) == "203.0.113.7"
