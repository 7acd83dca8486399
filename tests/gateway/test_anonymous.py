"""The anonymous policy end to end: a real gateway, the official MCP client, real sockets.

* A caller without credentials is refused a priced tool by default, gracefully (an MCP ``isError`` result)
  with how to sign in here; over plain HTTP a 401 with ``WWW-Authenticate`` and the same advice.
* A tool set free is served and counted in the daily aggregate (one row per day x tool x client address),
  never tracked call by call; one set ``free:N/day`` serves N calls a day per address, then refuses with the
  limit and when it renews (HTTP: 429 + Retry-After).
* The attack of issue 14 repeated: 2,000 anonymous calls of a priced tool write nothing; of a free tool, one
  aggregate row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import psycopg
import pytest
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from psycopg.rows import dict_row

from api.gateway.http.envelope import error_response
from api.gateway.metering import CallRefused, sign_in_advice
from api.jsonio import loads
from api.ledger import sync as ledger
from api.ledger.errors import AnonymousDenied, AnonymousQuotaExceeded
from tests.gateway.server import start_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

TRANSPORTS = ("sse", "mcp")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def anonymous_session(
    base_url: str, transport: str, headers: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    if transport == "sse":
        async with (
            sse_client(f"{base_url}/sse", headers=headers) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session
    else:
        async with (
            httpx2.AsyncClient(headers=headers or {}, timeout=60) as http,
            streamable_http_client(f"{base_url}/mcp", http_client=http) as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            yield session


def text_of(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


def usage(gdb: psycopg.Connection[Any], tool: str) -> list[dict[str, Any]]:
    with gdb.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM billing.anonymous_usage WHERE tool_name = %s ORDER BY client_network", (tool,)
        ).fetchall()


def tracked(gdb: psycopg.Connection[Any], tool: str) -> int:
    row = gdb.execute("SELECT count(*) FROM billing.cost_tracking WHERE tool_name = %s", (tool,)).fetchone()
    assert row is not None
    return int(row[0])


def set_anonymous(gdb: psycopg.Connection[Any], tool: str, base: str, anonymous: str | None) -> None:
    ledger.set_tool_pricing(gdb, tool, Decimal(base), anonymous=anonymous)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_priced_tool_refuses_anonymous_callers_with_how_to_sign_in(
    gateway: Any, gdb: psycopg.Connection[Any], transport: str
) -> None:
    before = tracked(gdb, "priced")
    async with anonymous_session(gateway.base_url, transport) as session:
        result = await session.call_tool("priced", {"text": "free lunch?"})
    assert result.is_error
    text = text_of(result)
    assert "Sign-in required: the tool priced is not served to anonymous callers." in text
    assert "X-API-Key: tg_" in text and "Authorization: Bearer <token>" in text
    assert (result.structured_content or {})["error"]["code"] == "anonymous_denied"
    assert tracked(gdb, "priced") == before
    assert usage(gdb, "priced") == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_free_tool_is_served_and_counted_not_tracked(
    gateway: Any, gdb: psycopg.Connection[Any], transport: str
) -> None:
    tool = "free"  # no price: free for anonymous callers by default
    before = sum(row["calls"] for row in usage(gdb, tool))
    async with anonymous_session(gateway.base_url, transport) as session:
        results = [await session.call_tool(tool, {}) for _ in range(3)]
    assert [text_of(r) for r in results] == ["free"] * 3
    billing = (results[0].meta or {})["tollgate/billing"]
    assert (billing["status"], billing["price_usd"]) == ("not_charged", None)
    rows = usage(gdb, tool)
    assert [(str(r["client_network"]), r["failures"]) for r in rows] == [("127.0.0.1", 0)]
    assert rows[0]["calls"] == before + 3
    assert tracked(gdb, tool) == 0


async def test_a_failed_anonymous_call_is_marked_on_the_aggregate(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    set_anonymous(gdb, "broken", "0.02", "free")
    async with anonymous_session(gateway.base_url, "mcp") as session:
        result = await session.call_tool("broken", {})
    assert result.is_error and "always fails" in text_of(result)
    assert [(r["calls"], r["failures"]) for r in usage(gdb, "broken")] == [(1, 1)]
    assert tracked(gdb, "broken") == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_daily_quota_serves_n_calls_then_says_when_it_renews(
    gateway: Any, gdb: psycopg.Connection[Any], transport: str
) -> None:
    tool = "micro" if transport == "sse" else "finder"
    set_anonymous(gdb, tool, "0.01", "free:3/day")
    arguments: dict[str, Any] = {} if tool == "micro" else {"query": "q"}
    async with anonymous_session(gateway.base_url, transport) as session:
        results = [await session.call_tool(tool, arguments) for _ in range(5)]
    refused = [r for r in results if (r.structured_content or {}).get("error", {}).get("code")]
    quota = [r for r in refused if r.structured_content["error"]["code"] == "anonymous_quota_exceeded"]
    assert len(quota) == 2 and results[3] is quota[0]
    error = quota[0].structured_content["error"]
    assert error["daily_calls"] == 3
    renews = dt.datetime.fromisoformat(error["resets_at"])
    assert dt.timedelta(0) < renews - dt.datetime.now(dt.UTC) <= dt.timedelta(days=1)
    assert "3 free calls a day" in text_of(quota[0]) and "X-API-Key" in text_of(quota[0])
    assert [r["calls"] for r in usage(gdb, tool)] == [3]


async def test_an_api_key_caller_is_still_tracked_per_call_whatever_the_anonymous_policy(
    gateway: Any, gdb: psycopg.Connection[Any]
) -> None:
    from api.gateway import apikeys

    key = apikeys.generate_key()
    ledger.create_api_key(gdb, "anon-policy-key", apikeys.hash_key(key), apikeys.key_prefix(key))
    before = tracked(gdb, "priced")
    async with anonymous_session(gateway.base_url, "mcp", {"X-API-Key": key}) as session:
        result = await session.call_tool("priced", {"text": "known client"})
    assert not result.is_error, text_of(result)
    assert tracked(gdb, "priced") == before + 1


def test_anonymous_http_tool_calls_answer_401_with_how_to_sign_in(gateway: Any) -> None:
    with gateway.client() as client:
        reply = client.post("/api/tools/free", json={})
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    message = loads(reply.content)["error"]["message"]
    assert "X-API-Key: tg_" in message and "Authorization: Bearer <token>" in message


def test_the_refusals_over_http_are_401_with_a_challenge_and_429_with_retry_after() -> None:
    denied = CallRefused(
        AnonymousDenied(
            "Sign-in required: the tool t is not served to anonymous callers.",
            {"tool_name": "t"},
            "Call it with credentials: an API key or a user's token (JWT).",
        ),
        sign_in_advice("https://example.com/keys"),
    )
    answer = error_response(denied)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="tollgate"'
    error = loads(bytes(answer.body))["error"]
    assert error["code"] == "anonymous_denied"
    assert error["message"].endswith("Get credentials at https://example.com/keys")
    renews = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    quota = CallRefused(AnonymousQuotaExceeded("Anonymous quota reached", {"resets_at": renews.isoformat()}))
    answer = error_response(quota)
    assert answer.status_code == 429
    assert 7100 <= int(answer.headers["retry-after"]) <= 7201


async def test_the_quota_counts_the_address_behind_a_trusted_proxy(
    gateway_db: str, gdb: psycopg.Connection[Any], tmp_path: Path
) -> None:
    set_anonymous(gdb, "slow", "0.01", "free:1/day")
    forwarded = {"X-Forwarded-For": "198.51.100.9"}
    trusting = start_gateway(gateway_db, tmp_path / "trusting", TOLLGATE_ABUSE_TRUSTED_PROXIES="127.0.0.1")
    try:
        async with anonymous_session(trusting.base_url, "mcp", forwarded) as session:
            assert not (await session.call_tool("slow", {"seconds": 0})).is_error
            assert (await session.call_tool("slow", {"seconds": 0})).is_error  # this address's call of the day
        async with anonymous_session(trusting.base_url, "mcp", {"X-Forwarded-For": "198.51.100.10"}) as session:
            assert not (await session.call_tool("slow", {"seconds": 0})).is_error
    finally:
        trusting.stop()
    assert [str(r["client_network"]) for r in usage(gdb, "slow")] == ["198.51.100.9", "198.51.100.10"]


async def test_without_trusted_proxies_a_forwarded_address_is_ignored(
    gateway: Any, gdb: psycopg.Connection[Any]
) -> None:
    set_anonymous(gdb, "metered", "0", "free:1/day")
    async with anonymous_session(gateway.base_url, "mcp", {"X-Forwarded-For": "198.51.100.11"}) as session:
        assert not (await session.call_tool("metered", {"tokens": 1})).is_error
    async with anonymous_session(gateway.base_url, "mcp", {"X-Forwarded-For": "198.51.100.12"}) as session:
        refused = await session.call_tool("metered", {"tokens": 1})  # the same peer: its call of the day is used
    assert [(str(r["client_network"]), r["calls"]) for r in usage(gdb, "metered")] == [("127.0.0.1", 1)], refused
    assert (refused.structured_content or {})["error"]["code"] == "anonymous_quota_exceeded"


async def _flood(base_url: str, tool: str, arguments: dict[str, Any], calls: int) -> list[types.CallToolResult]:
    results: list[types.CallToolResult] = []
    async with anonymous_session(base_url, "mcp") as session:

        async def call() -> None:
            results.append(await session.call_tool(tool, arguments))

        for _ in range(calls // 50):
            async with anyio.create_task_group() as tasks:
                for _ in range(50):
                    tasks.start_soon(call)
    return results


async def test_two_thousand_anonymous_calls_of_a_priced_tool_write_nothing(
    gateway: Any, gdb: psycopg.Connection[Any]
) -> None:
    """Issue 14's attack: 2,000 anonymous calls of a 0.02 USD tool were served free, ~535 bytes tracked each."""
    before = tracked(gdb, "priced")
    results = await _flood(gateway.base_url, "priced", {"text": "flood"}, 2000)
    assert len(results) == 2000
    assert all(r.is_error and r.structured_content["error"]["code"] == "anonymous_denied" for r in results)
    assert tracked(gdb, "priced") == before
    assert usage(gdb, "priced") == []


async def test_two_thousand_anonymous_calls_of_a_free_tool_are_one_aggregate_row(
    gateway: Any, gdb: psycopg.Connection[Any]
) -> None:
    set_anonymous(gdb, "by_chars", "0.001", "free")
    results = await _flood(gateway.base_url, "by_chars", {"text": "x"}, 2000)
    assert sum(not r.is_error for r in results) == 2000
    rows = usage(gdb, "by_chars")
    assert [(str(r["client_network"]), r["calls"]) for r in rows] == [("127.0.0.1", 2000)]
    assert tracked(gdb, "by_chars") == 0


def test_the_file_fills_in_an_unset_anonymous_policy_and_never_overrides_an_operator(
    gateway_db: str, gdb: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A ledger priced before the anonymous policy existed takes the file's; an operator's choice stands."""
    ledger.set_tool_pricing(gdb, "priced_before", Decimal("0.03"), description="the operator's price")
    ledger.set_tool_pricing(gdb, "operator_chose", Decimal("0.03"), anonymous="deny")
    config = tmp_path / "tools.toml"
    config.write_text(
        'python_modules = ["tests.gateway.tools"]\n'
        '[pricing.priced_before]\nbase_price_usd = "0.5"\nanonymous = "free:7/day"\n'
        '[pricing.operator_chose]\nbase_price_usd = "0.5"\nanonymous = "free"\n'
        '[pricing.new_tool]\nbase_price_usd = "0.5"\nanonymous = "free:2/day"\n'
    )
    started = start_gateway(gateway_db, tmp_path / "data", TOLLGATE_TOOLS_CONFIG=str(config))
    started.stop()
    rows = {row.tool_name: row for row in ledger.list_tool_pricing(gdb)}
    before = rows["priced_before"]
    assert (before.anonymous_access, before.base_price_usd, before.description) == (
        "free:7/day",
        Decimal("0.03"),
        "the operator's price",
    )
    assert rows["operator_chose"].anonymous_access == "deny"
    assert (rows["new_tool"].anonymous_access, rows["new_tool"].base_price_usd) == ("free:2/day", Decimal("0.5"))
