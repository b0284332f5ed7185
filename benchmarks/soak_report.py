"""The soak's report (issue 18): memory growth per component, the goals, the results table,
the Markdown section and the chart of memory and p99 over time.

Split from ``benchmarks/soak.py``, which runs the soak and samples it; this module only turns
the samples into figures, so it can be tested on made-up samples without running anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.memory import PG_SHARED, product_peaks
from benchmarks.report import make_result

__all__ = [
    "PARTITION_BUDGET_MB",
    "add_results",
    "growth_conditions",
    "growth_table",
    "offered_basis",
    "render_soak_markdown",
    "write_soak_chart",
]

GROWTH_GOAL = 0.10
P99_GOAL = 1.5
# PostgreSQL's resident shared segment is judged against its fixed size, not by growth (it
# fills as buffers are first used); a little over it is dynamic shared memory (parallel query)
SHARED_SLACK = 1.10
# Memory budget of one partition process at peak (docs/soak.md says why this figure).
PARTITION_BUDGET_MB = 256.0


def offered_basis(report: dict[str, Any]) -> str:
    """Where the offered load came from: half of the measured peak, or ``--rate``."""
    peak = f"{report['peak_requests_per_s']:,.0f}/s"
    return f"fixed with --rate; the peak was {peak}" if report.get("fixed_rate") else f"half of the {peak} peak"


def growth_table(samples: list[dict[str, Any]], compare_s: float, seconds: float) -> dict[str, dict[str, float]]:
    """Per component: mean and peak MB in the first and the last ``compare_s``, and the growth
    of the last window's mean over the first window's peak (the level warm-up reached)."""
    first = [s for s in samples if s["t_s"] <= compare_s]
    last = [s for s in samples if s["t_s"] > seconds - compare_s]
    names: list[str] = []
    for s in samples:
        names.extend(k for k in product_peaks(s["rss_mb"]) if k not in names)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        a = [s["rss_mb"][name] for s in first if name in s["rss_mb"]]
        b = [s["rss_mb"][name] for s in last if name in s["rss_mb"]]
        if not a or not b:
            continue
        out[name] = {
            "first_mean_mb": round(sum(a) / len(a), 1),
            "first_peak_mb": round(max(a), 1),
            "last_mean_mb": round(sum(b) / len(b), 1),
            "last_peak_mb": round(max(b), 1),
            "growth_pct": round(100.0 * (sum(b) / len(b) / max(a) - 1.0), 1),
            "peak_mb": round(max(s["rss_mb"].get(name, 0.0) for s in samples), 1),
        }
    return out


def growth_conditions(growth: dict[str, dict[str, float]], shared_mb: float | None) -> dict[str, bool]:
    """The goal per component: growth ≤ 10 %, except PostgreSQL's shared segment, which must
    stay within its fixed size (``shared_mb``; it fills as buffers are first used)."""
    out: dict[str, bool] = {}
    for k, g in growth.items():
        if k == PG_SHARED and shared_mb:
            out[f"{k} ≤ its size {shared_mb:.0f} MB (+{(SHARED_SLACK - 1) * 100:.0f} %)"] = (
                g["peak_mb"] <= shared_mb * SHARED_SLACK
            )
        else:
            out[f"{k} ≤ {GROWTH_GOAL * 100:.0f} %"] = g["growth_pct"] <= GROWTH_GOAL * 100
    return out


def add_results(ctx: Any, report: dict[str, Any]) -> None:
    growth = report["growth"]
    minutes = report["compare_minutes"]
    judged = {k: g for k, g in growth.items() if k != PG_SHARED}
    worst = max(judged.items(), key=lambda kv: kv[1]["growth_pct"], default=None)
    ctx.add(
        make_result(
            f"Soak: RSS growth, last {minutes:g} min over the first {minutes:g} min (worst component)",
            worst[1]["growth_pct"] if worst else 0.0,
            "%",
            conditions=growth_conditions(growth, report.get("shared_memory_size_mb")),
            details={
                "growth": growth,
                "minutes": report["minutes"],
                "shared_memory_size_mb": report.get("shared_memory_size_mb"),
                "peak_rss_mb": _peak_rss(growth),
            },
            note=f"worst {worst[0]}; table in the soak section" if worst else "no samples",
        )
    )
    lat = report["latency"]
    ratio = lat["p99_ratio"]
    ctx.add(
        make_result(
            f"Soak: p99 of the last {minutes:g} min over the first {minutes:g} min",
            ratio if ratio is not None else float("nan"),
            "x",
            conditions={f"≤ {P99_GOAL}x": ratio is not None and ratio <= P99_GOAL},
            details={**lat, "peak_rss_mb": _peak_rss(growth)},
            note=f"offered {report['offered_requests_per_s']:,.0f} requests/s ({offered_basis(report)}) "
            f"for {report['minutes']:g} min; "
            f"p99 {lat['first']['p99_ms']} → {lat['last']['p99_ms']} ms, "
            f"p50 {lat['first']['p50_ms']} → {lat['last']['p50_ms']} ms",
        )
    )
    eo = report["exactly_once"]
    ctx.add(
        make_result(
            "Soak: every acknowledged event stored exactly once",
            float(eo["ledger_rows"]),
            "ledger rows",
            conditions={
                "ledger rows = events answered 202": eo["every_ack_stored"],
                "event rows = non-heartbeat events answered 202": eo["event_rows_match"],
                "no event stored twice": eo["no_event_twice"],
                "every answer as expected": not eo["unexpected_answers"],
            },
            details={**eo, "peak_rss_mb": _peak_rss(growth)},
            note=f"{eo['acknowledged']:,} answered 202 ({eo['acknowledged_with_event_row']:,} with an event row), "
            f"{eo['unanswered']} unanswered; {eo['sessions']:,} sessions ({eo['returning_sessions']:,} returning)"
            + (f"; unexpected {eo['unexpected_answers']}" if eo["unexpected_answers"] else ""),
        )
    )
    up = report["uploads"]
    if "emulator_conversions" in up:
        ctx.add(
            make_result(
                "Soak: sealed conversions delivered to the emulator, each once",
                float(up["emulator_conversions"]),
                "conversions",
                ceiling="enqueued by seals",
                ceiling_value=float(up["enqueued"]),
                goal_ratio=1.0,
                conditions={
                    "no order delivered twice": up["orders_twice"] == 0,
                    "queue drained": up["queue_after_drain"]["waiting"] == 0,
                },
                details={**up, "peak_rss_mb": _peak_rss(growth)},
                note=f"{up['sealed']} sealed, {up['enqueued']} enqueued, {up['completed_rows']} rows COMPLETED; "
                f"queue after the drain {up['queue_after_drain']['by_status']}",
            )
        )
    # the highest of the wrk peak (1 s samples) and the soak's samples, per partition
    at_peak = report.get("rss_mb_at_peak", {})
    parts = {k: max(at_peak.get(k, 0.0), g["peak_mb"]) for k, g in growth.items() if k.startswith("partition")}
    if parts:
        top = max(parts.values())
        ctx.add(
            make_result(
                "Soak: partition memory at the peak and at half load (peak RSS)",
                top,
                "MB",
                conditions={f"≤ budget {PARTITION_BUDGET_MB:.0f} MB": top <= PARTITION_BUDGET_MB},
                details={
                    "peak_mb": parts,
                    "at_peak_mb": {k: v for k, v in at_peak.items() if k.startswith("partition")},
                    "budget_mb": PARTITION_BUDGET_MB,
                    "peak_rss_mb": _peak_rss(growth),
                },
                note=", ".join(f"{k} {v:,.0f} MB" for k, v in parts.items())
                + f"; budget {PARTITION_BUDGET_MB:.0f} MB (docs/soak.md)",
            )
        )


def _peak_rss(growth: dict[str, dict[str, float]]) -> dict[str, float]:
    return {k: g["peak_mb"] for k, g in growth.items()}


def render_soak_markdown(report: dict[str, Any], png: str | None) -> str:
    """The soak's own section of the Markdown report: growth per component, latency, checks."""
    minutes = report["compare_minutes"]
    lines = [
        "",
        f"## Soak: {report['minutes']:g} min at {report['offered_requests_per_s']:,.0f} requests/s "
        f"({offered_basis(report)})",
        "",
    ]
    if png:
        lines += [f"![memory and p99 over time]({png})", ""]
    lines += [
        f"| component | first {minutes:g} min mean | first {minutes:g} min peak | last {minutes:g} min mean "
        "| growth | peak |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, g in report["growth"].items():
        lines.append(
            f"| {name} | {g['first_mean_mb']:,.1f} MB | {g['first_peak_mb']:,.1f} MB | {g['last_mean_mb']:,.1f} MB "
            f"| {g['growth_pct']:+.1f} % | {g['peak_mb']:,.1f} MB |"
        )
    lat = report["latency"]
    lines += [
        "",
        f"Latency: first {minutes:g} min p50 {lat['first']['p50_ms']} ms / p99 {lat['first']['p99_ms']} ms; "
        f"last {minutes:g} min p50 {lat['last']['p50_ms']} ms / p99 {lat['last']['p99_ms']} ms "
        f"(p99 ratio {lat['p99_ratio']}).",
    ]
    eo = report["exactly_once"]
    lines.append(
        f"Exactly once: {eo['acknowledged']:,} events answered 202, {eo['ledger_rows']:,} ledger rows; "
        f"{eo['acknowledged_with_event_row']:,} non-heartbeat 202s, {eo['event_rows']:,} event rows, "
        f"{eo['distinct_event_ids']:,} distinct event ids; {eo['unanswered']} unanswered."
    )
    up = report["uploads"]
    if "emulator_conversions" in up:
        lines.append(
            f"Uploads ({up.get('destination', 'default destination')}): {up['sealed']} intents sealed, "
            f"{up['enqueued']} conversions enqueued, "
            f"{up['emulator_conversions']} at the emulator ({up['orders_twice']} orders twice)."
        )
    if report["samples"]:
        queued = [s.get("batcher_queued_events", 0) for s in report["samples"]]
        inflight = [s.get("batcher_inflight_calls", 0) for s in report["samples"]]
        lines.append(
            f"Queue depth (micro-batchers, summed over partitions, at each sample): events waiting "
            f"max {max(queued):,}, mean {sum(queued) / len(queued):,.1f}; calls in flight max {max(inflight)}."
        )
        backends = [s["pg_backends"] for s in report["samples"] if "pg_backends" in s]
        if backends:
            lines.append(
                f"PostgreSQL client backends: {backends[0]} at the first sample, {backends[-1]} at the last, "
                f"at most {max(backends)}."
            )
        uq = report["uploads"].get("queue_after_drain", {}).get("by_status")
        if uq is not None:
            lines.append(f"Upload queue after the drain, by state: {uq or 'empty'}.")
        if report.get("shared_memory_size_mb"):
            lines.append(
                f"PostgreSQL's shared segment is {report['shared_memory_size_mb']:g} MB "
                f"(`shared_memory_size`); `{PG_SHARED}` is the part of it resident."
            )
        at_peak = report.get("rss_mb_at_peak")
        if at_peak:
            lines.append(
                "Memory during the wrk peak (1 s samples): "
                + ", ".join(f"{k} {v:,.0f} MB" for k, v in at_peak.items())
                + "."
            )
        last = report["samples"][-1]
        tables = ", ".join(f"{k} {v['table_mb'] + v['index_mb']:,.1f} MB" for k, v in last.get("tables", {}).items())
        lines.append(f"Tables with their indexes at the end: {tables}.")
        memos = last.get("partition_memo_entries", {})
        if memos:
            lines.append(
                "Partition memo entries at the end: " + ", ".join(f"{k} {v:,}" for k, v in memos.items()) + "."
            )
    for n in report.get("notes", []):
        lines.append(f"Note: {n}")
    return "\n".join(lines) + "\n"


def write_soak_chart(path: Path, report: dict[str, Any]) -> Path | None:
    """One PNG: memory per component (top) and p50/p99 (bottom) over time."""
    samples = report["samples"]
    if not samples:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    xs = [s["t_s"] / 60.0 for s in samples]
    for name in report["growth"]:
        ax1.plot(xs, [s["rss_mb"].get(name) for s in samples], label=name)
    ax1.set_ylabel("resident memory (MB, log scale; PostgreSQL: PSS)")
    ax1.set_yscale("log")
    ax1.set_title(
        f"Soak: {report['offered_requests_per_s']:,.0f} requests/s for {report['minutes']:g} min (memory per component)"
    )
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8, ncol=3)
    ax2.plot(xs, [s["load"].get("p99_ms") for s in samples], label="p99", color="#c44e52")
    ax2.plot(xs, [s["load"].get("p50_ms") for s in samples], label="p50", color="#4c72b0")
    ax2.set_ylabel("latency per 10 s window (ms)")
    ax2.set_xlabel("minutes")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
