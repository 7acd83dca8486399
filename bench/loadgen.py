"""A lean HTTP/1.1 keep-alive load generator, run as its own process by bench/gateway.py.

Raw asyncio streams (no HTTP library: httpx costs more CPU per request than the gateway's JSON on
this 2-core machine). Each of C connections sends POST requests back to back, each with a token
drawn at random from a file, for D seconds; prints one JSON line: requests/s, p50/p99 latency,
status counts.

    python bench/loadgen.py HOST PORT PATH SECONDS CONNECTIONS TOKENS_FILE HEADER BODY

SECONDS "once" sends exactly one request per token instead (the benchmark's cache warm-up).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time


async def read_answer(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """Read one HTTP/1.1 response (status line, headers, Content-Length body): its status, or "closed",
    and its body."""
    status_line = await reader.readline()
    if not status_line:
        return "closed", b""
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status_line.split()[1].decode(), await reader.readexactly(length)


async def read_response(reader: asyncio.StreamReader) -> str:
    """Read one HTTP/1.1 response; its status, or "closed"."""
    return (await read_answer(reader))[0]


async def worker(
    host: str,
    port: int,
    requests: list[bytes],
    deadline: float,
    latencies: list[float],
    statuses: dict[str, int],
    queue: list[bytes] | None,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while queue if queue is not None else time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(queue.pop() if queue is not None else random.choice(requests))
            status = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def run(argv: list[str]) -> dict[str, object]:
    host, port, path, seconds, connections, tokens_file, header, body = argv
    with open(tokens_file) as handle:
        tokens = [line.strip() for line in handle if line.strip()]
    payload = body.encode()
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{header}: {header_value(header, token)}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        + payload
        for token in tokens
    ]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    once = seconds == "once"
    began = time.perf_counter()
    deadline = began + (0.0 if once else float(seconds))
    queue = list(requests) if once else None
    await asyncio.gather(
        *(worker(host, int(port), requests, deadline, latencies, statuses, queue) for _ in range(int(connections)))
    )
    duration = time.perf_counter() - began if once else float(seconds)
    latencies.sort()
    count = len(latencies)
    return {
        "requests": count,
        "rps": count / duration,
        "p50_ms": latencies[count // 2] * 1000 if count else None,
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000 if count else None,
        "statuses": statuses,
    }


def header_value(header: str, token: str) -> str:
    return f"Bearer {token}" if header.lower() == "authorization" else token


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(sys.argv[1:]))))
