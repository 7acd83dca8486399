"""Loads the named SQL statements of ``queries.sql`` into ``QUERIES``, the only SQL the package runs.

Format (after procrastinate's ``queries.sql``): a ``-- name --`` header line, a one-line comment, then
one statement up to the next header.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """The statements of a queries file by name, without their comment lines."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        lines = [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("--")]
        queries[name] = "\n".join(lines)
    return queries


QUERIES: dict[str, str] = parse_queries(resources.files("api.ledger").joinpath("queries.sql").read_text("utf-8"))
