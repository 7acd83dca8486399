"""How long the reliability tests run: short by default (`make test`, CI), long under `make torture`.

Every knob is an environment variable, so `make torture` only has to export them:

    TOLLGATE_TORTURE_DB_CYCLES        database SIGKILL + restart cycles          (short: 3)
    TOLLGATE_TORTURE_GATEWAY_CYCLES   gateway SIGKILL + restart cycles           (short: 2)
    TOLLGATE_TORTURE_FAULT_ROUNDS     connection faults injected by the proxy    (short: 20)
    TOLLGATE_TORTURE_DURATION         seconds of load per cycle / race loop      (short: 2)
    TOLLGATE_TORTURE_FUZZ_EXAMPLES    Hypothesis examples per SQL function       (short: 30)
    TOLLGATE_TORTURE_SEED             random seed (default: random, printed in the report)
    TOLLGATE_TORTURE_REPORT           a JSON-lines file the tests append their figures to

`report()` appends one JSON object per test run to TOLLGATE_TORTURE_REPORT (when set) and always
prints it, so `pytest -s` shows the figures too.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


@dataclass(frozen=True)
class Params:
    db_cycles: int
    gateway_cycles: int
    fault_rounds: int
    duration: float
    fuzz_examples: int
    seed: int

    @property
    def long(self) -> bool:
        """True under `make torture` (any knob raised above the short default)."""
        return os.environ.get("TOLLGATE_TORTURE", "") == "1"


def load() -> Params:
    seed_raw = os.environ.get("TOLLGATE_TORTURE_SEED", "").strip()
    return Params(
        db_cycles=_int("TOLLGATE_TORTURE_DB_CYCLES", 3),
        gateway_cycles=_int("TOLLGATE_TORTURE_GATEWAY_CYCLES", 2),
        fault_rounds=_int("TOLLGATE_TORTURE_FAULT_ROUNDS", 20),
        duration=_float("TOLLGATE_TORTURE_DURATION", 2.0),
        fuzz_examples=_int("TOLLGATE_TORTURE_FUZZ_EXAMPLES", 30),
        seed=int(seed_raw) if seed_raw else random.SystemRandom().randrange(2**31),
    )


PARAMS = load()


def report(test: str, **figures: Any) -> dict[str, Any]:
    """Record one test run's figures: printed, and appended to TOLLGATE_TORTURE_REPORT when set."""
    entry = {"test": test, "seed": PARAMS.seed, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    line = json.dumps(entry, sort_keys=True, default=str)
    print(f"\nRELIABILITY {line}")
    target = os.environ.get("TOLLGATE_TORTURE_REPORT", "").strip()
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return entry
