"""What the benchmark scenarios share: the run context, constants, closed-loop peaks paired
with ceiling runs, open-loop sweeps and the CPU notes.

The scenarios themselves are in ``ceiling_scenarios``, ``ingest_scenarios`` and
``upload_scenarios``; ``scenarios`` lists them and runs them in order.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import probes
from benchmarks.cpu import CpuSampler, wait_for_quiet
from benchmarks.memory import MemorySampler, peaks_note, product_peaks
from benchmarks.openloop import OpenLoopResult, run_open_loop
from benchmarks.payloads import SiteRef
from benchmarks.report import Result
from benchmarks.stack import REPO, ServeStack, free_port, wait_http
from benchmarks.store_ceiling import StoreCeiling
from benchmarks.timeline import Timeline
from benchmarks.timeline import windows as machine_windows
from benchmarks.wrk import WrkResult, run_wrk

__all__ = [
    "BATCH_CONNECTIONS",
    "BATCH_CONNECTION_GRID",
    "BATCH_SIZE",
    "JUDGED_FRACTION",
    "JUDGED_POINT_S",
    "LOAD_FRACTIONS",
    "SINGLE_CONNECTIONS",
    "SINGLE_CONNECTION_GRID",
    "SITES",
    "Context",
    "Peak",
    "StorePair",
    "best_connections",
    "bg_note",
    "ceiling_server",
    "connections_note",
    "cpu_details",
    "cpu_note",
    "errors_note",
    "generator_kept_up",
    "measure_peak",
    "pick_connections",
    "run_id",
    "stack_markers",
    "sweep",
    "window_note",
]

LOAD_FRACTIONS = (0.25, 0.5, 1.0)
# The 50 % point, whose p99 is judged, runs a minute; the others 10 s. On this kind of machine
# the disk now and then holds every commit for 50-200 ms: one such stall in a 10 s point
# decides its p99 alone (it delays ~1 % of the requests), so a 10 s p99 says mostly whether
# a stall happened to fall inside it. Over a minute the p99 says how often they come. The
# point also records the p99 of each of its 10 s windows.
JUDGED_FRACTION = 0.5
JUDGED_POINT_S = 60.0
SINGLE_CONNECTIONS = 64
# A closed loop of n connections does at most n requests per latency. The HTTP ceiling answers
# from its own CPU and is at its peak with 64; a product request waits for its partition's call
# and commit, so with 64 it is bound by that latency while a third of the machine idles. Each
# single-event peak (the ceiling's and the product's) runs at the best of these counts.
SINGLE_CONNECTION_GRID = (64, 128, 256)
BATCH_CONNECTIONS = 16
# The same for 50-event batches, whose events wait in the gateway for their partition's call:
# with 16 connections at most 800 events are in flight, so a call carries ~200 of them; with
# 64 a call can fill up to OPSMANTIK_BATCH_MAX_EVENTS and its fixed cost is shared by more.
# The product's batch peaks run at the better of these counts (the store ceiling likewise
# runs at the best batch size and connection count of its grid).
BATCH_CONNECTION_GRID = (16, 64)
BATCH_SIZE = 50
SITES = 8


@dataclass
class Context:
    quick: bool
    wrk: str | None
    out_dir: Path
    stem: str
    profile: bool = True
    results: list[Result] = field(default_factory=list)
    sweeps: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    bars: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    ceilings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    # events answered 2xx "accepted" on the current ingest stack (every run, warm-ups too)
    acked: int = 0
    # RSS by component, sampled each second while a scenario runs (peaks reset per scenario)
    memory: MemorySampler | None = None
    # scenario step -> peak MB per component
    peak_rss_mb: dict[str, dict[str, float]] = field(default_factory=dict)
    # extra options of single scenarios (the soak's --minutes)
    options: dict[str, Any] = field(default_factory=dict)
    # the soak's report (samples, growth, checks), when it ran
    soak: dict[str, Any] | None = None

    def seconds(self, full: float) -> float:
        return 3.0 if self.quick else full

    def add(self, r: Result) -> None:
        if self.memory is not None and "peak_rss_mb" not in r.details:
            # the peaks of the scenario so far (its stack's life up to this figure)
            self.memory.sample()
            peaks = product_peaks(self.memory.peaks_mb())
            if peaks:
                r.details["peak_rss_mb"] = peaks
                r.note = "; ".join(x for x in (r.note, peaks_note(peaks)) if x)
        self.results.append(r)
        ratio = "" if r.ratio is None else f"  ({r.ratio * 100:.0f} % of {r.ceiling})"
        met = "" if r.met is None else ("  goal met" if r.met else "  GOAL NOT MET")
        print(f"  -> {r.scenario}: {r.value:,.1f} {r.unit}{ratio}{met}", flush=True)


def bg_note(ctx: Context, key: str) -> str:
    """A note on background load when other processes used a noticeable share of the CPU."""
    bg = ctx.cpu.get(key, {}).get("background (not this benchmark)", 0.0)
    return f"; background load {bg:.0f} % of a core" if bg >= 10 else ""


def errors_note(res: WrkResult) -> str:
    """A note listing answers other than 202 (status:error code), if any."""
    other = {k: v for k, v in res.statuses.items() if k != "202"}
    return "; answers " + ", ".join(f"{v} x {k}" for k, v in sorted(other.items())) if other else ""


def run_id() -> str:
    return uuid.uuid4().hex[:8]


def stack_markers(stack: ServeStack) -> tuple[str, ...]:
    """What tells this stack's processes apart in the CPU sampler: its data folder."""
    return (str(stack.data_dir),)


@dataclass
class Peak:
    """Repeated closed-loop peaks of one kind: every run, and the median one (by 2xx/s)."""

    runs: list[WrkResult]
    cpu: list[dict[str, float]]
    inside: list[dict[str, Any]]  # partition calls, events per call, commits (product stacks)
    # the ceiling measured just before each run (paired runs), in the runs' order
    paired: list[float] = field(default_factory=list)

    @property
    def paired_median(self) -> float | None:
        return sorted(self.paired)[len(self.paired) // 2] if self.paired else None

    def judging_ceiling(self, scenario_ceiling: float | None) -> float | None:
        """The ceiling a goal is judged against: the higher of the ceiling scenario's median
        and the median of the paired runs. Pairing shows the drift beside each run but never
        makes a ratio better: after the product's own runs the machine has been slower for
        the ceiling too (the store ceiling halved in one run; a sync of dirty pages before each
        run did not change that, docs/performance.md), and a ceiling taken then would flatter
        the product."""
        known = [v for v in (scenario_ceiling, self.paired_median) if v]
        return max(known) if known else None

    def paired_note(self, unit: str) -> str:
        if not self.paired:
            return ""
        each = " / ".join(f"{v:,.0f}" for v in self.paired)
        return f"; ceiling measured just before each run: {each} {unit} (median {self.paired_median:,.0f})"

    @property
    def median(self) -> WrkResult:
        return self.runs[self._median_index]

    @property
    def median_cpu(self) -> dict[str, float]:
        return self.cpu[self._median_index]

    @property
    def median_inside(self) -> dict[str, Any]:
        return self.inside[self._median_index] if self.inside else {}

    @property
    def _median_index(self) -> int:
        order = sorted(range(len(self.runs)), key=lambda i: self.runs[i].ok_rps)
        return order[len(order) // 2]

    def spread(self, scale: float = 1.0) -> dict[str, float]:
        rates = sorted(r.ok_rps * scale for r in self.runs)
        return {"min": round(rates[0], 1), "median": round(rates[len(rates) // 2], 1), "max": round(rates[-1], 1)}

    def spread_note(self, scale: float = 1.0) -> str:
        sp = self.spread(scale)
        return f"median of {len(self.runs)} runs (min {sp['min']:,.0f}, max {sp['max']:,.0f})"


def measure_peak(
    ctx: Context,
    base: str,
    sites: list[SiteRef],
    *,
    batch: int,
    seconds: float,
    connections: int,
    markers: tuple[str, ...],
    cpu_key: str,
    repeats: int = 3,
    stack: ServeStack | None = None,
    pair: Callable[[], float] | None = None,
    pair_markers: tuple[str, ...] = (),
) -> Peak:
    """Closed-loop peaks with wrk (a short warm-up first), ``repeats`` times; CPU by component
    recorded for each run, and, on a product stack, what happened inside (partition calls,
    events per call, commits).

    Without wrk, the Python open-loop generator offers far more than the server can take and
    its achieved rate stands in for the peak (the report then says the generator may be
    the limit).

    With ``pair``, the ceiling is measured again right before each run and kept beside it
    (``Peak.paired``): the machine's speed drifts over minutes, and the report shows by how
    much next to each run. Goals are judged against the higher of the two ceilings
    (``Peak.judging_ceiling``)."""
    paired: list[float] = []
    if ctx.quick:
        repeats = 1
    runs: list[WrkResult] = []
    cpus: list[dict[str, float]] = []
    inside: list[dict[str, Any]] = []
    if ctx.wrk is not None:
        warm = run_wrk(
            ctx.wrk, base, sites, run=run_id(), batch=batch, seconds=min(3.0, seconds), connections=connections
        )
        ctx.acked += warm.count(202) * max(1, batch)
    for k in range(repeats):
        if pair is not None:
            wait_for_quiet(markers + pair_markers)
            paired.append(pair())
            wait_for_quiet(markers + pair_markers)
        else:
            wait_for_quiet(markers)
        before = probes.snapshot(base, stack) if stack is not None else None
        sampler = CpuSampler(markers)
        sampler.start()
        if ctx.wrk is None:
            port = int(base.rsplit(":", 1)[1])
            p = run_open_loop(
                "127.0.0.1",
                port,
                sites,
                rate=8000.0 / max(1, batch // 10 or 1),
                seconds=seconds,
                run=run_id(),
                batch=batch,
                drain_s=5.0,
            )
            res = WrkResult(
                requests=p.completed,
                duration_s=seconds,
                statuses=p.statuses,
                errors={},
                p50_ms=p.p50_ms,
                p90_ms=p.p90_ms,
                p99_ms=p.p99_ms,
                max_ms=p.max_ms,
            )
        else:
            res = run_wrk(ctx.wrk, base, sites, run=run_id(), batch=batch, seconds=seconds, connections=connections)
        cpu = sampler.stop()
        ctx.acked += res.count(202) * max(1, batch)
        runs.append(res)
        cpus.append(cpu)
        if before is not None:
            inside.append(probes.diff(before, probes.snapshot(base, stack), res.duration_s))
        units = res.ok_rps * max(1, batch)
        print(
            f"     run {k + 1}/{repeats}: {units:,.0f} {'events' if batch else 'requests'}/s, "
            f"p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms"
            + (f", {inside[-1]['events_per_call_mean']} events/call" if inside else ""),
            flush=True,
        )
    peak = Peak(runs=runs, cpu=cpus, inside=inside, paired=paired)
    ctx.cpu[cpu_key] = peak.median_cpu
    if ctx.wrk is None:
        ctx.notes.append(f"{cpu_key}: measured with the Python generator (no wrk); it may not outrun the server.")
    return peak


def pick_connections(
    ctx: Context,
    base: str,
    sites: list[SiteRef],
    *,
    seconds: float,
    markers: tuple[str, ...],
    grid: tuple[int, ...] = SINGLE_CONNECTION_GRID,
    batch: int = 0,
    again: bool = True,
) -> tuple[int, dict[int, float]]:
    """The connection count of ``grid`` at which requests to ``base`` (single events, or
    ``batch`` events each) ran fastest, and every count's mean rate in requests/s: one wrk
    run of ``seconds`` at each count, then, with ``again``, one more at each of the two
    fastest (``best_connections``). ``--quick`` runs and runs without wrk take the first
    count."""
    if ctx.quick or ctx.wrk is None:
        return grid[0], {}
    wrk = ctx.wrk
    runs: dict[int, list[float]] = {}

    def run(connections: int) -> None:
        wait_for_quiet(markers)
        res = run_wrk(wrk, base, sites, run=run_id(), batch=batch, seconds=seconds, connections=connections)
        ctx.acked += res.count(202) * max(1, batch)
        runs.setdefault(connections, []).append(res.ok_rps)
        print(f"     {connections} connections: {res.ok_rps:,.0f} requests/s, p50 {res.p50_ms:.1f} ms", flush=True)

    for connections in grid:
        run(connections)
    for connections in sorted(runs, key=lambda c: runs[c][0], reverse=True)[:2] if again else []:
        run(connections)
    return best_connections(runs), {c: sum(v) / len(v) for c, v in runs.items()}


def best_connections(runs: dict[int, list[float]]) -> int:
    """The count whose runs have the highest mean rate. One run each picked by chance: a
    stack's grid run at 128 connections gave 9,745 requests/s, and the judged runs that
    followed at that count 6,271-7,724, with smaller partition calls and more CPU per
    request than at 256 (docs/performance.md); so the two fastest counts of the grid run
    once more, and their means decide."""
    return max(runs, key=lambda c: sum(runs[c]) / len(runs[c]))


def connections_note(
    best: int, rates: dict[int, float], *, per_request: int = 1, unit: str = "requests/s", again: bool = True
) -> str:
    """``at 128 connections (64 / 128 / 256: 4,010 / 5,690 / 5,540 requests/s, ...)``; with
    ``per_request`` events per request and ``unit`` "events/s", the rates in events/s."""
    if not rates:
        return f"at {best} connections"
    counts = " / ".join(str(c) for c in rates)
    values = " / ".join(f"{v * per_request:,.0f}" for v in rates.values())
    runs = "the two fastest the mean of two runs" if again else "one run each"
    return f"at {best} connections ({counts}: {values} {unit}; {runs})"


def cpu_details(cpu: dict[str, float], units_per_s: float, unit: str) -> dict[str, Any]:
    """CPU % of one core and CPU ms per request/event by component."""
    return {"cpu_percent": cpu, f"cpu_ms_per_{unit}": probes.cpu_ms_per_unit(cpu, units_per_s)}


def cpu_note(cpu: dict[str, float], units_per_s: float, unit: str) -> str:
    """The three biggest components in CPU ms per unit."""
    per = probes.cpu_ms_per_unit(cpu, units_per_s)
    top = sorted(((v, k) for k, v in per.items() if not k.startswith("background")), reverse=True)[:4]
    return f"CPU ms per {unit}: " + ", ".join(f"{k} {v:.3f}" for v, k in top)


def sweep(
    ctx: Context,
    port: int,
    sites: list[SiteRef],
    peak_rps: float,
    seconds: float,
    name: str,
    markers: tuple[str, ...],
    stack: ServeStack | None = None,
) -> list[tuple[OpenLoopResult, dict[str, Any]]]:
    """Open-loop points at 25/50/100 % of ``peak_rps`` (``seconds`` each; the judged 50 % point
    ``JUDGED_POINT_S``, with the p99 of each of its 10 s windows); on a product stack each
    point also says what happened inside (partition calls, events per call, commits)."""
    points = []
    base = f"http://127.0.0.1:{port}"
    for frac in LOAD_FRACTIONS:
        judged = frac == JUDGED_FRACTION
        length = ctx.seconds(JUDGED_POINT_S) if judged else seconds
        wait_for_quiet(markers)
        before = probes.snapshot(base, stack) if stack is not None else None
        sampler = CpuSampler(markers)
        sampler.start()
        # the judged point's machine, second by second: what a bad 10 s window coincided with
        timeline = Timeline(markers, stack.db_url if stack is not None else None) if judged else None
        if timeline is not None:
            timeline.start()
        r = run_open_loop(
            "127.0.0.1", port, sites, rate=max(1.0, peak_rps * frac), seconds=length, run=run_id(), series=judged
        )
        ctx.cpu[f"{name} open loop {int(frac * 100)} %"] = sampler.stop()
        if timeline is not None:
            samples = timeline.stop()
            if r.series and r.window_p99_ms:
                r.window_machine = machine_windows(samples, r.series[0][0], len(r.window_p99_ms))
            if timeline.error:
                print(f"     (machine timeline: {timeline.error})", flush=True)
        r.series = None  # the windows are kept; the raw series is not needed past this point
        inside = probes.diff(before, probes.snapshot(base, stack), length) if before is not None else {}
        ctx.acked += r.statuses.get("202", 0)
        points.append((r, inside))
        print(
            f"     open loop {int(frac * 100):>3} % of peak: offered {r.offered_rps:,.0f}/s achieved "
            f"{r.achieved_rps:,.0f}/s p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms "
            f"(generator send lag p99 {r.send_lag_p99_ms:.1f} ms, its own lateness p99 {r.schedule_lag_p99_ms:.1f} ms)"
            + (f"; {inside.get('events_per_call_mean')} events/call" if inside else "")
            + (f"; 10 s windows p99 {window_note(r.window_p99_ms)}" if r.window_p99_ms else ""),
            flush=True,
        )
    ctx.sweeps[name] = [
        {"offered": p.offered_rps, "achieved": p.achieved_rps, "p50_ms": p.p50_ms, "p99_ms": p.p99_ms}
        for p, _ in points
    ]
    return points


def window_note(windows: list[float]) -> str:
    """``min / median / max ms (n windows)`` of a point's 10 s window p99s."""
    ordered = sorted(windows)
    return (
        f"{ordered[0]:.0f} / {ordered[len(ordered) // 2]:.0f} / {ordered[-1]:.0f} ms "
        f"(min / median / max of {len(ordered)})"
    )


def generator_kept_up(p: OpenLoopResult) -> bool:
    # the generator came to its requests on schedule (it, not the server, would otherwise be
    # the limit); a wait for a free connection is the server's doing and does not count
    return p.schedule_lag_p99_ms < 50.0 or p.achieved_rps >= 0.95 * p.offered_rps


@contextmanager
def ceiling_server() -> Iterator[tuple[str, int]]:
    """The HTTP ceiling's server (``benchmarks.ceiling_app``) while the block runs: (base URL, port)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.ceiling_app", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 30, proc)
        yield f"http://127.0.0.1:{port}", port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


class StorePair:
    """The store ceiling kept ready beside a product stack, for one short run on demand (the
    shape that was best in the ``store_ceiling`` scenario). Its own embedded PostgreSQL and
    event loop; ``markers`` name its processes for the quiet checks."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._loop = asyncio.new_event_loop()
        self._ceiling = StoreCeiling()
        self._runs = 0
        shape = ctx.options.get("store_shape") or (BATCH_SIZE, 2)
        self.batch, self.connections = int(shape[0]), int(shape[1])
        self.markers = (str(self._ceiling.folder),)

    def __enter__(self) -> StorePair:
        self._loop.run_until_complete(self._ceiling.setup())
        return self

    def __call__(self) -> float:
        self._runs += 1
        result = self._loop.run_until_complete(
            self._ceiling.run(
                batch=self.batch, connections=self.connections, seconds=self._ctx.seconds(6.0), run=f"pair{self._runs}"
            )
        )
        return float(result["events_per_s"])

    def __exit__(self, *exc: object) -> None:
        try:
            self._loop.run_until_complete(self._ceiling.close_pool())
        finally:
            self._ceiling.close()
            self._loop.close()
