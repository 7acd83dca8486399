"""Every benchmark in one command (`make bench`): a results file (JSON) and PNG plots, each figure a
ratio against a baseline measured in the same run.

    python -m bench.harness [--quick] [--only ledger,contention,growth,http,sse,openloop]
                            [--duration S] [--rounds N] [--results-dir DIR]

Sections (bench/README.md, "make bench", says what each figure is and how to read the plots):

    ledger      bench/run.py: billing.charge on 10k users and on one account, reserve + settle, each
                against the single-statement durable-charge baseline; pgbench -N for context
    contention  bench/run.py: reserve + settle and the baseline with 8, 32 and 64 clients
    growth      bench/growth.py: charge tps and billing.history latency at 0, 1M and 5M ledger rows
    http        bench/gateway.py: billed vs unmetered (vs API key) tool calls through real gateways
    sse         bench/sse_sessions.py: MCP SSE sessions held by one worker, memory per session
    openloop    bench/openloop.py: fixed arrival rates (fractions of the closed-loop maximum) on the
                SQL path and the HTTP path; latency from each request's scheduled start

ledger, contention, growth and the SQL part of openloop share one embedded server; http and the HTTP
part of openloop share the gateways of bench/gateway.py; sse starts its own. Latency percentiles come
from pgbench's per-transaction log (-l) for the pgbench runs, from wrk for HTTP, and from the open-loop
generator. Output: bench/results/bench-<UTC>/results.json and *.png, and a summary table on stdout.
--quick runs everything short and small: it checks that the harness works, it measures nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench import gateway, growth, openloop, sse_sessions  # noqa: E402
from bench import run as ledger  # noqa: E402

SECTIONS = ("ledger", "contention", "growth", "http", "sse", "openloop")
SSE_TARGET = 2000  # concurrent sessions per worker, from the gateway issue


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short and small: checks the harness, measures nothing")
    parser.add_argument("--only", default=None, help=f"comma-separated sections of: {','.join(SECTIONS)}")
    parser.add_argument(
        "--duration",
        type=int,
        default=None,
        help="seconds per pgbench run (default 30, quick 3); HTTP rounds take a third of it, open-loop steps half",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every comparison (default 3, quick 1)")
    parser.add_argument("--results-dir", type=Path, default=ledger.RESULTS_DIR, help="bench-<UTC>/ goes in here")
    args = parser.parse_args(argv)
    sections = SECTIONS if args.only is None else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(sections) - set(SECTIONS)
    if unknown or not sections:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    args.sections = sections
    args.duration = args.duration or (3 if args.quick else 30)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    return args


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Every knob of every section, from --quick / --duration / --rounds."""
    quick = args.quick
    return {
        "ledger": {"duration": args.duration, "rounds": args.rounds},
        "growth": {
            "duration": args.duration,
            "rounds": args.rounds,
            "levels": growth.QUICK_LEVELS if quick else growth.LEVELS,
            "samples": 50 if quick else 1000,
        },
        "http": {
            "duration": max(2.0, args.duration / 3),
            "rounds": args.rounds,
            "users": 1000 if quick else 10_000,
        },
        "sse": {"sessions": (50, 100) if quick else (500, 1000, 2000, 3000), "mode": "billed" if quick else "both"},
        "sse_batches": 1 if quick else 2,
        "openloop": {
            "duration": max(2.0, args.duration / 2),
            "fractions": (0.5, 0.9) if quick else openloop.FRACTIONS,
        },
    }


def git_info() -> dict[str, Any]:
    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *argv], capture_output=True, text=True, check=True).stdout

    try:
        return {
            "commit": git("rev-parse", "HEAD").strip(),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD").strip(),
            "uncommitted": [line[3:] for line in git("status", "--porcelain").splitlines()],
        }
    except (OSError, subprocess.CalledProcessError):
        return {}


def figure(
    section: str,
    name: str,
    value: float | None,
    unit: str,
    *,
    ratio: float | None = None,
    baseline: str | None = None,
    target: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    verdict = None
    if target is not None and ratio is not None:
        verdict = "PASS" if ratio >= target else "MISS"
    elif target is not None and value is not None and unit == "sessions":
        verdict = "PASS" if value >= target else "MISS"
    return {
        "section": section,
        "name": name,
        "value": value,
        "unit": unit,
        "ratio": None if ratio is None else round(ratio, 3),
        "baseline": baseline,
        "target": target,
        "verdict": verdict,
        "note": note,
    }


def ledger_figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for s in report["summary"]:
        section = "contention" if s["scenario"].endswith(("_c32", "_c64")) else "ledger"
        pct = s.get("latency_percentiles_ms") or {}
        note = f"{s['clients']} clients" + (
            f"; p50/p95/p99 {pct['p50']:.2f}/{pct['p95']:.2f}/{pct['p99']:.2f} ms" if pct else ""
        )
        out.append(
            figure(
                section,
                s["scenario"],
                round(s["tps_median"], 1),
                "tps",
                ratio=s["ratio"],
                baseline=s["baseline"],
                target=s["target"],
                note=note,
            )
        )
    return out


def growth_figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    largest = max(row["rows"] for row in report["summary"])
    for row in report["summary"]:
        if row["rows"] == 0:
            continue
        target = growth.TARGET if row["rows"] == largest else None
        h = row["history_ms"]
        out.append(
            figure(
                "growth",
                f"charge_tps@{row['label']}",
                round(row["charge_tps_median"], 1),
                "tps",
                ratio=row["ratios"]["charge_tps"],
                baseline="charge_tps@0",
                target=target,
            )
        )
        for page, has_target in (("first_page", True), ("deep_keyset", True), ("deep_offset", False)):
            out.append(
                figure(
                    "growth",
                    f"history_{page}@{row['label']}",
                    h[page]["p50"],
                    "ms p50",
                    ratio=row["ratios"][f"history_{page}"],
                    baseline=f"history_{page}@0",
                    target=target if has_target else None,
                    note=f"p99 {h[page]['p99']:.3f} ms; ratio = p50 at 0 / p50 here",
                )
            )
    return out


def http_figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    summary = report["summary"]
    out = [
        figure(
            "http",
            mode,
            round(summary[mode]["rps"], 1),
            "req/s",
            ratio=None if mode == "unmetered" else report["ratios"][f"{mode}/unmetered"],
            baseline=None if mode == "unmetered" else "unmetered",
            target=report["target_billed_unmetered"] if mode == "billed" else None,
            note=f"p50/p95/p99 {summary[mode]['p50_ms']:.1f}/"
            + ("-" if summary[mode].get("p95_ms") is None else f"{summary[mode]['p95_ms']:.1f}")
            + f"/{summary[mode]['p99_ms']:.1f} ms",
        )
        for mode in ("unmetered", "billed", "key")
    ]
    return out


def sse_figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for mode in ("billed", "anonymous"):
        rows = [r for r in report["rows"] if r["mode"] == mode]
        if not rows:
            continue
        held = max((r["sessions"] for r in rows if sse_sessions.passed(r)), default=0)
        kib = [r["kib_per_session"] for r in rows]
        out.append(
            figure(
                "sse",
                f"{mode}_sessions_held",
                held,
                "sessions",
                target=SSE_TARGET,
                note=f"largest N tried with every call answered; {min(kib):.0f}-{max(kib):.0f} KiB per session",
            )
        )
    return out


def openloop_figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    paths = [(f"sql_{k}", v) for k, v in report.get("sql", {}).get("kinds", {}).items()]
    paths += [(f"http_{k}", v) for k, v in report.get("http", {}).get("modes", {}).items()]
    for name, result in paths:
        top = result["steps"][-1]
        lat = top["latency_ms"]
        out.append(
            figure(
                "openloop",
                f"{name}@{top['fraction']:g}xmax",
                lat.get("p99"),
                "ms p99",
                note=f"closed-loop max {result['max_rps']:,.0f}/s; offered {top['offered_rps']:,.0f}/s,"
                f" achieved {top['achieved_rps']:,.0f}/s; p50 {lat.get('p50', 0):.2f} ms",
            )
        )
    return out


def format_summary(figures: list[dict[str, Any]]) -> str:
    header = ("section", "figure", "value", "unit", "ratio", "vs", "target", "verdict", "note")
    rows = [header]
    for f in figures:
        value = f["value"]
        rows.append(
            (
                f["section"],
                f["name"],
                ""
                if value is None
                else (f"{value:,.3f}" if isinstance(value, float) and value < 100 else f"{value:,.0f}"),
                f["unit"],
                "" if f["ratio"] is None else f"{f['ratio']:.3f}",
                f["baseline"] or "",
                "" if f["target"] is None else f">= {f['target']:g}",
                f["verdict"] or "",
                f["note"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(
                c.rjust(w) if i in (2, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    knobs = plan(args)
    started_at = dt.datetime.now(dt.UTC)
    began = time.monotonic()
    out_dir = args.results_dir / f"bench-{started_at:%Y%m%dT%H%M%SZ}"
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = args.sections
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    server_settings: dict[str, Any] = {}
    code: dict[str, Any] = {}
    print(
        f"tollgate benchmark harness: sections {', '.join(sections)}"
        + ("  [--quick: checks the harness, measures nothing]" if args.quick else ""),
        flush=True,
    )

    def attempt(name: str, call: Any) -> None:
        """Run one section; a failure is recorded and the other sections still run."""
        started = time.monotonic()
        print(f"\n== {name} ==", flush=True)
        try:
            results[name] = call()
        except Exception as exc:  # a broken section must not lose the others' figures
            errors[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        timings[name] = round(time.monotonic() - started, 1)

    if {"ledger", "contention", "growth", "openloop"} & set(sections):
        with ledger.ledger_env() as env:
            server_settings["ledger_server"] = env.server_settings
            code = env.code
            scenarios: tuple[ledger.Scenario, ...] = ()
            if "ledger" in sections:
                scenarios += ledger.DEFAULT_SCENARIOS
            if "contention" in sections:
                wanted = {"baseline_10k", "reserve_settle_10k"} | {s.name for s in ledger.CONTENTION_SCENARIOS}
                scenarios += tuple(s for s in ledger.ALL_SCENARIOS if s.name in wanted and s not in scenarios)
            if scenarios:
                name = "+".join(s for s in ("ledger", "contention") if s in sections)
                attempt(
                    name,
                    lambda: ledger.run(
                        knobs["ledger"]["duration"],
                        knobs["ledger"]["rounds"],
                        scenarios=scenarios,
                        latency_log=True,
                        env=env,
                    ),
                )
            if "growth" in sections:
                g = knobs["growth"]
                attempt(
                    "growth",
                    lambda: growth.run(g["duration"], g["rounds"], g["levels"], g["samples"], env=env),
                )
            if "openloop" in sections:
                o = knobs["openloop"]
                attempt("openloop_sql", lambda: openloop.run_sql(o["duration"], o["fractions"], env=env))
    if "http" in sections or "openloop" in sections:
        h = knobs["http"]
        o = knobs["openloop"]

        def after(gw: gateway.GatewayEnv) -> dict[str, Any]:
            return openloop.run_http(gw, o["duration"], o["fractions"])

        if "http" in sections:
            attempt(
                "http",
                lambda: gateway.run(
                    h["duration"], h["rounds"], users=h["users"], after=after if "openloop" in sections else None
                ),
            )
            if "http" in results and "after" in results["http"]:
                results["openloop_http"] = results["http"].pop("after")
        else:

            def http_openloop() -> dict[str, Any]:
                with gateway.gateway_env(h["users"]) as gw:
                    return openloop.run_http(gw, o["duration"], o["fractions"])

            attempt("openloop_http", http_openloop)
        if "http" in results:
            server_settings["gateway_server"] = results["http"]["postgres"]
    if "sse" in sections:
        attempt(
            "sse",
            lambda: sse_sessions.run(knobs["sse"]["sessions"], knobs["sse"]["mode"], knobs["sse_batches"]),
        )

    figures: list[dict[str, Any]] = []
    for key in ("ledger", "contention", "ledger+contention"):
        if key in results:
            figures += ledger_figures(results[key])
    if "growth" in results:
        figures += growth_figures(results["growth"])
    if "http" in results:
        figures += http_figures(results["http"])
    if "sse" in results:
        figures += sse_figures(results["sse"])
    open_report = {"sql": results.get("openloop_sql", {}), "http": results.get("openloop_http", {})}
    if results.get("openloop_sql") or results.get("openloop_http"):
        figures += openloop_figures(open_report)

    checks = integrity(results)
    from bench import plots

    try:
        made = plots.make_all(results, figures, out_dir)
    except Exception as exc:
        errors["plots"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        made = []
    report = {
        "started_at": started_at.isoformat(),
        "seconds": round(time.monotonic() - began, 1),
        "quick": args.quick,
        "args": {"sections": list(sections), "duration": args.duration, "rounds": args.rounds},
        "plan": knobs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "git": git_info(),
        "code": code,
        "server_settings": server_settings,
        "figures": figures,
        "checks": checks,
        "errors": errors,
        "section_seconds": timings,
        "plots": [p.name for p in made],
        "sections": results,
    }
    out = out_dir / "results.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")

    print()
    print(
        f"tollgate benchmarks, {started_at:%Y-%m-%d %H:%M} UTC, git {report['git'].get('commit', '?')[:10]}"
        + (
            f" (+{len(report['git'].get('uncommitted', []))} uncommitted files)"
            if report["git"].get("uncommitted")
            else ""
        )
        + f"; {os.cpu_count()} CPUs; {report['seconds'] / 60:.1f} min"
        + ("; --quick: these figures mean nothing" if args.quick else "")
    )
    settings = server_settings.get("ledger_server") or server_settings.get("gateway_server") or {}
    if settings:
        print("server: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print()
    print(format_summary(figures))
    print()
    for name, ok in checks.items():
        print(f"check {name}: {'ok' if ok else 'FAILED'}")
    for name, error in errors.items():
        print(f"ERROR in {name}: {error}")
    print(f"section times (s): {timings}")
    print(f"results: {out}")
    print(f"plots: {', '.join(p.name for p in made)}")
    return 1 if errors or not all(checks.values()) else 0


def integrity(results: dict[str, Any]) -> dict[str, bool]:
    """The correctness checks of every section that ran (a benchmark on a broken ledger means nothing)."""
    checks: dict[str, bool] = {}
    for key in ("ledger", "contention", "ledger+contention"):
        if key in results:
            checks[f"{key}: verify_ledger after every run"] = bool(results[key]["verify_ledger_ok"])
    if "growth" in results:
        checks["growth: verify_ledger after fill and runs"] = bool(results["growth"]["verify_ledger_ok"])
    if "http" in results:
        checks["http: charges match answers, none pending, verify_ledger"] = bool(results["http"]["ok"])
    if "sse" in results:
        checks["sse: every call answered and charged once, verify_ledger"] = bool(results["sse"]["ok"])
    if "openloop_sql" in results:
        checks["openloop sql: verify_ledger"] = results["openloop_sql"].get("verify_ledger_problems") == 0
    if "openloop_http" in results:
        checks["openloop http: charges match answers, verify_ledger"] = bool(results["openloop_http"]["checks"]["ok"])
    return checks


if __name__ == "__main__":
    sys.exit(main())
