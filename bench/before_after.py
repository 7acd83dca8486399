"""The same benchmark on an earlier revision and on this checkout, in one run: before/after ratios.

    make bench-compare BEFORE=<rev> [COMPARE_ARGS="--bench webhooks --rounds 4 -- --duration 5"]
    python -m bench.before_after --before <rev> [--bench gateway|webhooks] [--rounds N] [-- <bench args>]

A refactoring claims "behaviour does not change"; this shows whether speed did. The revision is exported
with ``git archive`` into ``.tollgate/before-after/<sha>/`` with a virtualenv of its own (made once, kept
for the next run), because a benchmark starts the gateway through its own ``tollgate`` entry point and the
two trees may lay out their packages differently. Each round runs the chosen benchmark once on each side
(``python -m bench.<name> --rounds 1 <bench args>``, every figure of it measured against its own baseline
in that run), alternating which side goes first, and reads the JSON each writes. It prints, per mode, each
side's requests per second and p50/p99, and the benchmark's own ratios against its in-run baseline
(billed/unmetered, webhook/baseline: steadier under load than the raw figures), with the ratio after/before
per round and of the medians, and writes ``bench/results/before-after-<bench>-<UTC>.json``. A side whose
benchmark fails its own checks fails the comparison (exit 1). Not a timed test: a machine's noise shows in
the spread of the per-round ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".tollgate" / "before-after"
RESULTS_DIR = ROOT / "bench" / "results"
BENCHES = ("gateway", "webhooks")
RESULTS_LINE = re.compile(r"^results: (\S+\.json)$", re.M)


@dataclass(frozen=True)
class Side:
    name: str  # "before" or "after"
    root: Path
    python: Path


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def prepare_before(revision: str) -> Side:
    """The revision's tree and a virtualenv with it installed (editable), made once per commit."""
    sha = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    tree = CACHE / sha[:12]
    python = tree / ".venv" / "bin" / "python"
    stamp = tree / ".venv" / ".installed"
    if not stamp.exists():
        tree.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", "-C", str(ROOT), "archive", sha], check=True, stdout=archive)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(tree, filter="data")
        print(f"before-after: installing {sha[:12]} into {tree}/.venv", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", f"{tree}[dev]"], check=True)
        stamp.touch()
    return Side("before", tree, python)


def run_side(side: Side, bench: str, bench_args: list[str]) -> dict[str, Any]:
    """One run of ``bench.<bench>`` with one round on ``side``; its JSON report."""
    command = [str(side.python), "-m", f"bench.{bench}", "--rounds", "1", *bench_args]
    print(f"before-after: {side.name}: {' '.join(command[1:])}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(side.root)}
    done = subprocess.run(command, cwd=side.root, env=env, capture_output=True, text=True)
    match = RESULTS_LINE.search(done.stdout)
    if match is None:
        sys.stdout.write(done.stdout[-4000:])
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"before-after: the {side.name} side's benchmark wrote no results (exit {done.returncode})")
    report: dict[str, Any] = json.loads(Path(match.group(1)).read_text())
    report["_exit"] = done.returncode
    return report


def figures(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per mode: requests per second, p50 and p99 (the medians the benchmark reports for its one round);
    and, as mode "ratios", the benchmark's own ratios against its baseline in the same run (billed/unmetered,
    webhook/baseline...), which the machine's load moves less than the raw figures."""
    out = {
        mode: {"rps": float(row["rps"]), "p50_ms": float(row["p50_ms"]), "p99_ms": float(row["p99_ms"])}
        for mode, row in report["summary"].items()
    }
    out["ratios"] = {name: float(value) for name, value in report.get("ratios", {}).items()}
    return out


def compare(rounds: list[dict[str, dict[str, dict[str, float]]]]) -> dict[str, dict[str, Any]]:
    """For each mode and figure: both sides' medians, the ratio of medians, and the per-round ratios."""
    out: dict[str, dict[str, Any]] = {}
    for mode in rounds[0]["after"]:
        out[mode] = {}
        for key in rounds[0]["after"][mode]:
            before = [r["before"][mode][key] for r in rounds]
            after = [r["after"][mode][key] for r in rounds]
            out[mode][key] = {
                "before": statistics.median(before),
                "after": statistics.median(after),
                "ratio": statistics.median(after) / statistics.median(before),
                "per_round": [round(a / b, 3) for a, b in zip(after, before, strict=True)],
            }
    return out


def print_table(revision: str, bench: str, result: dict[str, dict[str, Any]]) -> None:
    print(f"\n{bench}: after (this checkout) / before ({revision}); ratio of medians, then per round")
    print(f"{'mode':12s} {'figure':17s} {'before':>10s} {'after':>10s} {'ratio':>7s}  per round")
    for mode, by_key in result.items():
        for key, row in by_key.items():
            print(
                f"{mode:12s} {key:17s} {row['before']:10.2f} {row['after']:10.2f} {row['ratio']:7.3f}  "
                + " ".join(f"{r:.3f}" for r in row["per_round"])
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the revision to compare against (a commit, tag, branch)")
    parser.add_argument("--bench", choices=BENCHES, default="gateway", help="which benchmark (default gateway)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each side once per round (default 3)")
    parser.add_argument("bench_args", nargs="*", help="after --: passed to the benchmark (not --rounds)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if "--rounds" in args.bench_args:
        parser.error("--rounds is this script's: each benchmark run is one round")
    sides = [prepare_before(args.before), Side("after", ROOT, Path(sys.executable))]
    rounds: list[dict[str, dict[str, dict[str, float]]]] = []
    failed: list[str] = []
    for number in range(args.rounds):
        order = sides if number % 2 == 0 else sides[::-1]
        this_round: dict[str, dict[str, dict[str, float]]] = {}
        for side in order:
            report = run_side(side, args.bench, args.bench_args)
            if report["_exit"] != 0 or not report.get("ok", True):
                failed.append(f"round {number + 1}, {side.name}: the benchmark's own checks failed")
            this_round[side.name] = figures(report)
        rounds.append(this_round)
    result = compare(rounds)
    print_table(args.before, args.bench, result)
    when = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"before-after-{args.bench}-{when}.json"
    out.write_text(
        json.dumps(
            {
                "when": when,
                "bench": args.bench,
                "before": git("rev-parse", args.before),
                "after": git("rev-parse", "HEAD"),
                "after_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
                "bench_args": args.bench_args,
                "rounds": rounds,
                "comparison": result,
                "failed": failed,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results: {out}")
    for line in failed:
        print(f"before-after: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
