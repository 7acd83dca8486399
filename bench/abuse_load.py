"""Load for bench/abuse.py, run as its own process: an open-loop flood, or one paced paying client.

    python -m bench.abuse_load flood HOST PORT PATH SECONDS RATE CONNECTIONS SOURCE_ADDRESS BODY
    python -m bench.abuse_load mcp-flood HOST PORT TOOL SECONDS RATE CONNECTIONS SOURCE_ADDRESS ARGUMENTS_JSON
    python -m bench.abuse_load paced HOST PORT PATH SECONDS RATE TOKEN BODY

``flood`` sends RATE requests a second in all (no credentials: an anonymous client), spread over CONNECTIONS
keep-alive connections opened from SOURCE_ADDRESS (a loopback address such as 127.0.0.2, so that the flood
is a client of its own to the gateway's per-IP controls), each connection on its own schedule; a connection
whose answers come late falls behind rather than piling up (the achieved rate is reported). ``mcp-flood`` is
the same over MCP: each connection opens an anonymous streamable-HTTP session (POST /mcp initialize) and
sends ``tools/call`` of TOOL on it; a status counts as ``ok`` (served), ``tool_error`` (an isError result:
refused, e.g. by a rate limit) or the HTTP status. ``paced`` is one
keep-alive connection sending a billed call (Authorization: Bearer TOKEN) every 1/RATE seconds: a paying
user. Each prints one JSON line: requests, achieved rate, p50/p90/p99 latency in ms, status counts.
Raw asyncio streams, as bench/loadgen.py (no HTTP library: its CPU would be measured too).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from bench.loadgen import read_response

MCP_VERSION = "2025-11-25"


async def read_mcp_answer(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """One HTTP/1.1 response to an MCP POST: status, headers (lower-case names) and body, whether the body has a
    Content-Length or is chunked (an SSE answer to one request ends with the stream)."""
    status_line = await reader.readline()
    if not status_line:
        return "closed", {}, b""
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
        return status_line.split()[1].decode(), headers, body
    length = int(headers.get("content-length", "0"))
    return status_line.split()[1].decode(), headers, await reader.readexactly(length)


def mcp_post(host: str, body: dict[str, object], session: str | None) -> bytes:
    payload = json.dumps(body).encode()
    extra = f"Mcp-Session-Id: {session}\r\nMCP-Protocol-Version: {MCP_VERSION}\r\n" if session else ""
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\n{extra}Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def mcp_connection(
    host: str,
    port: int,
    tool: str,
    arguments: dict[str, object],
    interval: float,
    start: float,
    deadline: float,
    latencies: list[float],
    statuses: dict[str, int],
    source: str,
) -> None:
    """An anonymous MCP session on one keep-alive connection, calling `tool` every `interval` seconds."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        init = {
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": MCP_VERSION, "capabilities": {}, "clientInfo": {"name": "flood", "version": "1"}
            },
        }
        writer.write(mcp_post(f"{host}:{port}", init, None))
        status, headers, _ = await read_mcp_answer(reader)
        session = headers.get("mcp-session-id")
        if session is None:
            statuses[f"session_{status}"] = statuses.get(f"session_{status}", 0) + 1
            return
        writer.write(mcp_post(f"{host}:{port}", {"jsonrpc": "2.0", "method": "notifications/initialized"}, session))
        await read_mcp_answer(reader)
        due, number = start, 0
        while due < deadline:
            pause = due - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            number += 1
            params = {"name": tool, "arguments": arguments}
            call = {"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": params}
            started = time.perf_counter()
            writer.write(mcp_post(f"{host}:{port}", call, session))
            status, _, body = await read_mcp_answer(reader)
            latencies.append(time.perf_counter() - started)
            if status == "200":
                status = "tool_error" if b'"isError":true' in body.replace(b" ", b"") else "ok"
            statuses[status] = statuses.get(status, 0) + 1
            if status == "closed":
                return
            due = max(due + interval, time.perf_counter() - interval)
    finally:
        writer.close()


def request(host: str, path: str, body: bytes, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def connection(
    host: str,
    port: int,
    payload: bytes,
    interval: float,
    start: float,
    deadline: float,
    latencies: list[float],
    statuses: dict[str, int],
    source: str | None,
) -> None:
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    due = start
    try:
        while due < deadline:
            pause = due - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            started = time.perf_counter()
            writer.write(payload)
            status = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if status == "closed":
                writer.close()
                reader, writer = await asyncio.open_connection(host, port, local_addr=local)
            due = max(due + interval, time.perf_counter() - interval)  # late: skip, never burst to catch up
    finally:
        writer.close()


def summary(latencies: list[float], statuses: dict[str, int], seconds: float) -> dict[str, object]:
    latencies.sort()
    count = len(latencies)

    def at(fraction: float) -> float | None:
        return round(latencies[min(count - 1, int(count * fraction))] * 1000, 3) if count else None

    return {
        "requests": count,
        "rate": round(count / seconds, 1),
        "p50_ms": at(0.5),
        "p90_ms": at(0.9),
        "p99_ms": at(0.99),
        "statuses": statuses,
    }


async def main(argv: list[str]) -> dict[str, object]:
    mode, host, port, path, seconds_text, rate_text, *rest = argv
    seconds, rate = float(seconds_text), float(rate_text)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    start = time.perf_counter() + 0.2
    deadline = start + seconds
    if mode == "flood":
        connections_text, source, body = rest
        connections = int(connections_text)
        payload = request(host, path, body.encode(), None)
        interval = connections / rate
        await asyncio.gather(
            *(
                connection(
                    host, int(port), payload, interval, start + number * interval / connections, deadline,
                    latencies, statuses, source,
                )
                for number in range(connections)
            )
        )
    elif mode == "mcp-flood":
        tool = path
        connections_text, source, arguments = rest
        connections = int(connections_text)
        interval = connections / rate
        await asyncio.gather(
            *(
                mcp_connection(
                    host, int(port), tool, json.loads(arguments), interval,
                    start + number * interval / connections, deadline, latencies, statuses, source,
                )
                for number in range(connections)
            )
        )
    elif mode == "paced":
        token, body = rest
        payload = request(host, path, body.encode(), token)
        await connection(host, int(port), payload, 1 / rate, start, deadline, latencies, statuses, None)
    else:
        raise SystemExit(f"unknown mode {mode!r}: flood or paced")
    return summary(latencies, statuses, seconds)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
