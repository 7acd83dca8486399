"""The PNG plots of bench/harness.py (matplotlib, Agg backend: no display needed).

Each function draws one figure from the harness's section reports and returns the file it wrote, or
None when its section did not run. bench/README.md ("make bench") explains how to read each one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

VERDICT_COLOURS = {"PASS": "tab:green", "MISS": "tab:red", None: "tab:gray"}


RATIO_CLIP = 2.5


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ratios(figures: list[dict[str, Any]], out_dir: Path) -> Path | None:
    """Every ratio, with its target as a black tick: green bars met it, red missed, grey have none."""
    rows = [f for f in figures if f["ratio"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * len(rows) + 2), 5))
    x = list(range(len(rows)))
    # Ratios far above 1 (a latency that fell) would flatten every other bar: the axis stops at CLIP and
    # such bars are drawn to it, labelled with their real value.
    top = min(max(f["ratio"] for f in rows) * 1.1, RATIO_CLIP)
    ax.bar(x, [min(f["ratio"], top) for f in rows], color=[VERDICT_COLOURS[f["verdict"]] for f in rows])
    for i, f in enumerate(rows):
        if f["target"] is not None:
            ax.hlines(f["target"], i - 0.4, i + 0.4, colors="black", linewidth=2)
        label = f"{f['ratio']:.2f}" + (" (clipped)" if f["ratio"] > top else "")
        ax.text(i, min(f["ratio"], top), label, ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, top * 1.08)
    ax.axhline(1.0, color="gray", linewidth=0.6, linestyle=":")
    ax.set_xticks(x, [f"{f['name']}\nvs {f['baseline']}" for f in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ratio to its baseline (same run)")
    ax.set_title("Ratios vs targets (black tick = target; green PASS, red MISS, grey context)")
    return _save(fig, out_dir / "ratios.png")


def ledger_latency(report: dict[str, Any], out_dir: Path) -> Path | None:
    """pgbench per-transaction latency percentiles of every ledger scenario (medians over the rounds)."""
    rows = [s for s in report["summary"] if s.get("latency_percentiles_ms")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(rows) + 2), 4.5))
    width = 0.27
    for k, (point, colour) in enumerate((("p50", "tab:blue"), ("p95", "tab:orange"), ("p99", "tab:red"))):
        ax.bar(
            [i + (k - 1) * width for i in range(len(rows))],
            [s["latency_percentiles_ms"][point] for s in rows],
            width,
            label=point,
            color=colour,
        )
    ax.set_xticks(range(len(rows)), [s["scenario"] for s in rows], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("ms per transaction (pgbench -l)")
    ax.set_yscale("log")
    ax.set_title("Ledger scenarios: latency percentiles (closed loop, pgbench)")
    ax.legend()
    return _save(fig, out_dir / "ledger_latency.png")


def contention(report: dict[str, Any], out_dir: Path) -> Path | None:
    """reserve + settle and the baseline at 8/32/64 clients: tps (left), p50/p99 latency (right)."""
    by_name = {s["scenario"]: s for s in report["summary"]}
    series = {"baseline_10k": "baseline (1 statement)", "reserve_settle_10k": "reserve + settle (pair)"}
    points: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for prefix in series:
        for name, s in by_name.items():
            if name == prefix or name.startswith(prefix + "_c"):
                points.setdefault(prefix, []).append((s["clients"], s))
    if len(points.get("reserve_settle_10k", [])) < 2:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for (prefix, label), colour in zip(series.items(), ("tab:gray", "tab:blue"), strict=True):
        rows = sorted(points.get(prefix, []), key=lambda p: p[0])
        clients = [c for c, _ in rows]
        left.plot(clients, [s["tps_median"] for _, s in rows], marker="o", label=label, color=colour)
        pct = [s.get("latency_percentiles_ms") or {} for _, s in rows]
        right.plot(clients, [p.get("p50") for p in pct], marker="o", label=f"{label} p50", color=colour)
        right.plot(clients, [p.get("p99") for p in pct], marker="^", linestyle="--", label=f"{label} p99", color=colour)
    rs = sorted(points["reserve_settle_10k"], key=lambda p: p[0])
    for n, s in rs:
        if s.get("ratio") is not None:
            left.annotate(f"{s['ratio']:.2f}x", (n, s["tps_median"]), textcoords="offset points", xytext=(0, 6))
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks([c for c, _ in rs], [str(c) for c, _ in rs])
        ax.set_xlabel("pgbench clients (10,000 users)")
        ax.legend(fontsize=8)
    left.set_ylabel("tps (median over rounds)")
    left.set_title("Throughput vs clients (labels: ratio to the baseline)")
    right.set_ylabel("ms per transaction")
    right.set_title("Latency vs clients")
    return _save(fig, out_dir / "contention.png")


def growth(report: dict[str, Any], out_dir: Path) -> Path | None:
    """Charge tps (left) and history page latency (right, p50 solid, p99 dotted) vs ledger rows."""
    rows = sorted(report["summary"], key=lambda r: r["rows"])
    xs = [r["rows"] for r in rows]
    labels = [r["label"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(xs, [r["charge_tps_median"] for r in rows], marker="o", label="billing.charge (pgbench, 8 clients)")
    base = rows[0]["charge_tps_median"]
    left.axhline(base * report["target"], color="black", linestyle=":", label=f"target: {report['target']} x tps at 0")
    left.set_ylim(bottom=0)
    left.set_ylabel("tps (median over rounds)")
    left.set_title("Charge throughput vs ledger size")
    pages = {"first_page": "first page", "deep_keyset": "10,000 deep, keyset", "deep_offset": "10,000 deep, offset"}
    for page, label in pages.items():
        line = right.plot(xs, [r["history_ms"][page]["p50"] for r in rows], marker="o", label=f"{label} p50")
        right.plot(xs, [r["history_ms"][page]["p99"] for r in rows], linestyle=":", color=line[0].get_color())
    right.set_yscale("log")
    right.set_ylabel("ms per billing.history call (limit 50)")
    right.set_title("History page latency vs ledger size (dotted: p99)")
    for ax in (left, right):
        ax.set_xticks(xs, labels)
        ax.set_xlabel("ledger rows added (10,000 users + bench-history's 20,000)")
        ax.legend(fontsize=8)
    return _save(fig, out_dir / "growth.png")


def http(report: dict[str, Any], out_dir: Path) -> Path | None:
    """Req/s per mode (left) and latency percentiles per mode (right), closed loop (wrk or loadgen)."""
    summary = report["summary"]
    modes = [m for m in ("unmetered", "billed", "key") if m in summary]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.bar(modes, [summary[m]["rps"] for m in modes], color=["tab:gray", "tab:blue", "tab:purple"][: len(modes)])
    for i, m in enumerate(modes):
        if m != "unmetered":
            ratio = report["ratios"][f"{m}/unmetered"]
            left.text(i, summary[m]["rps"], f"{ratio:.2f}x", ha="center", va="bottom")
    target = report.get("target_billed_unmetered")
    if target:
        left.axhline(
            summary["unmetered"]["rps"] * target, color="black", linestyle=":", label=f"billed target {target}x"
        )
        left.legend(fontsize=8)
    left.set_ylabel("req/s (median over rounds)")
    left.set_title(f"Tool calls over HTTP ({report['settings']['connections']} connections)")
    points = [p for p in ("p50_ms", "p95_ms", "p99_ms") if all(summary[m].get(p) is not None for m in modes)]
    width = 0.8 / len(points)
    for k, point in enumerate(points):
        right.bar(
            [i + (k - (len(points) - 1) / 2) * width for i in range(len(modes))],
            [summary[m][point] for m in modes],
            width,
            label=point[:-3],
        )
    right.set_xticks(range(len(modes)), modes)
    right.set_ylabel("ms")
    right.set_title("Latency (closed loop)")
    right.legend(fontsize=8)
    return _save(fig, out_dir / "http.png")


def sse(report: dict[str, Any], out_dir: Path) -> Path | None:
    """The gateway's RSS with N sessions open (left) and KiB per session (right), per mode."""
    rows = report["rows"]
    if not rows:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for mode in ("billed", "anonymous"):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["sessions"])
        if not mine:
            continue
        ns = [r["sessions"] for r in mine]
        left.plot(ns, [r["rss_with_sessions_mib"] for r in mine], marker="o", label=f"{mode}: all open")
        left.plot(ns, [r["rss_after_close_mib"] for r in mine], marker="x", linestyle=":", label=f"{mode}: after close")
        right.plot(ns, [r["kib_per_session"] for r in mine], marker="o", label=mode)
    left.set_xlabel("concurrent SSE sessions (one worker)")
    left.set_ylabel("gateway RSS, MiB")
    left.set_title("Memory vs sessions")
    right.set_xlabel("concurrent SSE sessions (one worker)")
    right.set_ylabel("KiB per session ((RSS open - RSS before) / N)")
    right.set_ylim(bottom=0)
    right.set_title("Memory per session")
    for ax in (left, right):
        ax.legend(fontsize=8)
    return _save(fig, out_dir / "sse.png")


def openloop(sql: dict[str, Any], http_: dict[str, Any], out_dir: Path) -> Path | None:
    """One panel per path: p50/p95/p99 (from the scheduled start) vs offered load; the closed-loop
    figures at the right edge ("max") for comparison."""
    paths = [(f"SQL {k}", v) for k, v in sql.get("kinds", {}).items()]
    paths += [(f"HTTP {k}", v) for k, v in http_.get("modes", {}).items()]
    if not paths:
        return None
    fig, axes = plt.subplots(1, len(paths), figsize=(4.2 * len(paths), 4.2), squeeze=False)
    for ax, (name, result) in zip(axes[0], paths, strict=True):
        steps = result["steps"]
        xs = [s["offered_rps"] for s in steps]
        for point, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            ax.plot(xs, [s["latency_ms"].get(point) for s in steps], style, label=point)
        closed = result["closed_loop"]["latency_ms"]
        ax.scatter(
            [result["max_rps"]] * 2,
            [closed.get("p50"), closed.get("p99")],
            marker="*",
            color="black",
            label="closed loop p50/p99 at max",
        )
        ax.set_yscale("log")
        ax.set_xlabel("offered load, requests/s")
        ax.set_ylabel("ms from scheduled start")
        ax.set_title(f"{name} (max {result['max_rps']:,.0f}/s)", fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, out_dir / "openloop.png")


def make_all(results: dict[str, Any], figures: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    made: list[Path | None] = [ratios(figures, out_dir)]
    ledger_report = results.get("ledger+contention") or results.get("ledger") or results.get("contention")
    if ledger_report:
        made += [ledger_latency(ledger_report, out_dir), contention(ledger_report, out_dir)]
    if "growth" in results:
        made.append(growth(results["growth"], out_dir))
    if "http" in results:
        made.append(http(results["http"], out_dir))
    if "sse" in results:
        made.append(sse(results["sse"], out_dir))
    made.append(openloop(results.get("openloop_sql", {}), results.get("openloop_http", {}), out_dir))
    return [p for p in made if p is not None]
