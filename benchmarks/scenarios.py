"""The benchmark scenarios (SPEC.md §11). Each appends ``Result``s to the run context.

Every load is bounded in count and time, every server binds 127.0.0.1, and every stack is
started as a user would (``opsmantik serve`` subprocess in a temporary data folder, sites
via the CLI). Figures are judged against ceilings measured earlier in the same run.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks import probes
from benchmarks.cpu import CpuSampler, wait_for_quiet
from benchmarks.memory import MemorySampler, peaks_note, product_peaks
from benchmarks.openloop import OpenLoopResult, run_open_loop
from benchmarks.payloads import SiteRef, single_body
from benchmarks.profile import descendant_pids, find_pyspy, start_profile, summarise
from benchmarks.report import Result, make_result
from benchmarks.stack import REPO, ServeStack, free_port, wait_http
from benchmarks.store_ceiling import StoreCeiling
from benchmarks.wrk import WrkResult, run_wrk

__all__ = ["SCENARIOS", "Context"]

LOAD_FRACTIONS = (0.25, 0.5, 1.0)
SINGLE_CONNECTIONS = 64
BATCH_CONNECTIONS = 16
BATCH_SIZE = 50
SITES = 8
UPLOAD_ACCOUNT = "5555555555"


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


def _bg(ctx: Context, key: str) -> str:
    """A note on background load when other processes used a noticeable share of the CPU."""
    bg = ctx.cpu.get(key, {}).get("background (not this benchmark)", 0.0)
    return f"; background load {bg:.0f} % of a core" if bg >= 10 else ""


def _errors(res: WrkResult) -> str:
    """A note listing answers other than 202 (status:error code), if any."""
    other = {k: v for k, v in res.statuses.items() if k != "202"}
    return "; answers " + ", ".join(f"{v} x {k}" for k, v in sorted(other.items())) if other else ""


def _run_id() -> str:
    return uuid.uuid4().hex[:8]


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
        makes a ratio better: after the product's own runs the machine is slower for the
        ceiling too (writeback of their data; the store ceiling halved), and a ceiling taken
        then would flatter the product."""
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


def _peak(
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
            ctx.wrk, base, sites, run=_run_id(), batch=batch, seconds=min(3.0, seconds), connections=connections
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
                run=_run_id(),
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
            res = run_wrk(ctx.wrk, base, sites, run=_run_id(), batch=batch, seconds=seconds, connections=connections)
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


def _cpu_details(cpu: dict[str, float], units_per_s: float, unit: str) -> dict[str, Any]:
    """CPU % of one core and CPU ms per request/event by component."""
    return {"cpu_percent": cpu, f"cpu_ms_per_{unit}": probes.cpu_ms_per_unit(cpu, units_per_s)}


def _cpu_note(cpu: dict[str, float], units_per_s: float, unit: str) -> str:
    """The three biggest components in CPU ms per unit."""
    per = probes.cpu_ms_per_unit(cpu, units_per_s)
    top = sorted(((v, k) for k, v in per.items() if not k.startswith("background")), reverse=True)[:4]
    return f"CPU ms per {unit}: " + ", ".join(f"{k} {v:.3f}" for v, k in top)


def _sweep(
    ctx: Context,
    port: int,
    sites: list[SiteRef],
    peak_rps: float,
    seconds: float,
    name: str,
    markers: tuple[str, ...],
    stack: ServeStack | None = None,
) -> list[tuple[OpenLoopResult, dict[str, Any]]]:
    """Open-loop points at 25/50/100 % of ``peak_rps``; on a product stack each point also
    says what happened inside (partition calls, events per call, commits)."""
    points = []
    base = f"http://127.0.0.1:{port}"
    for frac in LOAD_FRACTIONS:
        wait_for_quiet(markers)
        before = probes.snapshot(base, stack) if stack is not None else None
        sampler = CpuSampler(markers)
        sampler.start()
        r = run_open_loop("127.0.0.1", port, sites, rate=max(1.0, peak_rps * frac), seconds=seconds, run=_run_id())
        ctx.cpu[f"{name} open loop {int(frac * 100)} %"] = sampler.stop()
        inside = probes.diff(before, probes.snapshot(base, stack), seconds) if before is not None else {}
        ctx.acked += r.statuses.get("202", 0)
        points.append((r, inside))
        print(
            f"     open loop {int(frac * 100):>3} % of peak: offered {r.offered_rps:,.0f}/s achieved "
            f"{r.achieved_rps:,.0f}/s p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms "
            f"(generator send lag p99 {r.send_lag_p99_ms:.1f} ms)"
            + (f"; {inside.get('events_per_call_mean')} events/call" if inside else ""),
            flush=True,
        )
    ctx.sweeps[name] = [
        {"offered": p.offered_rps, "achieved": p.achieved_rps, "p50_ms": p.p50_ms, "p99_ms": p.p99_ms}
        for p, _ in points
    ]
    return points


def _generator_kept_up(p: OpenLoopResult) -> bool:
    # the generator sent on schedule (it, not the server, would otherwise be the limit)
    return p.send_lag_p99_ms < 50.0 or p.achieved_rps >= 0.95 * p.offered_rps


# ---------------------------------------------------------------------------- ceilings


@contextmanager
def _ceiling_server() -> Iterator[tuple[str, int]]:
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


class _StorePair:
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

    def __enter__(self) -> _StorePair:
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


def http_ceiling(ctx: Context) -> None:
    """A bare FastAPI endpoint (uvicorn + uvloop + httptools, one process) decoding the body."""
    with _ceiling_server() as (base, port):
        sites = [SiteRef(uuid.uuid4().hex, f"https://bench{i}.example.com") for i in range(SITES)]
        seconds = ctx.seconds(12.0)
        peak = _peak(
            ctx,
            base,
            sites,
            batch=0,
            seconds=seconds,
            connections=SINGLE_CONNECTIONS,
            markers=(),
            cpu_key="http ceiling: single events (wrk)",
        )
        single = peak.median
        cpu = peak.median_cpu
        server_cpu = cpu.get("ceiling server", 0.0)
        gen_cpu = cpu.get("load generator (exited)", 0.0)
        # wrk runs one thread: it is the limit only if it used (nearly) a whole core
        outran = gen_cpu < 90.0
        ctx.ceilings["http"] = single.ok_rps
        ctx.ceilings["http_p50_ms"] = single.p50_ms
        ctx.add(
            make_result(
                "HTTP ceiling: single-event requests (wrk, closed loop)",
                single.ok_rps,
                "requests/s",
                details={
                    "p50_ms": single.p50_ms,
                    "p99_ms": single.p99_ms,
                    "connections": SINGLE_CONNECTIONS,
                    "statuses": single.statuses,
                    "runs": peak.spread(),
                    **_cpu_details(cpu, single.ok_rps, "request"),
                    "generator_outran_server": outran,
                },
                note=f"{peak.spread_note()}; server CPU {server_cpu:.0f} % of a core, wrk {gen_cpu:.0f} %; "
                + ("generator outran the server" if outran else "GENERATOR COULD NOT SATURATE THE SERVER")
                + f"; {_cpu_note(cpu, single.ok_rps, 'request')}"
                + _bg(ctx, "http ceiling: single events (wrk)"),
            )
        )
        if not outran:
            ctx.notes.append(
                "HTTP ceiling: wrk did not drive the ceiling server to a full core, so the "
                "ceiling may be understated (generator-bound)."
            )
        bpeak = _peak(
            ctx,
            base,
            sites,
            batch=BATCH_SIZE,
            seconds=seconds,
            connections=BATCH_CONNECTIONS,
            markers=(),
            cpu_key="http ceiling: 50-event batches (wrk)",
        )
        batch = bpeak.median
        ctx.ceilings["http_batch_events"] = batch.ok_rps * BATCH_SIZE
        ctx.add(
            make_result(
                "HTTP ceiling: 50-event batches (wrk)",
                batch.ok_rps * BATCH_SIZE,
                "events/s",
                details={
                    "requests_per_s": batch.ok_rps,
                    "p50_ms": batch.p50_ms,
                    "p99_ms": batch.p99_ms,
                    "runs": bpeak.spread(BATCH_SIZE),
                    **_cpu_details(bpeak.median_cpu, batch.ok_rps * BATCH_SIZE, "event"),
                },
                note=f"{bpeak.spread_note(BATCH_SIZE)}; {batch.ok_rps:,.0f} requests/s; "
                + _cpu_note(bpeak.median_cpu, batch.ok_rps * BATCH_SIZE, "event"),
            )
        )
        points = _sweep(ctx, port, sites, single.ok_rps, ctx.seconds(8.0), "HTTP ceiling", ())
        for frac, (p, _inside) in zip(LOAD_FRACTIONS, points, strict=True):
            kept = _generator_kept_up(p)
            ctx.add(
                make_result(
                    f"HTTP ceiling @ {int(frac * 100)} % of its peak (open loop)",
                    p.achieved_rps,
                    "requests/s",
                    ceiling="offered load",
                    ceiling_value=p.offered_rps,
                    details={**p.to_dict(), "generator_kept_up": kept},
                    note=f"p50 {p.p50_ms:.1f} ms, p99 {p.p99_ms:.1f} ms"
                    + ("" if kept else f"; python generator saturated (send lag p99 {p.send_lag_p99_ms:.0f} ms)"),
                )
            )


def store_ceiling(ctx: Context) -> None:
    """Idempotent batched inserts (ledger + sessions + events, unnest) straight into PostgreSQL:
    a grid of (batch size, connections), then the best of it twice more (three runs of the
    ceiling, the median is the figure). CPU is sampled per run, PostgreSQL's included."""
    grid = [(50, 2), (50, 8), (250, 4)] if ctx.quick else [(50, 1), (50, 2), (50, 4), (50, 8), (250, 4)]
    out = asyncio.run(_store_runs(ctx, grid, repeats=1 if ctx.quick else 3))
    best = out["best"]
    ctx.ceilings["store"] = best["events_per_s"]
    ctx.options["store_shape"] = (best["batch"], best["connections"])
    ctx.cpu["store ceiling"] = best["cpu_percent"]
    runs = ", ".join(f"{r['batch']}x{r['connections']}: {r['events_per_s']:,.0f}" for r in out["runs"])
    rates = sorted(r["events_per_s"] for r in out["repeats"])
    ctx.add(
        make_result(
            "Store ceiling: batched idempotent inserts (events/s)",
            best["events_per_s"],
            "events/s",
            conditions={"rows stored == rows reported": bool(out["stored_equals_reported"])},
            details={
                **out,
                "runs_of_best": {
                    "min": round(rates[0], 1),
                    "median": round(best["events_per_s"], 1),
                    "max": round(rates[-1], 1),
                },
                **_cpu_details(best["cpu_percent"], best["events_per_s"], "event"),
            },
            note=f"median of {len(rates)} runs of {best['batch']}x{best['connections']} "
            f"(min {rates[0]:,.0f}, max {rates[-1]:,.0f}); grid (batch x connections) {runs}; "
            + _cpu_note(best["cpu_percent"], best["events_per_s"], "event"),
        )
    )


async def _store_runs(ctx: Context, grid: list[tuple[int, int]], *, repeats: int) -> dict[str, Any]:
    ceiling = StoreCeiling()
    markers = (str(ceiling.folder),)
    seconds = ctx.seconds(6.0)

    async def one(batch: int, conns: int, run: str) -> dict[str, Any]:
        await asyncio.to_thread(wait_for_quiet, markers)
        sampler = CpuSampler(markers)
        sampler.start()
        result = await ceiling.run(batch=batch, connections=conns, seconds=seconds, run=run)
        result["cpu_percent"] = sampler.stop()
        return result

    try:
        await ceiling.setup()
        runs = [await one(batch, conns, f"r{i}") for i, (batch, conns) in enumerate(grid)]
        top = max(runs, key=lambda r: r["events_per_s"])
        repeats_of_top = [top] + [
            await one(top["batch"], top["connections"], f"again{k}") for k in range(max(0, repeats - 1))
        ]
        ordered = sorted(repeats_of_top, key=lambda r: r["events_per_s"])
        best = ordered[len(ordered) // 2]
        stored = await ceiling.count_rows()
        await ceiling.close_pool()
        reported = sum(r["events"] for r in runs) + sum(r["events"] for r in repeats_of_top[1:])
        return {
            "best": best,
            "runs": runs,
            "repeats": repeats_of_top,
            **stored,
            "stored_equals_reported": stored["ledger_rows"] == stored["event_rows"] == reported,
        }
    finally:
        await ceiling.close_pool()
        await asyncio.to_thread(ceiling.close)


# ---------------------------------------------------------------------------- ingest


def _markers(stack: ServeStack) -> tuple[str, ...]:
    return (str(stack.data_dir),)


def _stored(stack: ServeStack, sites: list[SiteRef]) -> tuple[int, int]:
    """(ledger rows, event rows) of these sites, in one snapshot, once writes have settled
    (requests still in flight when a load generator stopped are committed meanwhile)."""
    ids = [stack.site_ids[s.public_id] for s in sites]
    query = """SELECT (SELECT count(*) FROM ingest_idempotency WHERE site_id = ANY($1::uuid[])) AS ledger,
                      (SELECT count(*) FROM events WHERE site_id = ANY($1::uuid[])) AS events"""
    last: tuple[int, int] = (-1, -1)
    deadline = time.monotonic() + 30
    while True:
        row = stack.fetch(query, ids)[0]
        now = (int(row["ledger"]), int(row["events"]))
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(1.0)


def _profile_run(
    ctx: Context, stack: ServeStack, sites: list[SiteRef], *, batch: int, connections: int, name: str
) -> None:
    """An extra (unreported) wrk run while py-spy samples the gateway and a partition actor."""
    pyspy = find_pyspy()
    if not ctx.profile or pyspy is None or ctx.wrk is None or stack.proc is None:
        return
    seconds = ctx.seconds(8.0)
    targets = {"gateway": stack.proc.pid}
    parts = descendant_pids(stack.proc.pid, "ray::SitePartition")
    if parts:
        targets["partition actor"] = parts[0]
    procs = {}
    files = {}
    for label, pid in targets.items():
        files[label] = ctx.out_dir / f"{ctx.stem}-profile-{name}-{label.replace(' ', '-')}.txt"
        procs[label] = start_profile(pyspy, pid, seconds, files[label])
    time.sleep(0.5)
    res = run_wrk(ctx.wrk, stack.base_url, sites, run=_run_id(), batch=batch, seconds=seconds, connections=connections)
    ctx.acked += res.count(202) * max(1, batch)
    summary = {}
    for label, p in procs.items():
        try:
            p.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            p.kill()
        summary[label] = summarise(files[label])
    ctx.profiles[name] = summary


def ingest(ctx: Context, only: set[str]) -> None:
    """Single events (peak + open-loop points), 50-event batches and the duplicate storm on
    one stack with the default 2 partitions."""
    with ServeStack(partitions=2, uploaders=0, label="ingest") as stack, ExitStack() as pairs:
        stack.keep_log_as = ctx.out_dir / f"{ctx.stem}-serve-ingest.log"
        sites = stack.create_sites(SITES)
        markers = _markers(stack)
        ctx.acked = 0
        # each peak run is paired with a ceiling run just before it (not in --quick runs)
        pair_single: Callable[[], float] | None = None
        pair_batch: _StorePair | None = None
        if not ctx.quick and ctx.wrk is not None and "ingest_single" in only:
            ceiling_base, _port = pairs.enter_context(_ceiling_server())
            ceiling_sites = [SiteRef(uuid.uuid4().hex, f"https://bench{i}.example.com") for i in range(SITES)]
            wrk = ctx.wrk

            def pair_single() -> float:
                return run_wrk(
                    wrk,
                    ceiling_base,
                    ceiling_sites,
                    run=_run_id(),
                    batch=0,
                    seconds=ctx.seconds(8.0),
                    connections=SINGLE_CONNECTIONS,
                ).ok_rps

        if not ctx.quick and "ingest_batch" in only and "store" in ctx.ceilings:
            pair_batch = pairs.enter_context(_StorePair(ctx))
        if "ingest_single" in only:
            _ingest_single(ctx, stack, sites, markers, pair_single)
        if "ingest_batch" in only:
            _ingest_batch(ctx, stack, sites, markers, pair_batch)
        acknowledged = ctx.acked
        if acknowledged:
            ledger, events = _stored(stack, sites)
            durable = ledger >= acknowledged and events == ledger
            ctx.add(
                make_result(
                    "Ingest: every event answered 202 is in PostgreSQL",
                    float(ledger),
                    "ledger rows",
                    conditions={
                        "every 2xx stored (ledger >= acknowledged)": ledger >= acknowledged,
                        "one event row per ledger row": events == ledger,
                    },
                    details={"ledger_rows": ledger, "event_rows": events, "acknowledged": acknowledged},
                    note=f"{acknowledged:,} events answered 202 over every run on this stack; the ledger may hold "
                    "more (requests in flight when wrk stopped are stored but not counted)",
                )
            )
            if not durable:
                ctx.notes.append(
                    f"Durability check failed: ledger {ledger}, events {events}, acknowledged {acknowledged}."
                )
        if "duplicate_storm" in only:
            _duplicate_storm(ctx, stack)


def _all_ok(peak: Peak) -> bool:
    return all(r.count(202) == r.requests and not any(r.errors.values()) for r in peak.runs)


def _ingest_single(
    ctx: Context,
    stack: ServeStack,
    sites: list[SiteRef],
    markers: tuple[str, ...],
    pair: Callable[[], float] | None = None,
) -> None:
    after = " (each after an HTTP ceiling run)" if pair else ""
    print(f"  ingest single events: wrk peaks{after} ...", flush=True)
    peak = _peak(
        ctx,
        stack.base_url,
        sites,
        batch=0,
        seconds=ctx.seconds(15.0),
        connections=SINGLE_CONNECTIONS,
        markers=markers,
        cpu_key="ingest single events peak (wrk)",
        stack=stack,
        pair=pair,
    )
    res = peak.median
    http = peak.judging_ceiling(ctx.ceilings.get("http"))
    cpu = peak.median_cpu
    inside = peak.median_inside
    ctx.ceilings["ingest_single_peak"] = res.ok_rps
    ctx.add(
        make_result(
            "Ingest single-event requests: peak (wrk, closed loop)",
            res.ok_rps,
            "requests/s",
            ceiling="HTTP ceiling" if http else None,
            ceiling_value=http,
            goal_ratio=0.6,
            conditions={"no errors": _all_ok(peak)},
            details={
                "statuses": res.statuses,
                "errors": res.errors,
                "p50_ms": res.p50_ms,
                "p99_ms": res.p99_ms,
                "connections": SINGLE_CONNECTIONS,
                "runs": peak.spread(),
                "inside": inside,
                **_cpu_details(cpu, res.ok_rps, "request"),
            },
            note=f"{peak.spread_note()}{peak.paired_note('requests/s')}; p50 {res.p50_ms:.1f} ms, "
            f"p99 {res.p99_ms:.1f} ms at {SINGLE_CONNECTIONS} connections; {_inside_note(inside)}; "
            f"{_cpu_note(cpu, res.ok_rps, 'request')}" + _bg(ctx, "ingest single events peak (wrk)") + _errors(res),
        )
    )
    print("  ingest single events: open-loop points ...", flush=True)
    points = _sweep(ctx, stack.port, sites, res.ok_rps, ctx.seconds(10.0), "ingest", markers, stack=stack)
    for frac, (p, inside_p) in zip(LOAD_FRACTIONS, points, strict=True):
        kept = _generator_kept_up(p)
        ok = sum(v for k, v in p.statuses.items() if k.startswith("2"))
        point_cpu = ctx.cpu[f"ingest open loop {int(frac * 100)} %"]
        ctx.add(
            make_result(
                f"Ingest single events @ {int(frac * 100)} % of peak (open loop)",
                p.achieved_rps,
                "requests/s",
                ceiling="offered load",
                ceiling_value=p.offered_rps,
                details={
                    **p.to_dict(),
                    "generator_kept_up": kept,
                    "inside": inside_p,
                    **_cpu_details(point_cpu, p.achieved_rps, "request"),
                },
                note=f"p50 {p.p50_ms:.1f} ms, p99 {p.p99_ms:.1f} ms; {ok}/{p.sent} answered 2xx; "
                f"{_inside_note(inside_p)}" + ("" if kept else f"; generator lagged (p99 {p.send_lag_p99_ms:.0f} ms)"),
            )
        )
    half = points[LOAD_FRACTIONS.index(0.5)][0]
    ctx.add(
        make_result(
            "Ingest single events: p99 latency at 50 % of the peak",
            half.p99_ms,
            "ms",
            conditions={"p99 <= 50 ms": half.p99_ms <= 50.0, "every request answered 2xx": _open_ok(half)},
            details={"offered_rps": half.offered_rps, "p50_ms": half.p50_ms},
            note=f"offered {half.offered_rps:,.0f} requests/s; goal p99 ≤ 50 ms",
        )
    )
    _profile_run(ctx, stack, sites, batch=0, connections=SINGLE_CONNECTIONS, name="single")


def _open_ok(p: OpenLoopResult) -> bool:
    return sum(v for k, v in p.statuses.items() if k.startswith("2")) == p.sent


def _inside_note(inside: dict[str, Any]) -> str:
    if not inside:
        return "no partition figures"
    return (
        f"{inside.get('partition_calls_per_s', 0):,.0f} partition calls/s, events per call "
        f"p50 {inside.get('events_per_call_p50')} / p99 {inside.get('events_per_call_p99')}, "
        f"{inside.get('commits_per_s', 0):,.0f} commits/s"
    )


def _ingest_batch(
    ctx: Context,
    stack: ServeStack,
    sites: list[SiteRef],
    markers: tuple[str, ...],
    pair: _StorePair | None = None,
) -> None:
    after = " (each after a store ceiling run)" if pair else ""
    print(f"  ingest 50-event batches: wrk peaks{after} ...", flush=True)
    peak = _peak(
        ctx,
        stack.base_url,
        sites,
        batch=BATCH_SIZE,
        seconds=ctx.seconds(15.0),
        connections=BATCH_CONNECTIONS,
        markers=markers,
        cpu_key="ingest 50-event batches (wrk)",
        stack=stack,
        pair=pair,
        pair_markers=pair.markers if pair is not None else (),
    )
    res = peak.median
    store = peak.judging_ceiling(ctx.ceilings.get("store"))
    events_per_s = res.ok_rps * BATCH_SIZE
    ctx.ceilings["ingest_batch_events"] = events_per_s
    ctx.add(
        make_result(
            "Ingest 50-event batches",
            events_per_s,
            "events/s",
            ceiling="store ceiling" if store else None,
            ceiling_value=store,
            goal_ratio=0.6,
            conditions={"no errors": _all_ok(peak)},
            details={
                "requests_per_s": res.ok_rps,
                "statuses": res.statuses,
                "p50_ms": res.p50_ms,
                "p99_ms": res.p99_ms,
                "connections": BATCH_CONNECTIONS,
                "runs": peak.spread(BATCH_SIZE),
                "inside": peak.median_inside,
                **_cpu_details(peak.median_cpu, events_per_s, "event"),
            },
            note=f"{peak.spread_note(BATCH_SIZE)}{peak.paired_note('events/s')}; {res.ok_rps:,.0f} requests/s, "
            f"p50 {res.p50_ms:.0f} ms, "
            f"p99 {res.p99_ms:.0f} ms; {_inside_note(peak.median_inside)}; "
            + _cpu_note(peak.median_cpu, events_per_s, "event")
            + _bg(ctx, "ingest 50-event batches (wrk)")
            + _errors(res),
        )
    )
    _profile_run(ctx, stack, sites, batch=BATCH_SIZE, connections=BATCH_CONNECTIONS, name="batch")


def _duplicate_storm(ctx: Context, stack: ServeStack) -> None:
    print("  duplicate storm ...", flush=True)
    (site,) = stack.create_sites(1, prefix="dupstorm")
    n_events = 40 if ctx.quick else 200
    copies = 20
    run = _run_id()
    statuses: Counter[str] = Counter()

    async def storm() -> float:
        limits = httpx.Limits(max_connections=copies * 5, max_keepalive_connections=copies * 5)
        async with httpx.AsyncClient(base_url=stack.base_url, limits=limits, timeout=30) as client:
            sem = asyncio.Semaphore(5)  # 5 events x 20 copies in flight

            async def one(i: int) -> None:
                body = single_body(site, run, i, eid=f"dup-{run}-{i}", path=f"/dup/{run}/{i}")
                headers = {"Content-Type": "application/json", "Origin": site.origin}
                async with sem:
                    answers = await asyncio.gather(
                        *(client.post("/api/sync", content=body, headers=headers) for _ in range(copies)),
                        return_exceptions=True,
                    )
                for a in answers:
                    statuses[str(a.status_code) if isinstance(a, httpx.Response) else type(a).__name__] += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n_events)))
            return time.perf_counter() - t0

    elapsed = asyncio.run(storm())
    site_id = stack.site_ids[site.public_id]
    per_url = stack.fetch("SELECT url, count(*) AS n FROM events WHERE site_id = $1 GROUP BY url", site_id)
    ledger = int(stack.fetchval("SELECT count(*) FROM ingest_idempotency WHERE site_id = $1", site_id))
    once = sum(1 for r in per_url if r["n"] == 1)
    more = sum(1 for r in per_url if r["n"] > 1)
    accepted, dups = statuses.get("202", 0), statuses.get("200", 0)
    ctx.add(
        make_result(
            "Duplicate storm: events stored exactly once (20 concurrent copies each)",
            float(once),
            "events",
            ceiling="distinct events sent",
            ceiling_value=float(n_events),
            goal_ratio=1.0,
            conditions={
                "no event stored twice": more == 0,
                "ledger rows == distinct events": ledger == n_events,
                "one 202 per event, the rest 200 dedup": accepted == n_events and dups == n_events * (copies - 1),
            },
            details={
                "statuses": dict(statuses),
                "ledger_rows": ledger,
                "events_stored_more_than_once": more,
                "requests": n_events * copies,
                "elapsed_s": round(elapsed, 2),
            },
            note=f"{n_events * copies} requests in {elapsed:.1f} s: {accepted} x 202, {dups} x 200 dedup, "
            f"other {sum(v for k, v in statuses.items() if k not in ('200', '202'))}",
        )
    )


def partitions(ctx: Context) -> None:
    """The same 50-event batch run with 1, 2 and 4 partitions."""
    values = []
    store = ctx.ceilings.get("store")
    for n in (1, 2, 4):
        print(f"  partitions = {n}: starting the stack ...", flush=True)
        with ServeStack(partitions=n, uploaders=0, label=f"partitions-{n}") as stack:
            stack.keep_log_as = ctx.out_dir / f"{ctx.stem}-serve-partitions-{n}.log"
            sites = stack.create_sites(SITES)
            # one run per size (the goals are judged on the 3-run peaks above; this shows the trend)
            peak = _peak(
                ctx,
                stack.base_url,
                sites,
                batch=BATCH_SIZE,
                seconds=ctx.seconds(12.0),
                connections=BATCH_CONNECTIONS,
                markers=_markers(stack),
                cpu_key=f"partitions={n}: 50-event batches (wrk)",
                repeats=1,
                stack=stack,
            )
            res = peak.median
            ev = res.ok_rps * BATCH_SIZE
            values.append((f"{n} partition{'s' if n > 1 else ''}", ev))
            base = values[0][1]
            ctx.add(
                make_result(
                    f"Scaling: 50-event batches with {n} partition{'s' if n > 1 else ''}",
                    ev,
                    "events/s",
                    ceiling="store ceiling" if store else None,
                    ceiling_value=store,
                    details={
                        "statuses": res.statuses,
                        "p50_ms": res.p50_ms,
                        "p99_ms": res.p99_ms,
                        "inside": peak.median_inside,
                        **_cpu_details(peak.median_cpu, ev, "event"),
                    },
                    note=f"x{ev / base:.2f} of 1 partition; {SITES} sites; p99 {res.p99_ms:.0f} ms; "
                    + _inside_note(peak.median_inside)
                    + _errors(res)
                    + _bg(ctx, f"partitions={n}: 50-event batches (wrk)"),
                )
            )
    ctx.bars["Ingest 50-event batches (events per s) by partitions"] = values


# ---------------------------------------------------------------------------- uploads


def uploads(ctx: Context) -> None:
    """Sustained upload rate against the emulator vs the configured bucket, 1 and 4 uploaders."""
    bars = []
    for n in (1, 4):
        value = _uploads_run(ctx, n)
        bars.append((f"{n} uploader{'s' if n > 1 else ''}", value))
    ctx.bars["Upload requests per s against a 20 per s bucket"] = bars


def _uploads_run(ctx: Context, uploaders: int) -> float:
    rps = 20
    chunk = 20
    seconds = 6 if ctx.quick else 20
    n_sites = 4
    emu_port = free_port()
    emu = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opsmantik_stream.cli",
            "emulator",
            "--port",
            str(emu_port),
            "--latency-ms",
            "20",
            "--account-rate",
            f"{UPLOAD_ACCOUNT}={rps}",
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    emu_base = f"http://127.0.0.1:{emu_port}"
    try:
        wait_http(f"{emu_base}/_emulator/config", 30, emu)
        env = {
            "OPSMANTIK_UPLOAD_CHUNK_SIZE": str(chunk),
            "OPSMANTIK_UPLOAD_IDLE_POLL_S": "0.2",
            # Google's endpoints are deployment settings (never site credentials)
            "OPSMANTIK_GOOGLE_ADS_BASE_URL": emu_base,
            "OPSMANTIK_GOOGLE_TOKEN_URL": f"{emu_base}/token",
        }
        print(f"  uploads with {uploaders} uploader(s): starting the stack ...", flush=True)
        with ServeStack(partitions=1, uploaders=uploaders, env=env, label=f"uploads-{uploaders}") as stack:
            sites = stack.create_sites(n_sites, prefix="upload")
            for s in sites:
                stack.cli(
                    "site",
                    "credentials",
                    "set",
                    s.public_id,
                    "--destination",
                    "google_ads",
                    "--customer-id",
                    UPLOAD_ACCOUNT,
                    "--client-id",
                    "bench-client",
                    "--client-secret",
                    "bench-secret",
                    "--refresh-token",
                    "bench-refresh",
                    "--conversion-action",
                    f"customers/{UPLOAD_ACCOUNT}/conversionActions/987654",
                    "--requests-per-s",
                    str(rps),
                    "--conversions-per-min",
                    "10000000",
                )
            httpx.post(f"{emu_base}/_emulator/reset", json={"tokens": False}, timeout=10).raise_for_status()
            # enough rows that the queue never runs dry during the window (+50 %)
            per_site = int(rps * seconds * chunk * 1.5 / n_sites) + chunk
            for s in sites:
                stack.sql(
                    """INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id,
                           order_id, gclid, conversion_time, value_minor, currency)
                       SELECT $1::uuid, 'google_ads', 'sale', gen_random_uuid(), 'bench-' || $2 || '-' || g,
                              'Cj0KBench' || $2 || g, now() - interval '1 day', 12345, 'EUR'
                       FROM generate_series(1, $3::int) AS g""",
                    stack.site_ids[s.public_id],
                    s.public_id[:8],
                    per_site,
                )
            total = per_site * n_sites
            sampler = CpuSampler(_markers(stack))
            sampler.start()
            deadline = time.monotonic() + seconds + 15
            first: int | None = None
            while time.monotonic() < deadline:
                state = httpx.get(f"{emu_base}/_emulator/state", params={"conversions": "false"}, timeout=10).json()
                secs = sorted(int(k) for k in state["requests_per_second"].get(UPLOAD_ACCOUNT, {}))
                if secs:
                    first = secs[0] if first is None else first
                    if secs[-1] >= first + seconds + 1:
                        break
                time.sleep(0.5)
            ctx.cpu[f"uploads, {uploaders} uploader(s)"] = sampler.stop()
            completed = int(stack.fetchval("SELECT count(*) FROM offline_conversion_queue WHERE status = 'COMPLETED'"))
    finally:
        try:
            state = httpx.get(f"{emu_base}/_emulator/state", params={"conversions": "false"}, timeout=10).json()
        except httpx.HTTPError:
            state = {}
        emu.terminate()
        emu.wait(timeout=20)
    per_second = {int(k): v for k, v in state.get("requests_per_second", {}).get(UPLOAD_ACCOUNT, {}).items()}
    if not per_second:
        ctx.add(
            make_result(
                f"Uploads with {uploaders} uploader(s)",
                0.0,
                "requests/s",
                ceiling="configured bucket",
                ceiling_value=float(rps),
                goal_ratio=0.95,
                note="no upload reached the emulator",
            )
        )
        return 0.0
    start = min(per_second)
    window = [per_second.get(s, 0) for s in range(start + 1, start + 1 + seconds)]  # full seconds only
    sustained = sum(window) / len(window)
    peak_window = max(per_second.values())
    by_status = state.get("responses_by_status", {})
    throttled = int(by_status.get("429", 0)) if isinstance(by_status, dict) else 0
    ctx.add(
        make_result(
            f"Uploads with {uploaders} uploader{'s' if uploaders > 1 else ''}: sustained rate",
            sustained,
            "requests/s",
            ceiling="configured bucket",
            ceiling_value=float(rps),
            goal_ratio=0.95,
            conditions={
                "never above the bucket in any 1 s window": peak_window <= rps,
                "no 429 from the emulator": throttled == 0,
            },
            details={
                "per_second": [per_second.get(s, 0) for s in range(start, max(per_second) + 1)],
                "window_seconds": seconds,
                "max_in_any_1s_window": peak_window,
                "chunk": chunk,
                "rows": total,
                "completed_rows": completed,
                "responses_by_status": by_status,
                "sites": n_sites,
                "emulator_latency_ms": 20,
            },
            note=f"max {peak_window}/s in any 1 s window; {throttled} x 429; chunk {chunk} rows/request",
        )
    )
    return sustained


SCENARIOS: dict[str, str] = {
    "http_ceiling": "bare FastAPI endpoint: peak and open-loop points",
    "store_ceiling": "batched idempotent inserts straight into PostgreSQL",
    "ingest_single": "single-event requests: peak, p50/p99 at 25/50/100 % of peak",
    "ingest_batch": "50-event batches: events/s",
    "duplicate_storm": "20 concurrent copies of each event: exactly one stored",
    "partitions": "the 50-event batch run with 1, 2 and 4 partitions",
    "uploads": "uploads to the emulator vs the bucket, 1 and 4 uploaders",
    "soak": "half the ingest peak for --minutes (default 30) with a realistic mix; only with --only soak",
}
# what `make bench` runs without --only (the soak takes half an hour: `make soak`)
DEFAULT_SCENARIOS = tuple(k for k in SCENARIOS if k != "soak")


def _soak(ctx: Context) -> None:
    from benchmarks.soak import soak

    soak(ctx)


def run_all(ctx: Context, only: set[str]) -> None:
    """Run the selected scenarios in dependency order (ceilings first)."""
    steps: list[tuple[str, Any]] = [
        ("http_ceiling", lambda: http_ceiling(ctx)),
        ("store_ceiling", lambda: store_ceiling(ctx)),
        ("ingest", lambda: ingest(ctx, only)),
        ("partitions", lambda: partitions(ctx)),
        ("uploads", lambda: uploads(ctx)),
        ("soak", lambda: _soak(ctx)),
    ]
    if ctx.wrk is None:
        ctx.notes.append(
            "wrk is not available: peaks come from the Python generator, which may not outrun "
            "the servers on this machine (install wrk: apt-get install wrk)."
        )
    for name, step in steps:
        if name == "ingest":
            if not only & {"ingest_single", "ingest_batch", "duplicate_storm"}:
                continue
        elif name not in only:
            continue
        print(f"== {name} ==", flush=True)
        t0 = time.monotonic()
        ctx.memory = MemorySampler(interval_s=1.0).start()
        try:
            step()
        except Exception as exc:  # one broken scenario must not lose the others' results
            msg = f"{name} failed: {type(exc).__name__}: {exc}"
            print("  " + msg, flush=True)
            ctx.notes.append(msg)
        finally:
            ctx.peak_rss_mb[name] = ctx.memory.stop()
            ctx.memory = None
        print(
            f"   ({time.monotonic() - t0:.0f} s; {peaks_note(ctx.peak_rss_mb[name]) or 'no memory figures'})",
            flush=True,
        )
