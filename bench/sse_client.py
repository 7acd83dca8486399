"""The MCP SSE client of bench/sse_sessions.py: N sessions over raw asyncio sockets, run as its own process.

Each session: GET /sse, the endpoint event, initialize, notifications/initialized, one tools/call, all
answers read from its own stream; then it stays open until the parent creates the hold file.

    python bench/sse_client.py PORT TOKENS_FILE HOLD_FILE PROTOCOL_VERSION

TOKENS_FILE has one JWT per session; a line "-" opens an anonymous session (no Authorization header).
"""

import asyncio
import json
import os
import sys
import time

port, tokens_path, hold_path, protocol_version = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
with open(tokens_path) as handle:
    tokens = [t.strip() for t in handle if t.strip()]


ANONYMOUS = "-"


def auth(token):
    return "" if token == ANONYMOUS else f"Authorization: Bearer {token}\r\n"


async def post(path, token, message):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps(message).encode()
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth(token)}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body
    )
    status = await reader.readline()
    await reader.read()
    writer.close()
    return int(status.split()[1])


async def events(reader):
    event: str | None = None
    data: list[str] = []
    while True:
        line = await reader.readline()
        if not line:
            return
        line = line.decode().rstrip("\r\n")
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def session(token, opened, release, results):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            (f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth(token)}Accept: text/event-stream\r\n\r\n").encode()
        )
        status = await reader.readline()
        if b" 200 " not in status:
            results.append("refused")
            opened.release()
            return
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        stream = events(reader)
        _, endpoint = await stream.__anext__()
        opened.release()
        assert (
            await post(
                endpoint,
                token,
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": protocol_version,
                        "capabilities": {},
                        "clientInfo": {"name": "bench", "version": "1"},
                    },
                },
            )
            == 202
        )
        _, data = await stream.__anext__()
        answer = json.loads(data)
        if answer.get("id") != 1 or answer.get("result", {}).get("protocolVersion") != protocol_version:
            raise RuntimeError(f"initialize answered {data[:200]}")
        assert await post(endpoint, token, {"jsonrpc": "2.0", "method": "notifications/initialized"}) == 202
        assert (
            await post(
                endpoint,
                token,
                {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "tools/call",
                    "params": {"name": "bench_lookup", "arguments": {"query": "q"}},
                },
            )
            == 202
        )
        while True:
            _, data = await stream.__anext__()
            message = json.loads(data)
            if message.get("id") == 2:
                break
        ok = not message["result"].get("isError")
        billing = (message["result"].get("_meta") or {}).get("tollgate/billing") or {}
        results.append(f"ok:{billing.get('status')}" if ok else f"tool_error:{data[:200]}")
        await release.wait()  # keep the session open until every session has made its call
        writer.close()
    except Exception as exc:
        results.append(f"error:{type(exc).__name__}")
        opened.release()


async def main():
    opened = asyncio.Semaphore(0)
    release = asyncio.Event()
    results: list[str] = []
    started = time.perf_counter()
    tasks = [asyncio.create_task(session(t, opened, release, results)) for t in tokens]
    while len(results) < len(tokens):
        await asyncio.sleep(0.2)
        if time.perf_counter() - started > 600:
            break
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "phase": "called",
                "seconds": elapsed,
                "ok": sum(1 for r in results if r.startswith("ok:")),
                "billing": {r[3:]: results.count(r) for r in set(results) if r.startswith("ok:")},
                "other": [r for r in results if not r.startswith("ok:")][:20],
                "failed": sum(1 for r in results if not r.startswith("ok:")),
            }
        ),
        flush=True,
    )
    # Wait for the parent to read the gateway's memory, then close every session.
    while not os.path.exists(hold_path):
        await asyncio.sleep(0.1)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)


asyncio.run(main())
