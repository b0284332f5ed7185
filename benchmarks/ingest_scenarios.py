"""The ingest scenarios on served stacks: single-event peak and latency at fixed loads and the
duplicate storm on one, 50-event batches on a fresh one, exactly-once of every 2xx on both;
and the batch run with 1, 2 and 4 partitions.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx

from benchmarks.openloop import OpenLoopResult
from benchmarks.payloads import SiteRef, single_body
from benchmarks.profile import descendant_pids, find_pyspy, start_profile, summarise
from benchmarks.report import make_result
from benchmarks.scenario_kit import (
    BATCH_CONNECTION_GRID,
    BATCH_SIZE,
    JUDGED_FRACTION,
    JUDGED_POINT_S,
    LOAD_FRACTIONS,
    SINGLE_CONNECTIONS,
    SITES,
    Context,
    Peak,
    StorePair,
    bg_note,
    ceiling_server,
    connections_note,
    cpu_details,
    cpu_note,
    errors_note,
    generator_kept_up,
    measure_peak,
    pick_connections,
    run_id,
    stack_markers,
    sweep,
    window_note,
)
from benchmarks.stack import ServeStack
from benchmarks.timeline import worst_window_note
from benchmarks.wrk import run_wrk

__all__ = ["ingest", "partitions"]


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
    res = run_wrk(ctx.wrk, stack.base_url, sites, run=run_id(), batch=batch, seconds=seconds, connections=connections)
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
    """Single events (peak + open-loop points) and the duplicate storm on one stack with the
    default 2 partitions; 50-event batches on a fresh stack of the same shape.

    The batches get a stack of their own because PostgreSQL's cost per event grows with the
    tables (0.039 -> 0.050 ms over the first 1.4 million rows of sustained batches): the
    single-event scenario leaves about two million rows behind, while the store ceiling's
    judged runs write into about a million of its own. Each stack's every 202 is checked
    against its ledger; the durability row sums both."""
    settled: list[tuple[int, int, int]] = []  # (ledger, events, acknowledged) per stack
    if "ingest_single" in only or "duplicate_storm" in only:
        with ServeStack(partitions=2, uploaders=0, label="ingest") as stack, ExitStack() as pairs:
            stack.keep_log_as = ctx.out_dir / f"{ctx.stem}-serve-ingest.log"
            sites = stack.create_sites(SITES)
            markers = stack_markers(stack)
            ctx.acked = 0
            # each peak run is paired with a ceiling run just before it (not in --quick runs)
            pair_single: Callable[[], float] | None = None
            if not ctx.quick and ctx.wrk is not None and "ingest_single" in only:
                ceiling_base, _port = pairs.enter_context(ceiling_server())
                ceiling_sites = [SiteRef(uuid.uuid4().hex, f"https://bench{i}.example.com") for i in range(SITES)]
                wrk = ctx.wrk

                def pair_single() -> float:
                    return run_wrk(
                        wrk,
                        ceiling_base,
                        ceiling_sites,
                        run=run_id(),
                        batch=0,
                        seconds=ctx.seconds(8.0),
                        # the ceiling's own best count (http_ceiling), the same for each of its runs
                        connections=int(ctx.ceilings.get("http_connections", SINGLE_CONNECTIONS)),
                    ).ok_rps

            if "ingest_single" in only:
                _ingest_single(ctx, stack, sites, markers, pair_single)
            if ctx.acked:
                settled.append((*_stored(stack, sites), ctx.acked))
            if "duplicate_storm" in only:
                _duplicate_storm(ctx, stack)
    if "ingest_batch" in only:
        with ServeStack(partitions=2, uploaders=0, label="ingest-batch") as stack, ExitStack() as pairs:
            stack.keep_log_as = ctx.out_dir / f"{ctx.stem}-serve-ingest-batch.log"
            sites = stack.create_sites(SITES)
            ctx.acked = 0
            pair_batch: StorePair | None = None
            if not ctx.quick and "store" in ctx.ceilings:
                pair_batch = pairs.enter_context(StorePair(ctx))
            _ingest_batch(ctx, stack, sites, stack_markers(stack), pair_batch)
            if ctx.acked:
                settled.append((*_stored(stack, sites), ctx.acked))
    if settled:
        _durability(ctx, settled)


def _durability(ctx: Context, settled: list[tuple[int, int, int]]) -> None:
    """The durability row: on every stack, the ledger holds every event answered 202 and one
    event row per ledger row."""
    ledger = sum(x[0] for x in settled)
    events = sum(x[1] for x in settled)
    acknowledged = sum(x[2] for x in settled)
    every_2xx = all(led >= acked for led, _ev, acked in settled)
    one_row = all(ev == led for led, ev, _acked in settled)
    per_stack = " + ".join(f"{acked:,}" for _led, _ev, acked in settled)
    ctx.add(
        make_result(
            "Ingest: every event answered 202 is in PostgreSQL",
            float(ledger),
            "ledger rows",
            conditions={
                "every 2xx stored (ledger >= acknowledged)": every_2xx,
                "one event row per ledger row": one_row,
            },
            details={
                "ledger_rows": ledger,
                "event_rows": events,
                "acknowledged": acknowledged,
                "per_stack": [{"ledger_rows": s[0], "event_rows": s[1], "acknowledged": s[2]} for s in settled],
            },
            note=f"{acknowledged:,} events answered 202 over every run on the ingest stacks ({per_stack}); the "
            "ledger may hold more (requests in flight when wrk stopped are stored but not counted)",
        )
    )
    if not (every_2xx and one_row):
        ctx.notes.append(f"Durability check failed: per stack (ledger, events, acknowledged) {settled}.")


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
    print("  ingest single events: connections ...", flush=True)
    connections, grid = pick_connections(ctx, stack.base_url, sites, seconds=ctx.seconds(6.0), markers=markers)
    print(f"  ingest single events: wrk peaks at {connections} connections{after} ...", flush=True)
    peak = measure_peak(
        ctx,
        stack.base_url,
        sites,
        batch=0,
        seconds=ctx.seconds(15.0),
        connections=connections,
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
                "connections": connections,
                "connection_grid": grid,
                "runs": peak.spread(),
                "inside": inside,
                **cpu_details(cpu, res.ok_rps, "request"),
            },
            note=f"{peak.spread_note()}{peak.paired_note('requests/s')}; p50 {res.p50_ms:.1f} ms, "
            f"p99 {res.p99_ms:.1f} ms {connections_note(connections, grid)}; {_inside_note(inside)}; "
            f"{cpu_note(cpu, res.ok_rps, 'request')}"
            + bg_note(ctx, "ingest single events peak (wrk)")
            + errors_note(res),
        )
    )
    print("  ingest single events: open-loop points ...", flush=True)
    points = sweep(ctx, stack.port, sites, res.ok_rps, ctx.seconds(10.0), "ingest", markers, stack=stack)
    for frac, (p, inside_p) in zip(LOAD_FRACTIONS, points, strict=True):
        kept = generator_kept_up(p)
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
                    **cpu_details(point_cpu, p.achieved_rps, "request"),
                },
                note=f"p50 {p.p50_ms:.1f} ms, p99 {p.p99_ms:.1f} ms; {ok}/{p.sent} answered 2xx; "
                f"{_inside_note(inside_p)}"
                + (f"; p99 of its 10 s windows {window_note(p.window_p99_ms)}" if p.window_p99_ms else "")
                + f"; generator send lag p99 {p.send_lag_p99_ms:.0f} ms, its own lateness p99 "
                f"{p.schedule_lag_p99_ms:.0f} ms" + ("" if kept else "; generator lagged"),
            )
        )
    half = points[LOAD_FRACTIONS.index(JUDGED_FRACTION)][0]
    ctx.add(
        make_result(
            "Ingest single events: p99 latency at 50 % of the peak",
            half.p99_ms,
            "ms",
            conditions={"p99 <= 50 ms": half.p99_ms <= 50.0, "every request answered 2xx": _open_ok(half)},
            details={
                "offered_rps": half.offered_rps,
                "p50_ms": half.p50_ms,
                "window_p99_ms": half.window_p99_ms,
                "window_machine": half.window_machine,
            },
            note=f"offered {half.offered_rps:,.0f} requests/s for {ctx.seconds(JUDGED_POINT_S):.0f} s; goal p99 ≤ 50 ms"
            + (f"; p99 of its 10 s windows in order {_in_order(half.window_p99_ms)}" if half.window_p99_ms else "")
            + (f"; {worst}" if (worst := _worst_window(half)) else ""),
        )
    )
    _profile_run(ctx, stack, sites, batch=0, connections=connections, name="single")


def _in_order(p99s: list[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in p99s) + " ms"


def _worst_window(p: OpenLoopResult) -> str | None:
    if not p.window_p99_ms or not p.window_machine:
        return None
    return worst_window_note(p.window_p99_ms, p.window_machine)


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
    pair: StorePair | None = None,
) -> None:
    after = " (each after a store ceiling run)" if pair else ""
    print("  ingest 50-event batches: connections ...", flush=True)
    connections, grid = pick_connections(
        ctx,
        stack.base_url,
        sites,
        seconds=ctx.seconds(6.0),
        markers=markers,
        grid=BATCH_CONNECTION_GRID,
        batch=BATCH_SIZE,
        # one run each: every run on this stack grows its tables, and PostgreSQL's cost per
        # event grows with them (see ``ingest``); in every run so far 64 did 15-33 % more than 16
        again=False,
    )
    ctx.ceilings["batch_connections"] = connections
    print(f"  ingest 50-event batches: wrk peaks at {connections} connections{after} ...", flush=True)
    peak = measure_peak(
        ctx,
        stack.base_url,
        sites,
        batch=BATCH_SIZE,
        seconds=ctx.seconds(15.0),
        connections=connections,
        markers=markers,
        cpu_key="ingest 50-event batches (wrk)",
        stack=stack,
        pair=pair,
        pair_markers=pair.markers if pair is not None else (),
    )
    res = peak.median
    grid_note = connections_note(connections, grid, per_request=BATCH_SIZE, unit="events/s", again=False)
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
                "connections": connections,
                "connection_grid_requests_per_s": grid,
                "runs": peak.spread(BATCH_SIZE),
                "inside": peak.median_inside,
                **cpu_details(peak.median_cpu, events_per_s, "event"),
            },
            note=f"{peak.spread_note(BATCH_SIZE)}{peak.paired_note('events/s')}; {res.ok_rps:,.0f} requests/s, "
            f"p50 {res.p50_ms:.0f} ms, "
            f"p99 {res.p99_ms:.0f} ms {grid_note}; "
            f"{_inside_note(peak.median_inside)}; "
            + cpu_note(peak.median_cpu, events_per_s, "event")
            + bg_note(ctx, "ingest 50-event batches (wrk)")
            + errors_note(res),
        )
    )
    _profile_run(ctx, stack, sites, batch=BATCH_SIZE, connections=connections, name="batch")


def _duplicate_storm(ctx: Context, stack: ServeStack) -> None:
    print("  duplicate storm ...", flush=True)
    (site,) = stack.create_sites(1, prefix="dupstorm")
    n_events = 40 if ctx.quick else 200
    copies = 20
    run = run_id()
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
            peak = measure_peak(
                ctx,
                stack.base_url,
                sites,
                batch=BATCH_SIZE,
                seconds=ctx.seconds(12.0),
                # the count the judged batch peak ran at (the grid's first when it did not run)
                connections=int(ctx.ceilings.get("batch_connections", BATCH_CONNECTION_GRID[0])),
                markers=stack_markers(stack),
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
                        **cpu_details(peak.median_cpu, ev, "event"),
                    },
                    note=f"x{ev / base:.2f} of 1 partition; {SITES} sites; p99 {res.p99_ms:.0f} ms; "
                    + _inside_note(peak.median_inside)
                    + errors_note(res)
                    + bg_note(ctx, f"partitions={n}: 50-event batches (wrk)"),
                )
            )
    ctx.bars["Ingest 50-event batches (events per s) by partitions"] = values
