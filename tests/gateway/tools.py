"""Python tools of the test gateway (tests/gateway/tools.toml): fixed price, metered, bounded, failing, slow."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio

from api.tools.registry import ToolContext, ToolError, ToolRegistry


def register(registry: ToolRegistry) -> None:
    @registry.function(
        "priced",
        description="Fixed price per call ($0.02): echoes its text",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": 1000}},
            "required": ["text"],
            "additionalProperties": False,
        },
    )
    async def priced(arguments: dict[str, Any], ctx: ToolContext) -> str:
        return f"echo: {arguments['text']}"

    @registry.function(
        "micro",
        description="Fixed price of $0.0003 per call",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
    )
    async def micro(arguments: dict[str, Any], ctx: ToolContext) -> str:
        return "ok"

    @registry.function(
        "metered",
        description="Reports a metered cost of tokens x $0.000002 (price = cost + 50% markup)",
        input_schema={
            "type": "object",
            "properties": {"tokens": {"type": "integer", "minimum": 0, "maximum": 10000000}},
            "required": ["tokens"],
            "additionalProperties": False,
        },
    )
    async def metered(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        tokens = int(arguments["tokens"])
        ctx.report_cost("test-llm", Decimal(tokens) * Decimal("0.000002"), units=tokens, unit="tokens")
        return {"tokens": tokens}

    @registry.function(
        "by_chars",
        description="Reports $0.000001 per character of its text, plus `extra` characters' worth (priced with a"
        " per-character hold and a maximum price)",
        input_schema={
            "type": "object",
            "properties": {
                "text": {"type": "string", "maxLength": 100000},
                "extra": {"type": "integer", "minimum": 0, "maximum": 10000000},
            },
            "required": ["text"],
            "additionalProperties": False,
        },
    )
    async def by_chars(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        characters = len(arguments["text"]) + int(arguments.get("extra", 0))
        ctx.report_cost("test-chars", Decimal(characters) * Decimal("0.000001"), units=characters, unit="characters")
        return {"characters": characters}

    @registry.function("broken", description="Always fails (priced, never charged)")
    async def broken(arguments: dict[str, Any], ctx: ToolContext) -> str:
        raise ToolError("the broken tool always fails")

    @registry.function(
        "finder",
        description="Fails, naming what it was asked for (priced $0.01): an error text that echoes input",
        input_schema={
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 1000}},
            "required": ["query"],
            "additionalProperties": False,
        },
    )
    async def finder(arguments: dict[str, Any], ctx: ToolContext) -> str:
        raise ToolError(f"nothing found for {arguments['query']}")

    @registry.function(
        "slow",
        description="Sleeps, then answers (priced $0.01)",
        input_schema={
            "type": "object",
            "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 10}},
            "required": ["seconds"],
            "additionalProperties": False,
        },
    )
    async def slow(arguments: dict[str, Any], ctx: ToolContext) -> str:
        await anyio.sleep(float(arguments["seconds"]))
        return "done"

    @registry.function("free", description="No price: tracked, never charged")
    async def free(arguments: dict[str, Any], ctx: ToolContext) -> str:
        return "free"
