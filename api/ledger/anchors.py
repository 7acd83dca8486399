"""Anchors of the ledger's hash chain: the heads of every account, written to a file an operator keeps
somewhere the database's administrators cannot write, and read back to prove nothing was rewritten.

The file (``tollgate ledger anchor``)::

    # tollgate ledger anchor v1 2026-12-05T10:20:00Z accounts=2 digest=<SHA-256 hex of the lines below>
    0b6c…-uuid 17 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    5d2e…-uuid 3 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752

One line per account with ledger rows: user id, the version of its newest row, that row's hash. The
digest covers every line after the first (each ending with a newline), so the file cannot be edited
unnoticed either; keeping only the first line somewhere safe is enough to check a copy of the file later.
``tollgate ledger verify --anchors FILE`` checks the digest, then that each anchored row still carries its
hash (``billing.verify_anchors``) and that the chain is intact from there on (``billing.verify_ledger``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Sequence

from api.ledger.types import LedgerHead

HEADER = re.compile(
    r"^# tollgate ledger anchor v1 (?P<at>\S+) accounts=(?P<count>[0-9]+) digest=(?P<digest>[0-9a-f]{64})$"
)
LINE = re.compile(r"^(?P<user>[0-9a-f-]{36}) (?P<version>[0-9]{1,18}) (?P<hash>[0-9a-f]{64})$")


class AnchorFileError(ValueError):
    """The anchor file is not one `tollgate ledger anchor` wrote, or it was changed since."""


def _body(heads: Sequence[LedgerHead]) -> str:
    return "".join(f"{head.user_id} {head.version} {head.ledger_head}\n" for head in heads)


def format_anchor(heads: Sequence[LedgerHead], at: dt.datetime) -> str:
    """The anchor file for `heads`, taken at `at`."""
    body = _body(heads)
    digest = hashlib.sha256(body.encode()).hexdigest()
    stamp = at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"# tollgate ledger anchor v1 {stamp} accounts={len(heads)} digest={digest}\n{body}"


def parse_anchor(text: str) -> list[LedgerHead]:
    """The heads of an anchor file, after checking its digest. Raises AnchorFileError saying what is wrong."""
    lines = text.splitlines()
    header = HEADER.match(lines[0]) if lines else None
    if header is None:
        raise AnchorFileError("the first line is not a `tollgate ledger anchor` header")
    heads = []
    for number, line in enumerate(lines[1:], start=2):
        match = LINE.match(line)
        if match is None:
            raise AnchorFileError(f"line {number} is not '<user id> <version> <hash>'")
        try:
            user_id = uuid.UUID(match["user"])
        except ValueError:
            raise AnchorFileError(f"line {number}: {match['user']!r} is not a user id") from None
        heads.append(LedgerHead(user_id, int(match["version"]), match["hash"]))
    if len(heads) != int(header["count"]):
        raise AnchorFileError(f"the header says {header['count']} accounts, the file has {len(heads)}")
    if hashlib.sha256(_body(heads).encode()).hexdigest() != header["digest"]:
        raise AnchorFileError("the digest in the header does not match the lines: the file was changed")
    return heads
