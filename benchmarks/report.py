"""Benchmark results and their reports: JSON list, Markdown table, PNG charts.

Every figure is kept beside the ceiling it is judged against (measured in the same run on
the same machine), because absolute numbers drift between machines and runs; the ratio and
the goal are computed here, in one place, so the JSON, the table and the smoke test agree.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Result",
    "label_near",
    "make_result",
    "percent_near",
    "render_markdown",
    "write_charts",
    "write_json",
    "write_markdown",
]


@dataclass
class Result:
    """One reported figure.

    ``ratio`` = value / ceiling_value (None without a ceiling). ``met`` is None when the
    scenario has no goal, else whether ``ratio >= goal_ratio`` and every extra condition in
    ``conditions`` holds (e.g. "never above the bucket in any 1 s window").
    """

    scenario: str
    value: float
    unit: str
    ceiling: str | None = None
    ceiling_value: float | None = None
    ratio: float | None = None
    goal_ratio: float | None = None
    met: bool | None = None
    conditions: dict[str, bool] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_result(
    scenario: str,
    value: float,
    unit: str,
    *,
    ceiling: str | None = None,
    ceiling_value: float | None = None,
    goal_ratio: float | None = None,
    conditions: dict[str, bool] | None = None,
    details: dict[str, Any] | None = None,
    note: str = "",
) -> Result:
    """Build a result and compute its ratio and ``met`` (see ``Result``)."""
    ratio: float | None = None
    if ceiling_value is not None and ceiling_value > 0 and math.isfinite(value):
        ratio = round(value / ceiling_value, 4)
    conds = dict(conditions or {})
    met: bool | None = None
    if goal_ratio is not None:
        met = ratio is not None and ratio >= goal_ratio and all(conds.values())
    elif conds:
        met = all(conds.values())
    return Result(
        scenario=scenario,
        value=round(value, 3) if math.isfinite(value) else value,
        unit=unit,
        ceiling=ceiling,
        ceiling_value=None if ceiling_value is None else round(ceiling_value, 3),
        ratio=ratio,
        goal_ratio=goal_ratio,
        met=met,
        conditions=conds,
        details=dict(details or {}),
        note=note,
    )


def write_json(path: Path, results: Sequence[Result], meta: dict[str, Any] | None = None) -> None:
    """``path`` gets the list of results; the run's metadata goes to ``<stem>.meta.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in results], indent=2, default=str) + "\n")
    if meta is not None:
        path.with_name(path.stem + ".meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def _fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    if digits == 0 and abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:,.{max(digits, 1)}f}" if abs(x) < 100 else f"{x:,.0f}"


def label_near(value: float, reference: float | None, digits: int = 0) -> str:
    """``value`` as ``_fmt`` prints it, with more decimals when that text would equal the
    reference's although the numbers differ: 18.96 against a goal of 19 prints "18.96", not
    "19.0", so a label never rounds a miss into a pass (or a pass into a miss)."""
    text = _fmt(value, digits)
    if reference is None or value == reference or not (math.isfinite(value) and math.isfinite(reference)):
        return text
    ref_text = _fmt(reference, digits)
    decimals = 0 if text.count(".") == 0 else len(text.rsplit(".", 1)[1])
    while text == ref_text and decimals < 6:
        decimals += 1
        text, ref_text = f"{value:,.{decimals}f}", f"{reference:,.{decimals}f}"
    return text


def percent_near(ratio: float, goal: float | None) -> str:
    """``ratio`` in percent, whole unless that would print the goal's figure for a ratio that
    is not the goal (59.96 % against a goal of 60 % prints "59.96 %", not "60 %")."""
    for decimals in range(0, 5):
        text = f"{ratio * 100:.{decimals}f}"
        if goal is None or ratio == goal or text != f"{goal * 100:.{decimals}f}":
            return f"{text} %"
    return f"{ratio * 100:.4f} %"


def _met(r: Result) -> str:
    if r.met is None:
        return "-"
    return "yes" if r.met else "**no**"


def render_markdown(results: Sequence[Result], meta: dict[str, Any] | None = None) -> str:
    """The results as one Markdown table (plus a few lines about the run)."""
    lines = []
    if meta:
        lines.append(
            f"Run {meta.get('date', '')} on {meta.get('machine', '')}; command `{meta.get('command', '')}`; "
            f"wall time {meta.get('wall_time_s', '?')} s."
        )
        if meta.get("generator"):
            lines.append(f"Load generator: {meta['generator']}.")
        lines.append("")
    lines.append("| scenario | value | unit | ceiling | ceiling value | ratio | goal | met | notes |")
    lines.append("|---|---:|---|---|---:|---:|---:|---|---|")
    for r in results:
        ratio = "-" if r.ratio is None else percent_near(r.ratio, r.goal_ratio)
        goal = "-" if r.goal_ratio is None else f"≥ {r.goal_ratio * 100:.0f} %"
        extra: list[str] = []
        if r.conditions:
            extra.extend(f"{k}: {'yes' if v else 'NO'}" for k, v in r.conditions.items())
        if r.note:
            extra.append(r.note)
        notes = "; ".join(extra).replace("|", "/")
        lines.append(
            f"| {r.scenario} | {_fmt(r.value, 1)} | {r.unit} | {r.ceiling or '-'} | {_fmt(r.ceiling_value, 1)} "
            f"| {ratio} | {goal} | {_met(r)} | {notes} |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, results: Sequence[Result], meta: dict[str, Any] | None = None, extra: str = "") -> None:
    """The table (``render_markdown``), then ``extra`` (a scenario's own section)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(results, meta) + extra)


def write_charts(
    folder: Path,
    stem: str,
    sweeps: dict[str, list[dict[str, float]]],
    bars: dict[str, list[tuple[str, float]]] | None = None,
    results: Sequence[Result] = (),
) -> list[Path]:
    """PNG charts: throughput and latency (p50/p99) against offered load for each sweep
    (``{"ingest": [{"offered": rps, "achieved": rps, "p50_ms": ..., "p99_ms": ...}, ...]}``),
    and one bar chart per entry of ``bars`` (label, value). Returns the files written.

    With ``results``: a bar whose value is a result's draws that result's ceiling and goal
    (goal ratio x ceiling) as reference lines and is labelled so that it never rounds to the
    goal's figure; and one more chart, every result with a goal as a share of its ceiling
    next to its goal line (``<stem>-goals.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if sweeps:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
        top = 0.0
        for name, points in sweeps.items():
            pts = sorted(points, key=lambda p: p["offered"])
            xs = [p["offered"] for p in pts]
            top = max([top, *xs, *(p["achieved"] for p in pts)])
            ax1.plot(xs, [p["achieved"] for p in pts], marker="o", label=name)
            ax2.plot(xs, [p["p50_ms"] for p in pts], marker="o", label=f"{name} p50")
            ax2.plot(xs, [p["p99_ms"] for p in pts], marker="^", linestyle="--", label=f"{name} p99")
        ax1.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle=":", label="achieved = offered")
        throughput_lines, latency_goals = _sweep_references(results)
        for (kind, y), text in sorted(throughput_lines.items()):
            ax1.axhline(y, color="grey" if kind == "ceiling" else "#c44e52", linestyle="--", linewidth=1, label=text)
        for y, text in sorted(latency_goals.items()):
            ax2.axhline(y, color="#c44e52", linestyle="--", linewidth=1, label=text)
        ax1.set_xlabel("offered load (requests/s)")
        ax1.set_ylabel("achieved throughput (requests/s)")
        ax1.set_title("Throughput against offered load")
        ax1.grid(alpha=0.3)
        ax1.legend(fontsize=8)
        ax2.set_xlabel("offered load (requests/s)")
        ax2.set_ylabel("latency (ms, log scale)")
        ax2.set_yscale("log")
        ax2.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax2.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax2.set_title("Latency against offered load (open loop)")
        ax2.grid(alpha=0.3, which="both")
        ax2.legend(fontsize=8)
        fig.tight_layout()
        out = folder / f"{stem}-load.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    for title, items in (bars or {}).items():
        if not items:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.2))
        labels = [k for k, _ in items]
        values = [v for _, v in items]
        bars_drawn = ax.bar(labels, values, color="#4c72b0")
        lines: dict[tuple[str, float], str] = {}
        for b, v in zip(bars_drawn, values, strict=True):
            r = _result_of(results, v)
            goal = None
            if r is not None and r.ceiling_value is not None:
                lines[("ceiling", r.ceiling_value)] = f"{r.ceiling or 'ceiling'}: {_fmt(r.ceiling_value, 1)}"
                if r.goal_ratio is not None:
                    goal = r.goal_ratio * r.ceiling_value
                    lines[("goal", goal)] = f"goal ≥ {r.goal_ratio * 100:g} % of ceiling: {_fmt(goal, 1)}"
            ax.annotate(label_near(v, goal), (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=9)
        for (kind, y), text in sorted(lines.items()):
            style = {"ceiling": ("grey", "--"), "goal": ("#c44e52", ":")}[kind]
            ax.axhline(y, color=style[0], linestyle=style[1], linewidth=1.2, label=text)
        if lines:
            ax.legend(fontsize=8, loc="lower right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=9)
        fig.tight_layout()
        slug = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
        while "--" in slug:
            slug = slug.replace("--", "-")
        out = folder / f"{stem}-{slug[:40]}.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    judged = [r for r in results if r.goal_ratio is not None and r.ratio is not None]
    if judged:
        fig, ax = plt.subplots(figsize=(10, 0.55 * len(judged) + 1.6))
        ys = list(range(len(judged)))[::-1]
        shares = [(r.ratio or 0.0) * 100 for r in judged]
        colours = ["#55a868" if r.met else "#c44e52" for r in judged]
        ax.barh(ys, shares, color=colours, height=0.6)
        for y, r, share in zip(ys, judged, shares, strict=True):
            goal = (r.goal_ratio or 0.0) * 100
            ax.plot([goal, goal], [y - 0.4, y + 0.4], color="black", linewidth=2)  # this result's goal
            verdict = "met" if r.met else "NOT met"
            ax.annotate(
                f" {percent_near(r.ratio or 0.0, r.goal_ratio)} (goal ≥ {goal:g} %, {verdict})",
                (share, y),
                va="center",
                fontsize=8,
            )
        ax.axvline(100, color="grey", linestyle="--", linewidth=1, label="ceiling (100 %)")
        ax.plot([], [], color="black", linewidth=2, label="goal")
        ax.set_yticks(ys, [r.scenario[:60] for r in judged], fontsize=8)
        ax.set_xlabel("share of the ceiling (%)")
        ax.set_xlim(0, max([110.0, *(s * 1.35 for s in shares)]))
        ax.set_title("Results against their goals (green: met, red: not met)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: labels stay readable
        fig.tight_layout()
        out = folder / f"{stem}-goals.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written


_P99_GOAL = re.compile(r"p99 <= ([0-9.]+) ms")


def _sweep_references(results: Sequence[Result]) -> tuple[dict[tuple[str, float], str], dict[float, str]]:
    """Reference lines for the load chart: the ceilings (and goal x ceiling) of request-rate
    results judged against a measured ceiling, and p99 latency goals of the form
    ``p99 <= N ms`` from results' conditions."""
    throughput: dict[tuple[str, float], str] = {}
    latency: dict[float, str] = {}
    for r in results:
        if r.unit == "requests/s" and r.ceiling_value and r.ceiling not in (None, "offered load"):
            throughput[("ceiling", r.ceiling_value)] = f"{r.ceiling}: {_fmt(r.ceiling_value, 1)}"
            if r.goal_ratio is not None:
                goal = r.goal_ratio * r.ceiling_value
                throughput[("goal", goal)] = f"goal ≥ {r.goal_ratio * 100:g} % of {r.ceiling}: {_fmt(goal, 1)}"
        for condition in r.conditions:
            m = _P99_GOAL.search(condition)
            if m:
                latency[float(m.group(1))] = f"goal: p99 ≤ {m.group(1)} ms"
    return throughput, latency


def _result_of(results: Sequence[Result], value: float) -> Result | None:
    """The result reporting ``value`` (results keep three decimals), if there is one."""
    return next((r for r in results if math.isfinite(value) and r.value == round(value, 3)), None)
