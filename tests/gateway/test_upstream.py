"""Upstream MCP servers through api.tools.upstream: the real example server over stdio and streamable HTTP.

No database. The stdio server is a child of this process (found through /proc to kill it); the
HTTP server is a subprocess on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
import pytest

from api.tools.registry import InvalidArguments, ToolContext, ToolError
from api.tools.upstream import (
    UpstreamConfig,
    UpstreamServer,
    UpstreamTool,
    close_upstreams,
    running_upstreams,
    start_upstreams,
)
from api.tools.upstream import UpstreamError as UpstreamStartError

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "examples" / "upstream_server.py"
TOKEN = "upstream-test-token"
CONTRACT = (
    "Civil Code of Ukraine, Article 626: a contract is an agreement of two or more parties to "
    "establish, change or terminate civil rights and obligations."
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the gateway runs on asyncio (uvicorn); upstream connections use asyncio tasks


def stdio_config(**overrides: Any) -> UpstreamConfig:
    config = UpstreamConfig(name="legal", command=(sys.executable, str(SERVER)), cwd=ROOT, timeout_seconds=10)
    return replace(config, **overrides)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HttpServer:
    """The example server with ``--http PORT --token TOKEN``, restartable on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER), "--http", str(self.port), "--token", TOKEN],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the example server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the example server did not listen within 15 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def config(self, **overrides: Any) -> UpstreamConfig:
        config = UpstreamConfig(
            name="legal-http", url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout_seconds=10
        )
        return replace(config, **overrides)


@pytest.fixture(scope="module")
def http_server() -> Iterator[HttpServer]:
    server = HttpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_http_server() -> Iterator[HttpServer]:
    """A server of this test only (it gets killed)."""
    server = HttpServer()
    server.start()
    yield server
    server.stop()


def stdio_children(script: str) -> list[int]:
    """Pids of this process's live stdio children whose command line mentions ``script`` (Linux /proc)."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        alive = stat.rsplit(")", 1)[1].split()[0] != "Z"
        if parent == os.getpid() and script in cmdline and "--http" not in cmdline and alive:
            pids.append(int(entry.name))
    return pids


async def wait_until(condition: Any, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


def tool(upstream: UpstreamServer, name: str) -> UpstreamTool:
    return next(t for t in upstream.tools() if t.name == name)


async def call(upstream: UpstreamServer, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    return await tool(upstream, name).call(arguments, ToolContext(request_id="req", tool_name=name))


async def test_stdio_lists_every_page_and_calls() -> None:
    async with UpstreamServer(stdio_config()) as upstream:
        # The example server lists two tools a page: all four means the pages were followed.
        assert [t.name for t in upstream.tools()] == ["lookup_law", "count_words", "fail", "slow"]
        definition = tool(upstream, "lookup_law").definition
        assert definition.input_schema["required"] == ["query"]
        assert definition.description

        result = await call(upstream, "lookup_law", {"query": "What is a contract?"})
        assert result.is_error is False
        assert text_of(result) == CONTRACT

        counted = await call(upstream, "count_words", {"text": "закон про захист прав"})
        assert counted.structured_content == {"words": 4}
        assert text_of(counted) == "4 words"
    assert not upstream.connected


async def test_prefix_renames_and_tools_filter() -> None:
    async with UpstreamServer(stdio_config(prefix="legal.", tools=("lookup_law", "fail"))) as upstream:
        assert [t.name for t in upstream.tools()] == ["legal.lookup_law", "legal.fail"]
        lookup = tool(upstream, "legal.lookup_law")
        assert lookup.definition.name == "legal.lookup_law"
        assert lookup.upstream_tool_name == "lookup_law"
        assert text_of(await call(upstream, "legal.lookup_law", {"query": "contract"})) == CONTRACT


async def test_a_filtered_tool_the_upstream_lacks_fails_the_start() -> None:
    upstream = UpstreamServer(stdio_config(tools=("lookup_law", "nope")))
    with pytest.raises(UpstreamStartError, match=r"upstream 'legal' .* has no tool 'nope'"):
        await upstream.start()
    await upstream.close()
    assert not upstream.connected


async def test_arguments_are_validated_against_the_upstream_schema() -> None:
    async with UpstreamServer(stdio_config()) as upstream:
        with pytest.raises(InvalidArguments, match="'query' is a required property"):
            await call(upstream, "lookup_law", {})
        with pytest.raises(InvalidArguments, match="query"):
            await call(upstream, "lookup_law", {"query": 42})
        with pytest.raises(InvalidArguments, match="Additional properties"):
            await call(upstream, "lookup_law", {"query": "x", "extra": 1})
        with pytest.raises(InvalidArguments, match="seconds"):
            await call(upstream, "slow", {"seconds": 10})


async def test_an_upstream_error_result_passes_through() -> None:
    async with UpstreamServer(stdio_config()) as upstream:
        result = await call(upstream, "fail", {"reason": "testing"})
        assert result.is_error is True
        assert text_of(result) == "failed on purpose: testing"


async def test_a_slow_upstream_times_out_and_the_session_survives() -> None:
    async with UpstreamServer(stdio_config(timeout_seconds=0.3)) as upstream:
        started = time.monotonic()
        with pytest.raises(ToolError, match=r"upstream 'legal': slow did not answer within 0.3 s"):
            await call(upstream, "slow", {"seconds": 3})
        assert time.monotonic() - started < 2
        assert text_of(await call(upstream, "lookup_law", {"query": "contract"})) == CONTRACT


async def test_concurrent_calls_share_one_session() -> None:
    async with UpstreamServer(stdio_config()) as upstream:
        results: dict[int, str] = {}

        async def one(index: int) -> None:
            if index % 2:
                results[index] = text_of(await call(upstream, "slow", {"seconds": 0.5}))
            else:
                results[index] = text_of(await call(upstream, "count_words", {"text": "word " * index}))

        started = time.monotonic()
        async with anyio.create_task_group() as tasks:
            for index in range(20):
                tasks.start_soon(one, index)
        # Ten 0.5 s calls one after another would take 5 s.
        assert time.monotonic() - started < 3
        assert len(stdio_children(SERVER.name)) == 1
        assert results == {i: ("slept 0.5 s" if i % 2 else f"{i} words") for i in range(20)}


async def test_a_dead_stdio_server_is_restarted_by_the_next_call() -> None:
    async with UpstreamServer(stdio_config()) as upstream:
        [pid] = stdio_children(SERVER.name)
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: not upstream.connected)
        assert text_of(await call(upstream, "lookup_law", {"query": "contract"})) == CONTRACT
        assert upstream.connected
        [new_pid] = stdio_children(SERVER.name)
        assert new_pid != pid
    await wait_until(lambda: not stdio_children(SERVER.name))


async def test_a_call_in_flight_when_the_server_dies_fails_and_is_not_repeated() -> None:
    async with UpstreamServer(stdio_config()) as upstream:
        [pid] = stdio_children(SERVER.name)
        failure: list[BaseException] = []

        async def slow_call() -> None:
            try:
                await call(upstream, "slow", {"seconds": 3})
            except ToolError as exc:
                failure.append(exc)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(slow_call)
            await anyio.sleep(0.3)
            os.kill(pid, signal.SIGKILL)
        assert len(failure) == 1
        assert "upstream 'legal': the connection closed during the call to slow" in str(failure[0])
        assert text_of(await call(upstream, "lookup_law", {"query": "contract"})) == CONTRACT


async def test_a_failed_reconnect_fails_the_call_then_fails_fast(tmp_path: Path) -> None:
    script = tmp_path / "upstream_copy.py"
    shutil.copy(SERVER, script)
    async with UpstreamServer(stdio_config(command=(sys.executable, str(script)))) as upstream:
        [pid] = stdio_children(script.name)
        script.unlink()
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: not upstream.connected)
        with pytest.raises(ToolError, match=r"upstream 'legal' is unavailable \(reconnecting failed\)"):
            await call(upstream, "lookup_law", {"query": "contract"})
        started = time.monotonic()
        with pytest.raises(ToolError, match="reconnecting failed"):
            await call(upstream, "lookup_law", {"query": "contract"})
        assert time.monotonic() - started < 0.5  # no second attempt within the back-off


async def test_start_fails_clearly_for_a_missing_command() -> None:
    upstream = UpstreamServer(stdio_config(command=("/nonexistent/tollgate-upstream",)))
    with pytest.raises(UpstreamStartError, match=r"upstream 'legal' \(stdio: /nonexistent/tollgate-upstream\)"):
        await upstream.start()
    with pytest.raises(ToolError, match="upstream 'legal' is not running"):
        await upstream.call_tool("lookup_law", {"query": "x"})


async def test_http_lists_and_calls_with_headers(http_server: HttpServer) -> None:
    async with UpstreamServer(http_server.config(prefix="web_")) as upstream:
        assert [t.name for t in upstream.tools()] == ["web_lookup_law", "web_count_words", "web_fail", "web_slow"]
        assert text_of(await call(upstream, "web_lookup_law", {"query": "contract"})) == CONTRACT
        failed = await call(upstream, "web_fail", {})
        assert failed.is_error is True
        with pytest.raises(InvalidArguments):
            await call(upstream, "web_count_words", {"text": None})

        started = time.monotonic()
        async with anyio.create_task_group() as tasks:
            for _ in range(20):
                tasks.start_soon(call, upstream, "web_slow", {"seconds": 0.5})
        assert time.monotonic() - started < 3


async def test_http_timeout(http_server: HttpServer) -> None:
    async with UpstreamServer(http_server.config(timeout_seconds=0.3)) as upstream:
        with pytest.raises(ToolError, match=r"upstream 'legal-http': slow did not answer within 0.3 s"):
            await call(upstream, "slow", {"seconds": 3})
        assert text_of(await call(upstream, "lookup_law", {"query": "contract"})) == CONTRACT


async def test_http_without_the_token_fails_the_start(http_server: HttpServer) -> None:
    upstream = UpstreamServer(http_server.config(headers={}))
    with pytest.raises(UpstreamStartError, match=r"upstream 'legal-http' \(http://127\.0\.0\.1:\d+/mcp\)"):
        await upstream.start()


async def test_http_start_fails_for_a_closed_port() -> None:
    upstream = UpstreamServer(UpstreamConfig(name="nowhere", url=f"http://127.0.0.1:{free_port()}/mcp"))
    with pytest.raises(UpstreamStartError, match=r"upstream 'nowhere'.*could not connect"):
        await upstream.start()


async def test_http_server_down_then_back(own_http_server: HttpServer) -> None:
    async with UpstreamServer(own_http_server.config()) as upstream:
        assert text_of(await call(upstream, "lookup_law", {"query": "contract"})) == CONTRACT
        own_http_server.stop()
        with pytest.raises(ToolError, match=r"upstream 'legal-http' is unavailable \(reconnecting failed\)"):
            await call(upstream, "lookup_law", {"query": "contract"})
        await anyio.to_thread.run_sync(own_http_server.start)
        await anyio.sleep(1.1)  # past the reconnect back-off
        assert text_of(await call(upstream, "lookup_law", {"query": "contract"})) == CONTRACT
        assert upstream.connected


async def test_http_server_restarted_between_calls(own_http_server: HttpServer) -> None:
    async with UpstreamServer(own_http_server.config()) as upstream:
        assert text_of(await call(upstream, "lookup_law", {"query": "contract"})) == CONTRACT
        own_http_server.stop()
        await anyio.to_thread.run_sync(own_http_server.start)
        assert text_of(await call(upstream, "lookup_law", {"query": "contract"})) == CONTRACT


async def test_start_several_concurrently_and_close_them(http_server: HttpServer) -> None:
    async with running_upstreams([stdio_config(), http_server.config()]) as servers:
        assert [s.name for s in servers] == ["legal", "legal-http"]
        assert all(s.connected for s in servers)
        assert len(stdio_children(SERVER.name)) == 1
    assert not any(s.connected for s in servers)
    await wait_until(lambda: not stdio_children(SERVER.name))


async def test_one_failed_start_closes_the_others() -> None:
    configs = [stdio_config(), stdio_config(name="broken", command=("/nonexistent/tollgate-upstream",))]
    with pytest.raises(UpstreamStartError, match="upstream 'broken'"):
        await start_upstreams(configs)
    await wait_until(lambda: not stdio_children(SERVER.name))


async def test_close_is_idempotent_and_may_run_in_another_task() -> None:
    upstream = UpstreamServer(stdio_config())
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(upstream.start)
    assert upstream.connected
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(upstream.close)
    await upstream.close()
    await close_upstreams([upstream])
    assert not upstream.connected
    with pytest.raises(ToolError, match="not running"):
        await upstream.call_tool("lookup_law", {"query": "contract"})


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="exactly one of command"):
        UpstreamConfig(name="x")
    with pytest.raises(ValueError, match="exactly one of command"):
        UpstreamConfig(name="x", command=("a",), url="http://h/mcp")
    with pytest.raises(ValueError, match="upstream name"):
        UpstreamConfig(name="a b", command=("a",))
    with pytest.raises(ValueError, match="url must be"):
        UpstreamConfig(name="x", url="ftp://h/mcp")
    with pytest.raises(ValueError, match="headers apply to a url"):
        UpstreamConfig(name="x", command=("a",), headers={"A": "b"})
    with pytest.raises(ValueError, match="timeout_seconds must be a positive"):
        UpstreamConfig(name="x", command=("a",), timeout_seconds=0)
