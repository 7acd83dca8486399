"""The tool the gateway benchmark calls: fixed price, trivial work, so the gateway's own cost shows."""

from __future__ import annotations

from typing import Any

from api.tools.registry import ToolContext, ToolRegistry


def register(registry: ToolRegistry) -> None:
    @registry.function(
        "bench_lookup",
        description="Returns a short fixed passage (benchmark tool, $0.002 a call)",
        input_schema={
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 200}},
            "required": ["query"],
            "additionalProperties": False,
        },
    )
    async def bench_lookup(arguments: dict[str, Any], ctx: ToolContext) -> str:
        return f"Article 24 (matched {arguments['query']!r}): citizens have equal constitutional rights."
