"""Example Python tools, registered by ``tollgate.toml`` (``python_modules = ["examples.python_tools"]``).

* ``echo``: returns its text. Priced per call ($0.0003 in tollgate.toml: micro-cent pricing).
* ``summarize``: an extractive "summary" (the first sentences) that reports a metered cost as if a
  language model had read the text: tokens x $0.000002 to provider ``demo-llm``. The gateway
  charges that cost plus the configured markup. Deterministic, so tests can check exact amounts.
  Its price is bounded before it runs (tollgate.toml): at most 0.65 tokens a character of the text, so
  the hold is 0.0000013 USD a character plus the markup, and no call is charged more than 0.16 USD.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from api.tools.registry import ToolContext, ToolRegistry

PRICE_PER_TOKEN_USD = Decimal("0.000002")
# A rough English average (1.3 tokens a word), in integers so the cost is exact.
TOKENS_PER_10_WORDS = 13
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def tokens_for(text: str) -> int:
    """The metered tokens of ``text``: 1.3 per word, rounded up."""
    words = len(text.split())
    return (words * TOKENS_PER_10_WORDS + 9) // 10


def register(registry: ToolRegistry) -> None:
    @registry.function(
        "echo",
        description="Returns its text unchanged",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": 10_000}},
            "required": ["text"],
            "additionalProperties": False,
        },
    )
    async def echo(arguments: dict[str, Any], ctx: ToolContext) -> str:
        return str(arguments["text"])

    @registry.function(
        "summarize",
        description="Summarizes a text (its first sentences); charged by the tokens read",
        input_schema={
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1, "maxLength": 100_000},
                "max_sentences": {"type": "integer", "minimum": 1, "maximum": 10, "default": 2},
            },
            "required": ["text"],
            "additionalProperties": False,
        },
    )
    async def summarize(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        text = " ".join(str(arguments["text"]).split())
        sentences = SENTENCE_END.split(text)
        summary = " ".join(sentences[: int(arguments.get("max_sentences", 2))])
        tokens = tokens_for(text)
        ctx.report_cost("demo-llm", Decimal(tokens) * PRICE_PER_TOKEN_USD, units=tokens, unit="tokens")
        return {"summary": summary, "tokens": tokens}
