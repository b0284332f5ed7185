"""What the machine did through an open-loop point, second by second.

A point's p99 can come from one bad stretch (a 60 s point with one 20 s stall). Its 10 s
windows say when; this says what the machine did then, so that a stall of the stack (its
processes busier), of PostgreSQL's own work (a checkpoint writing, autovacuum) and of the
host (CPU taken by the hypervisor: steal) can be told apart afterwards.

``Timeline`` samples once a second in a thread, beside the load:

- CPU by component (% of one core, as ``benchmarks.cpu`` names them) over the second;
- the host's CPU from ``/proc/stat`` (% of all cores): busy, idle, I/O wait, steal;
- PostgreSQL (when given the stack's database): the checkpoints started, the buffers they and
  the backends wrote (``pg_stat_bgwriter``), and the autovacuum workers running.

``windows`` folds the samples into the point's 10 s windows (the same windows as
``openloop.window_p99s``: by scheduled send time from the point's first request), and
``worst_window_note`` says how the worst window differed from the median one.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from benchmarks.cpu import _snapshot

__all__ = ["Sample", "Timeline", "windows", "worst_window_note"]

_PG_QUERY = """
SELECT (checkpoints_timed + checkpoints_req)::bigint AS checkpoints,
       buffers_checkpoint::bigint AS buffers_checkpoint,
       buffers_backend::bigint AS buffers_backend,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker')::int AS autovacuum
FROM pg_stat_bgwriter
"""
_PAGE_MB = 8192 / 1e6


@dataclass
class Sample:
    """One second of the machine, ending at ``t`` (Unix time)."""

    t: float
    cpu: dict[str, float]  # component -> % of one core
    host: dict[str, float]  # busy / idle / iowait / steal, % of all cores
    checkpoints: int = 0  # checkpoints started in the second
    checkpoint_mb: float = 0.0  # written by the checkpointer in the second
    backend_mb: float = 0.0  # written by backends themselves (no free buffer)
    autovacuum: int = 0  # autovacuum workers running at the end of the second


def _host_ticks() -> list[int]:
    with open("/proc/stat") as fh:
        first = fh.readline().split()
    # cpu user nice system idle iowait irq softirq steal ...
    return [int(x) for x in first[1:9]]


def _host_share(before: list[int], after: list[int]) -> dict[str, float]:
    d = [a - b for a, b in zip(after, before, strict=True)]
    total = sum(d) or 1
    user, nice, system, idle, iowait, irq, softirq, steal = d
    return {
        "busy": round(100.0 * (user + nice + system + irq + softirq) / total, 1),
        "idle": round(100.0 * idle / total, 1),
        "iowait": round(100.0 * iowait / total, 1),
        "steal": round(100.0 * steal / total, 1),
    }


@dataclass
class Timeline:
    """Samples the machine once every ``interval_s`` between ``start()`` and ``stop()``."""

    markers: tuple[str, ...]
    db_url: str | None = None
    interval_s: float = 1.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-timeline", daemon=True)
        self._thread.start()

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.samples

    def _run(self) -> None:
        try:
            asyncio.run(self._loop())
        except Exception as exc:  # a diagnosis: never fail the measurement it describes
            self.error = f"{type(exc).__name__}: {exc}"

    async def _loop(self) -> None:
        conn = await asyncpg.connect(self.db_url) if self.db_url else None
        try:
            pg_before = dict(await conn.fetchrow(_PG_QUERY)) if conn is not None else None
            cpu_before = _snapshot(self.markers)
            host_before = _host_ticks()
            t_before = time.monotonic()
            while not self._stop.wait(self.interval_s):
                cpu_after = _snapshot(self.markers)
                host_after = _host_ticks()
                t_after = time.monotonic()
                elapsed = max(1e-6, t_after - t_before)
                busy: dict[str, float] = {}
                for pid, (name, secs) in cpu_after.items():
                    prev = cpu_before.get(pid)
                    delta = secs - (prev[1] if prev else 0.0)
                    if delta > 0:
                        busy[name] = busy.get(name, 0.0) + delta
                sample = Sample(
                    t=time.time(),
                    cpu={k: round(100.0 * v / elapsed, 1) for k, v in busy.items()},
                    host=_host_share(host_before, host_after),
                )
                if conn is not None and pg_before is not None:
                    pg_after = dict(await conn.fetchrow(_PG_QUERY))
                    sample.checkpoints = pg_after["checkpoints"] - pg_before["checkpoints"]
                    sample.checkpoint_mb = round(
                        (pg_after["buffers_checkpoint"] - pg_before["buffers_checkpoint"]) * _PAGE_MB, 1
                    )
                    written = pg_after["buffers_backend"] - pg_before["buffers_backend"]
                    sample.backend_mb = round(written * _PAGE_MB, 1)
                    sample.autovacuum = pg_after["autovacuum"]
                    pg_before = pg_after
                self.samples.append(sample)
                cpu_before, host_before, t_before = cpu_after, host_after, t_after
        finally:
            if conn is not None:
                await conn.close()


def windows(samples: Sequence[Sample], start: float, count: int, width_s: float = 10.0) -> list[dict[str, Any]]:
    """The samples folded into ``count`` windows of ``width_s`` from ``start`` (Unix time; a
    sample belongs to the window its second ended in): mean CPU by component and host shares,
    checkpoints started, MB written by checkpoints and by backends, and the most autovacuum
    workers seen. A window without samples is ``{}``."""
    out: list[dict[str, Any]] = []
    for k in range(count):
        lo, hi = start + k * width_s, start + (k + 1) * width_s
        mine = [s for s in samples if lo < s.t <= hi]
        if not mine:
            out.append({})
            continue
        names = sorted({n for s in mine for n in s.cpu})
        out.append(
            {
                "seconds": len(mine),
                "cpu": {n: round(statistics.fmean(s.cpu.get(n, 0.0) for s in mine), 1) for n in names},
                "host": {h: round(statistics.fmean(s.host[h] for s in mine), 1) for h in mine[0].host},
                "checkpoints": sum(s.checkpoints for s in mine),
                "checkpoint_mb": round(sum(s.checkpoint_mb for s in mine), 1),
                "backend_mb": round(sum(s.backend_mb for s in mine), 1),
                "autovacuum": max(s.autovacuum for s in mine),
            }
        )
    return out


def _describe(w: dict[str, Any]) -> str:
    cpu = w.get("cpu", {})
    top = sorted(((v, n) for n, v in cpu.items() if n != "background (not this benchmark)"), reverse=True)[:4]
    parts = [", ".join(f"{n} {v:.0f} %" for v, n in top)]
    host = w.get("host", {})
    if host:
        parts.append(f"host idle {host['idle']:.0f} %, I/O wait {host['iowait']:.0f} %, steal {host['steal']:.0f} %")
    background = cpu.get("background (not this benchmark)", 0.0)
    if background >= 1.0:
        parts.append(f"background {background:.0f} %")
    parts.append(
        f"{w.get('checkpoints', 0)} checkpoint(s) started, checkpoints wrote {w.get('checkpoint_mb', 0):.0f} MB, "
        f"backends {w.get('backend_mb', 0):.0f} MB, autovacuum workers {w.get('autovacuum', 0)}"
    )
    return "; ".join(parts)


def worst_window_note(p99s: Sequence[float], per_window: Sequence[dict[str, Any]], factor: float = 2.0) -> str | None:
    """When the worst window's p99 is over ``factor`` times the median window's: what the
    machine did in each of the two (else None: no stretch stood out)."""
    if len(p99s) < 2 or len(per_window) != len(p99s):
        return None
    worst = max(range(len(p99s)), key=lambda k: p99s[k])
    ranked = sorted(range(len(p99s)), key=lambda k: p99s[k])
    median = ranked[len(ranked) // 2]
    if p99s[worst] <= factor * p99s[median] or not per_window[worst] or not per_window[median]:
        return None
    return (
        f"worst 10 s window (no. {worst + 1}, p99 {p99s[worst]:.0f} ms): {_describe(per_window[worst])}. "
        f"Median window (no. {median + 1}, p99 {p99s[median]:.0f} ms): {_describe(per_window[median])}"
    )
