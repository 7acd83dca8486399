"""Write ``api/ledger/sync.py`` from ``api/ledger/aio.py``: the blocking twins, generated, never edited.

    python -m api.ledger.generate_sync           rewrite sync.py
    python -m api.ledger.generate_sync --check   exit 1 if sync.py is not what aio.py generates (make lint)

The rewrite is psycopg's ``tools/async_to_sync.py`` idea kept small: a fixed list of textual substitutions,
applied to the code lines of aio.py after its module docstring, which is replaced by ``SYNC_DOCSTRING``.
aio.py keeps to what the list covers (``async def``, ``await``, ``async with`` / ``async for``, the
``AsyncConn`` alias); anything else async left in the output fails the generation, so a construct the
rewrite does not know cannot slip through into a sync module that would not work.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "aio.py"
TARGET = HERE / "sync.py"

HEADER = "# Generated from api/ledger/aio.py by `python -m api.ledger.generate_sync` — do not edit.\n"

SYNC_DOCSTRING = '''"""Thin, typed wrappers over the billing SQL API (db/functions), blocking: for CLI, tests, bench.

Generated from ``api.ledger.aio`` (see its docstring, and ``api.ledger.generate_sync``): the same wrappers,
arguments and row types (``api.ledger.types``, re-exported here), on a ``psycopg.Connection``.
"""
'''

# (pattern, replacement), applied in order to the code after the docstring.
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\bpsycopg\.AsyncConnection\b", "psycopg.Connection"),
    (r"\bAsyncConn\b", "Conn"),
]
# What must not survive the rewrite.
LEFTOVER = re.compile(r"\basync\b|\bawait\b|\bAsync\w*")


class GenerationError(RuntimeError):
    """aio.py holds something the rewrite does not know how to make blocking."""


def generate(source: str) -> str:
    """The text of sync.py for aio.py's text ``source``."""
    match = re.match(r'\s*""".*?"""\n', source, flags=re.S)
    if match is None:
        raise GenerationError("aio.py must open with its module docstring")
    code = source[match.end() :]
    for pattern, replacement in SUBSTITUTIONS:
        code = re.sub(pattern, replacement, code)
    for number, line in enumerate(code.splitlines(), start=1):
        if LEFTOVER.search(line):
            raise GenerationError(f"line {number} of the generated code is still async: {line.strip()!r}")
    return HEADER + SYNC_DOCSTRING + code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.ledger.generate_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if sync.py is stale instead of rewriting it")
    parser.add_argument("--target", type=Path, default=TARGET, help=argparse.SUPPRESS)  # tests check a copy
    args = parser.parse_args(argv)
    expected = generate(SOURCE.read_text(encoding="utf-8"))
    if args.check:
        current = args.target.read_text(encoding="utf-8") if args.target.exists() else ""
        if current != expected:
            print(
                f"{args.target} is stale: it is generated from api/ledger/aio.py; "
                "run `python -m api.ledger.generate_sync` (and edit aio.py, never sync.py)",
                file=sys.stderr,
            )
            return 1
        return 0
    args.target.write_text(expected, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
