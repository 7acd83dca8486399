"""MCP end to end: the official SDK's client against a real gateway, over /sse and over /mcp."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import anyio
import httpx2
import mcp_types as types
import psycopg
import pytest
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from api.gateway import apikeys
from api.ledger import sync as ledger
from tests.helpers import ledger_rows, tracking_row

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

TRANSPORTS = ("sse", "mcp")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def mcp_session(
    gateway: Any, transport: str, headers: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    if transport == "sse":
        async with (
            sse_client(f"{gateway.base_url}/sse", headers=headers) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session
    else:
        async with (
            httpx2.AsyncClient(headers=headers or {}, timeout=30) as http,
            streamable_http_client(f"{gateway.base_url}/mcp", http_client=http) as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            yield session


def funded(gateway: Any, gdb: psycopg.Connection[Any], amount: str) -> tuple[dict[str, str], uuid.UUID]:
    subject = f"mcp-{uuid.uuid4().hex[:10]}"
    user_id = ledger.ensure_account(gdb, subject)
    if Decimal(amount) > 0:
        ledger.top_up(gdb, user_id, Decimal(amount), "test", uuid.uuid4().hex)
    return {"Authorization": f"Bearer {gateway.token(subject)}"}, user_id


def text_of(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_list_tools(gateway: Any, transport: str) -> None:
    async with mcp_session(gateway, transport) as session:
        listed = await session.list_tools()
    names = {tool.name for tool in listed.tools}
    assert {"priced", "micro", "metered", "broken", "slow", "free"} <= names
    priced = next(tool for tool in listed.tools if tool.name == "priced")
    assert priced.input_schema["required"] == ["text"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_jwt_user_is_charged_exactly_the_price(
    gateway: Any, gdb: psycopg.Connection[Any], transport: str
) -> None:
    headers, user_id = funded(gateway, gdb, "1")
    async with mcp_session(gateway, transport, headers) as session:
        result = await session.call_tool("priced", {"text": "право"})
    assert not result.is_error, text_of(result)
    assert text_of(result) == "echo: право"
    billing = (result.meta or {})["tollgate/billing"]
    assert billing["status"] == "charged"
    assert Decimal(billing["price_usd"]) == Decimal("0.02")
    charges = [row for row in ledger_rows(gdb, user_id) if row["type"] == "charge"]
    assert [row["amount_usd"] for row in charges] == [Decimal("-0.02")]
    assert charges[0]["request_id"] == billing["request_id"]
    assert charges[0]["description"] == "priced call"
    assert ledger.verify_ledger(gdb) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_write_off_is_reported_in_the_billing_meta(
    gateway: Any, gdb: psycopg.Connection[Any], transport: str
) -> None:
    # by_chars holds 0.001 + 0.000001 a character (0.002 here) and is priced 0.102 with 100000 extra characters
    headers, user_id = funded(gateway, gdb, "0.003")
    async with mcp_session(gateway, transport, headers) as session:
        result = await session.call_tool("by_chars", {"text": "z" * 1000, "extra": 100000})
    assert not result.is_error, text_of(result)
    billing = (result.meta or {})["tollgate/billing"]
    assert billing["status"] == "charged"
    assert (Decimal(billing["price_usd"]), Decimal(billing["written_off_usd"])) == (Decimal("0.102"), Decimal("0.099"))
    assert ledger.summary(gdb, user_id)["balance_usd"] == 0
    assert ledger.verify_ledger(gdb) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_api_key_is_tracked_not_charged(gateway: Any, gdb: psycopg.Connection[Any], transport: str) -> None:
    key = apikeys.generate_key()
    name = f"mcp-key-{uuid.uuid4().hex[:8]}"
    ledger.create_api_key(gdb, name, apikeys.hash_key(key), apikeys.key_prefix(key))
    async with mcp_session(gateway, transport, {"X-API-Key": key}) as session:
        result = await session.call_tool("priced", {"text": "k"})
    assert not result.is_error
    billing = (result.meta or {})["tollgate/billing"]
    assert billing["status"] == "not_charged"
    row = tracking_row(gdb, billing["request_id"])
    assert row["client_key"] == name
    assert row["user_id"] is None
    assert row["status"] == "completed"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_refusal_is_a_graceful_tool_error(gateway: Any, gdb: psycopg.Connection[Any], transport: str) -> None:
    headers, user_id = funded(gateway, gdb, "0.01")
    async with mcp_session(gateway, transport, headers) as session:
        result = await session.call_tool("priced", {"text": "x"})
        bad_arguments = await session.call_tool("priced", {"text": 1})
        unknown = await session.call_tool("nope", {})
    assert result.is_error
    assert "Insufficient funds" in text_of(result)
    assert "0.02" in text_of(result) and "0.01" in text_of(result)
    assert (result.structured_content or {})["error"]["code"] == "insufficient_funds"
    assert bad_arguments.is_error and "invalid arguments" in text_of(bad_arguments)
    assert unknown.is_error and "unknown tool" in text_of(unknown)
    assert ledger.summary(gdb, user_id)["balance_usd"] == Decimal("0.01")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ten_concurrent_calls_on_five_cents(gateway: Any, gdb: psycopg.Connection[Any], transport: str) -> None:
    headers, user_id = funded(gateway, gdb, "0.05")
    results: list[types.CallToolResult] = []
    async with mcp_session(gateway, transport, headers) as session:

        async def call() -> None:
            results.append(await session.call_tool("priced", {"text": "race"}))

        async with anyio.create_task_group() as tasks:
            for _ in range(10):
                tasks.start_soon(call)
    assert sum(not r.is_error for r in results) == 2
    assert all("Insufficient funds" in text_of(r) for r in results if r.is_error)
    assert ledger.summary(gdb, user_id)["balance_usd"] == Decimal("0.01")
    assert ledger.verify_ledger(gdb) == []


async def test_a_session_refuses_other_credentials_sse(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    """The SSE message endpoint answers 404 to a POST for a session opened by another principal."""
    owner, _ = funded(gateway, gdb, "1")
    intruder, _ = funded(gateway, gdb, "1")
    endpoint: list[str] = []
    async with sse_client(f"{gateway.base_url}/sse", headers=owner, on_session_created=endpoint.append) as (
        read,
        write,
    ), ClientSession(read, write) as session:
        await session.initialize()
        assert endpoint
        session_id = endpoint[0]
        message = {"jsonrpc": "2.0", "id": 99, "method": "tools/list"}
        async with httpx2.AsyncClient() as http:
            for headers in (intruder, {}):
                reply = await http.post(
                    f"{gateway.base_url}/messages/?session_id={session_id}", json=message, headers=headers
                )
                assert reply.status_code == 404


async def test_a_session_refuses_other_credentials_streamable(gateway: Any, gdb: psycopg.Connection[Any]) -> None:
    owner, _ = funded(gateway, gdb, "1")
    intruder, _ = funded(gateway, gdb, "1")
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx2.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        opened = await http.post("/mcp", json=init, headers={**owner, **accept})
        assert opened.status_code == 200, opened.text
        session_id = opened.headers["mcp-session-id"]
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        for headers in (intruder, {}):
            reply = await http.post(
                "/mcp",
                json=listing,
                headers={**headers, **accept, "mcp-session-id": session_id, "mcp-protocol-version": "2025-06-18"},
            )
            assert reply.status_code == 404


async def test_invalid_credentials_are_401_not_anonymous(gateway: Any) -> None:
    async with httpx2.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        for headers in ({"Authorization": "Bearer not-a-jwt"}, {"X-API-Key": "tg_unknown"}):
            reply = await http.get("/sse", headers=headers)
            assert reply.status_code == 401
            reply = await http.post("/mcp", json={}, headers=headers)
            assert reply.status_code == 401


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_disconnect_mid_call_is_charged_exactly_once(
    gateway: Any, gdb: psycopg.Connection[Any], transport: str
) -> None:
    headers, user_id = funded(gateway, gdb, "1")
    with anyio.move_on_after(0.4) as scope:
        async with mcp_session(gateway, transport, headers) as session:
            await session.call_tool("slow", {"seconds": 1.2})
    assert scope.cancelled_caught  # the client went away mid-call
    for _ in range(100):
        if ledger.summary(gdb, user_id)["balance_usd"] != Decimal("1"):
            break
        await anyio.sleep(0.1)
    await anyio.sleep(0.5)
    assert ledger.summary(gdb, user_id)["balance_usd"] == Decimal("0.99")
    assert len([row for row in ledger_rows(gdb, user_id) if row["type"] == "charge"]) == 1
    assert ledger.verify_ledger(gdb) == []


async def test_hostile_mcp_requests_are_4xx(gateway: Any) -> None:
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx2.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        for body in (b"{", b"[]", b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call"}', b"\xff\xfe", b"null"):
            reply = await http.post("/mcp", content=body, headers=accept)
            assert 400 <= reply.status_code < 500, (body, reply.status_code, reply.text)
        huge = await http.post("/mcp", content=b'{"x": "' + b"a" * 2_000_000 + b'"}', headers=accept)
        assert huge.status_code == 413
        for query in ("", "?session_id=nothex", f"?session_id={uuid.uuid4().hex}"):
            reply = await http.post(f"/messages/{query}", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert 400 <= reply.status_code < 500, (query, reply.status_code)
        assert (await http.delete("/mcp", headers=accept)).status_code < 500


@pytest.mark.parametrize("query", ["\\u0000", "x\\ud800"])
async def test_an_mcp_tool_error_echoing_nul_or_a_lone_surrogate_fails_the_call_cleanly(
    gateway: Any, gdb: psycopg.Connection[Any], query: str
) -> None:
    """Raw JSON-RPC (the SDK's client would not send a lone surrogate): the failed call is closed as
    failed, its hold released, and the client gets an isError result, not a broken session."""
    headers, user_id = funded(gateway, gdb, "1")
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **headers}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    async with httpx2.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        opened = await http.post("/mcp", json=init, headers=accept)
        session = {**accept, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        raw = '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "finder", "arguments": '
        raw += '{"query": "' + query + '"}}}'
        reply = await http.post("/mcp", content=raw.encode(), headers=session)
    rows = gdb.execute(
        "SELECT status, error FROM billing.cost_tracking WHERE user_id = %s AND tool_name = 'finder'", (user_id,)
    ).fetchall()
    if "ud800" in query:  # the SDK's JSON parser refuses a lone surrogate: a parse error, nothing run
        assert reply.status_code == 400 and "Parse error" in reply.text, reply.text
        assert rows == []
    else:  # before: a JSON-RPC error naming PostgreSQL's NUL refusal, and the call left pending, held
        assert reply.status_code == 200, reply.text
        assert '"isError":true' in reply.text.replace(" ", "")
        assert "nothing found for" in reply.text and "PostgreSQL" not in reply.text
        assert [status for status, _ in rows] == ["failed"]
    assert ledger.summary(gdb, user_id)["held_usd"] == 0
    assert ledger.summary(gdb, user_id)["balance_usd"] == Decimal("1")
