"""Rate limits shared by several gateway processes through Redis (abuse.rate_limits.storage = redis://): two
real `tollgate run` processes on one ledger and one redis-server started by the test, a limit that holds
across both, and what happens when Redis is not there at start-up or goes away while serving."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.abuse.redis_server import RedisServer, redis_server_binary, start_redis
from tests.gateway.server import Gateway, free_port, start_gateway

pytestmark = pytest.mark.timeout(180)

ENV = "TOLLGATE_ABUSE_RATE_LIMITS_"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


def metric(gateway: Gateway, name: str) -> float:
    admin = gateway.token(admin=True)
    text = httpx.get(f"{gateway.base_url}/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found[1])


def test_a_limit_of_n_per_minute_holds_across_two_gateway_processes(
    gateway_db: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    limit = 12  # per minute, all at once: one more every 5 s
    env = {f"{ENV}STORAGE": redis_server.url, f"{ENV}TOOL_CALLS_PER_USER": f"{limit}/minute"}
    first = start_gateway(gateway_db, tmp_path / "first", **env)
    second = start_gateway(gateway_db, tmp_path / "second", **env)
    try:
        token = first.token()
        clients = [
            httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            for gateway in (first, second)
        ]
        started = time.monotonic()
        answers = [clients[number % 2].post("/api/tools/free", json={}) for number in range(limit + 8)]
        elapsed = time.monotonic() - started
        for http in clients:
            http.close()
        served = [answer for answer in answers if answer.status_code == 200]
        refused = [answer for answer in answers if answer.status_code == 429]
        assert len(served) + len(refused) == len(answers), [answer.text for answer in answers]
        # Exactly the limit, unless the calls took long enough for the bucket to refill by one or more.
        refilled = int(elapsed * limit / 60)
        assert limit <= len(served) <= limit + refilled
        if refilled == 0:
            assert len(served) == limit
        assert {answer.json()["error"]["limit"] for answer in refused} == {"tool_calls_per_user"}
        # Both gateways refused: neither let through a budget of its own.
        assert {answer.url.port for answer in refused} == {
            httpx.URL(first.base_url).port,
            httpx.URL(second.base_url).port,
        }
        keys = redis.Redis(port=redis_server.port).keys("tollgate:tool_calls_per_user:*")
        assert len(keys) == 1
        assert redis.Redis(port=redis_server.port).pttl(keys[0]) > 0  # a key expires once its bucket refills
        assert "rate limits shared in Redis" in first.logs()
    finally:
        first.stop()
        second.stop()


def test_a_gateway_whose_redis_cannot_be_reached_does_not_start(gateway_db: str, tmp_path: Path) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RuntimeError, match="exited") as failed:
        start_gateway(gateway_db, tmp_path, **{f"{ENV}STORAGE": nowhere})
    assert f"abuse.rate_limits.storage: cannot reach Redis at {nowhere}" in str(failed.value)


def test_when_redis_goes_away_the_gateway_serves_on_with_its_own_counters_then_returns_to_redis(
    gateway_db: str, tmp_path: Path
) -> None:
    redis_server_binary()
    server = start_redis(tmp_path / "redis")
    port = server.port
    gateway = start_gateway(
        gateway_db, tmp_path / "gateway", **{f"{ENV}STORAGE": server.url, f"{ENV}WEBHOOKS_PER_IP": "60/hour burst 3"}
    )
    try:
        server.stop()
        with httpx.Client(base_url=gateway.base_url, timeout=30) as http:
            started = time.monotonic()
            statuses = [http.post("/api/payments/stripe/webhook", content=b"{}").status_code for _ in range(4)]
            elapsed = time.monotonic() - started
        # Served without Redis (fail-soft), and still limited, by this process alone.
        assert [status == 429 for status in statuses] == [False, False, False, True]
        assert elapsed < 5
        assert metric(gateway, "tollgate_rate_limit_store_errors_total") >= 1
        assert "rate-limit store unreachable" in gateway.logs()

        # Redis back on the same port: within a few seconds the checks go to it again.
        server = start_redis(tmp_path / "redis-again", port=port)
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=gateway.base_url, timeout=30) as http:
            while time.monotonic() < deadline:
                http.get("/api/billing/balance")  # any limited route (anonymous: 401, after the address's check)
                if redis.Redis(port=port).keys("tollgate:billing_per_ip:*"):
                    break
                time.sleep(0.5)
            else:
                pytest.fail("the gateway did not return to Redis within 30 s")
    finally:
        gateway.stop()
        server.stop()

