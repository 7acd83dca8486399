"""A small upstream MCP server for the quick start and the tests: Ukrainian legal research, canned.

Run it over stdio (the default, as the gateway's ``tollgate.toml`` does) or over streamable HTTP::

    python examples/upstream_server.py                 # stdio
    python examples/upstream_server.py --http 9000     # http://127.0.0.1:9000/mcp
    python examples/upstream_server.py --http 9000 --token s3cret   # ... requiring a bearer token

Every answer is deterministic, so tests can compare it exactly. The tools:

* ``lookup_law {"query": str}``: a short passage of Ukrainian law from a tiny built-in table.
* ``count_words {"text": str}``: the number of words, as text and as structured content.
* ``fail {"reason"?: str}``: always an ``isError`` result (for tests of failed calls).
* ``slow {"seconds": number <= 5}``: sleeps, then answers (for timeout and disconnect tests).

Tools are listed two per page, so a client must follow ``nextCursor`` to see them all.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PAGE_SIZE = 2
MAX_SLEEP_SECONDS = 5

# Paraphrased, short and fixed: what matters here is that the answer for a query never changes.
LAWS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("constitution", "equality", "конституція"),
        "Constitution of Ukraine, Article 24: citizens have equal constitutional rights and freedoms "
        "and are equal before the law.",
    ),
    (
        ("contract", "agreement", "договір"),
        "Civil Code of Ukraine, Article 626: a contract is an agreement of two or more parties to "
        "establish, change or terminate civil rights and obligations.",
    ),
    (
        ("limitation", "позовна давність"),
        "Civil Code of Ukraine, Article 257: the general limitation period is three years.",
    ),
    (
        ("dismissal", "labour", "employment", "звільнення"),
        "Labour Code of Ukraine, Article 40: an employment contract for an indefinite period may be "
        "terminated by the employer only on the grounds the Code lists.",
    ),
)

ToolHandler = Callable[[Mapping[str, Any]], Awaitable[types.CallToolResult]]


def _text(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)


def lookup(query: str) -> str:
    """The first passage whose keywords occur in ``query`` (case-insensitive), or a fixed miss."""
    needle = query.casefold()
    for keywords, passage in LAWS:
        if any(keyword in needle for keyword in keywords):
            return passage
    return f"No passage found for {query!r}. Try: constitution, contract, limitation, dismissal."


async def lookup_law(arguments: Mapping[str, Any]) -> types.CallToolResult:
    return _text(lookup(str(arguments["query"])))


async def count_words(arguments: Mapping[str, Any]) -> types.CallToolResult:
    words = len(str(arguments["text"]).split())
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{words} words")], structured_content={"words": words}
    )


async def fail(arguments: Mapping[str, Any]) -> types.CallToolResult:
    return _text(f"failed on purpose: {arguments.get('reason', 'no reason given')}", is_error=True)


async def slow(arguments: Mapping[str, Any]) -> types.CallToolResult:
    seconds = float(arguments["seconds"])
    await anyio.sleep(seconds)
    return _text(f"slept {seconds:g} s")


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


TOOLS: dict[str, tuple[types.Tool, ToolHandler]] = {
    "lookup_law": (
        types.Tool(
            name="lookup_law",
            description="A short passage of Ukrainian law matching the query (a tiny built-in table)",
            input_schema=_object({"query": {"type": "string", "minLength": 1, "maxLength": 500}}, ["query"]),
        ),
        lookup_law,
    ),
    "count_words": (
        types.Tool(
            name="count_words",
            description="Counts the words of a text",
            input_schema=_object({"text": {"type": "string", "maxLength": 100_000}}, ["text"]),
            output_schema=_object({"words": {"type": "integer", "minimum": 0}}, ["words"]),
        ),
        count_words,
    ),
    "fail": (
        types.Tool(
            name="fail",
            description="Always fails (an isError result); for tests",
            input_schema=_object({"reason": {"type": "string", "maxLength": 500}}, []),
        ),
        fail,
    ),
    "slow": (
        types.Tool(
            name="slow",
            description=f"Sleeps for the given number of seconds (at most {MAX_SLEEP_SECONDS}), then answers",
            input_schema=_object(
                {"seconds": {"type": "number", "minimum": 0, "maximum": MAX_SLEEP_SECONDS}}, ["seconds"]
            ),
        ),
        slow,
    ),
}


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    cursor = params.cursor if params is not None else None
    try:
        start = int(cursor) if cursor is not None else 0
    except ValueError:
        raise ValueError(f"invalid cursor {cursor!r}") from None
    definitions = [definition for definition, _ in TOOLS.values()]
    page = definitions[start : start + PAGE_SIZE]
    end = start + PAGE_SIZE
    return types.ListToolsResult(tools=page, next_cursor=str(end) if end < len(definitions) else None)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    entry = TOOLS.get(params.name)
    if entry is None:
        return _text(f"unknown tool {params.name!r}", is_error=True)
    # The gateway validates arguments against the listed schema before calling; this server trusts it.
    return await entry[1](params.arguments or {})


def tool_input_schema(name: str) -> Mapping[str, Any] | None:
    entry = TOOLS.get(name)
    return None if entry is None else entry[0].input_schema


def create_server() -> Server[Any]:
    return Server(
        "tollgate-example-legal",
        version="1.0.0",
        instructions="Canned Ukrainian legal research tools for the Tollgate quick start.",
        get_tool_input_schema=tool_input_schema,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve_stdio() -> None:
    server = create_server()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def require_bearer(app: ASGIApp, token: str) -> ASGIApp:
    """Refuse HTTP requests without ``Authorization: Bearer <token>`` (shows upstream credentials)."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await PlainTextResponse("missing or wrong bearer token", status_code=401)(scope, receive, send)
            return
        await app(scope, receive, send)

    return guarded


async def serve_http(host: str, port: int, token: str | None) -> None:
    import uvicorn

    app: ASGIApp = create_server().streamable_http_app(host=host)
    if token is not None:
        app = require_bearer(app, token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on this port (path /mcp)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on with --http")
    parser.add_argument("--token", help="with --http, require this bearer token")
    args = parser.parse_args(argv)
    if args.http is not None:
        anyio.run(serve_http, args.host, args.http, args.token)
    else:
        anyio.run(serve_stdio)


if __name__ == "__main__":
    main()
