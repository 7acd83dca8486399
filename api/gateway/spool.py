"""The unbilled-call spool: completions the gateway could not write because the database failed.

When a tool has run and ``billing.complete_request`` then fails (connection lost, server down,
timeout), the caller still gets the tool's result and the completion is appended, fsync'ed, to a
JSON-lines file in ``<data_dir>/spool``. Meanwhile the call is visible in ``billing.unbilled_calls``
(its cost_tracking row is still pending). The gateway retries the spool in the background, and
``tollgate ledger reconcile`` replays it on demand; ``complete_request`` is idempotent on the
request id, so a completion replayed twice charges once. Every file operation holds an exclusive
``flock`` so a gateway and the CLI never replay the same file at the same time.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from api.jsonio import JSONBodyError, dumps, loads

log = logging.getLogger("tollgate.spool")

SPOOL_FILE = "unbilled.jsonl"


@dataclass(frozen=True)
class PendingCompletion:
    """The arguments of one ``billing.complete_request`` call that did not commit."""

    request_id: str
    success: bool
    total_cost_usd: Decimal
    cost_breakdown: list[Any]
    execution_time_ms: int | None
    error: str | None
    description: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "success": self.success,
            "total_cost_usd": self.total_cost_usd,
            "cost_breakdown": self.cost_breakdown,
            "execution_time_ms": self.execution_time_ms,
            "error": self.error,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PendingCompletion:
        return cls(
            request_id=str(data["request_id"]),
            success=bool(data["success"]),
            total_cost_usd=Decimal(data["total_cost_usd"]),
            cost_breakdown=list(data.get("cost_breakdown") or []),
            execution_time_ms=data.get("execution_time_ms"),
            error=data.get("error"),
            description=data.get("description"),
        )


@dataclass(frozen=True)
class ReplayReport:
    written: int  # completions that reached the ledger now (or had already)
    remaining: int  # still failing with a transient error, kept for the next try
    rejected: list[tuple[str, str]]  # (request_id, reason): refused by the ledger for good, moved aside


# Replays one completion; raises on failure. ``permanent(exc)`` tells whether retrying can help.
Replay = Callable[[PendingCompletion], Awaitable[None]]


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / SPOOL_FILE
        self.rejected_path = directory / "rejected.jsonl"

    @contextmanager
    def _locked(self) -> Iterator[int]:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    def add(self, completion: PendingCompletion) -> None:
        """Append durably (fsync) before the caller is answered."""
        line = (dumps(completion.as_json()) + "\n").encode()
        with self._locked() as fd:
            os.write(fd, line)
            os.fsync(fd)

    def pending(self) -> list[PendingCompletion]:
        with self._locked():
            return self._read()

    def _read(self) -> list[PendingCompletion]:
        entries: list[PendingCompletion] = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append(PendingCompletion.from_json(loads(line)))
            except (JSONBodyError, KeyError, TypeError, ValueError, ArithmeticError):
                # A torn last line (crash mid-write) never reached fsync, so its call was never answered.
                log.error("spool %s line %d is unreadable and skipped", self.path, number)
        return entries

    async def replay(self, replay: Replay, permanent: Callable[[Exception], bool]) -> ReplayReport:
        """Replay every spooled completion; keep the ones that fail transiently."""
        with self._locked() as fd:
            entries = self._read()
            if not entries:
                return ReplayReport(0, 0, [])
            kept: list[PendingCompletion] = []
            rejected: list[tuple[str, str]] = []
            written = 0
            for entry in entries:
                try:
                    await replay(entry)
                    written += 1
                except Exception as exc:
                    if permanent(exc):
                        rejected.append((entry.request_id, str(exc)))
                        with self.rejected_path.open("a") as handle:
                            handle.write(dumps({**entry.as_json(), "rejected": str(exc)}) + "\n")
                    else:
                        kept.append(entry)
            # Rewrite in place under the lock (the file is small: it only ever holds failed completions).
            os.ftruncate(fd, 0)
            os.write(fd, "".join(dumps(entry.as_json()) + "\n" for entry in kept).encode())
            os.fsync(fd)
            return ReplayReport(written, len(kept), rejected)
