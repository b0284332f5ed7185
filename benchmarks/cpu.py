"""CPU time by component during a measurement, read from /proc (Linux).

On a 2-core machine the server, PostgreSQL, Ray and the load generator share the cores, so
"which process was busy" is the first thing to know when a goal is missed: a component at
~100 % of one core is the bottleneck; a server below that while the generator is pegged
means the generator could not outrun it.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from benchmarks import memory

__all__ = ["CpuSampler", "classify", "wait_for_quiet"]

_TICK = os.sysconf("SC_CLK_TCK")


def classify(cmdline: str, comm: str) -> str:
    """A component name for a process (by its command line)."""
    if "postgres" in comm or "postgres" in cmdline.split(" ", 1)[0]:
        return "postgresql"
    if comm == "wrk" or cmdline.startswith("wrk") or "/wrk " in cmdline:
        return "load generator (wrk)"
    if "benchmarks.openloop" in cmdline:
        return "load generator (python)"
    if "benchmarks.ceiling_app" in cmdline:
        return "ceiling server"
    if "SitePartition" in cmdline or "SitePartition" in comm:
        return "ray: partition actors"
    if "Uploader" in cmdline or "Uploader" in comm:
        return "ray: uploader actors"
    if "opsmantik" in cmdline and " serve" in cmdline:
        return "gateway (opsmantik serve)"
    if "opsmantik_stream.emulator" in cmdline or "opsmantik emulator" in cmdline:
        return "google emulator"
    if "ray" in cmdline or "raylet" in comm or "gcs_server" in comm:
        return "ray: other"
    if "benchmarks" in cmdline:
        return "bench driver"
    return "other"


def _snapshot(markers: tuple[str, ...]) -> dict[int, tuple[str, float]]:
    """pid -> (component, cpu seconds). Only this benchmark's processes get a component
    name (descendants of this process, plus PostgreSQL servers whose command line names one
    of ``markers``, the benchmark's data folders); the rest is background load."""
    procs: dict[int, tuple[int, str, str, float]] = {}
    for pid, comm, cmd, fields in memory.processes():
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        procs[pid] = (int(fields[1]), comm, cmd, ticks / _TICK)
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in procs.items():
        children.setdefault(ppid, []).append(pid)
    roots = [os.getpid()] + [pid for pid, (_pp, _c, cmd, _t) in procs.items() if any(m and m in cmd for m in markers)]
    mine: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in mine:
            continue
        mine.add(pid)
        stack.extend(children.get(pid, []))
    out: dict[int, tuple[str, float]] = {}
    for pid, (_pp, comm, cmd, secs) in procs.items():
        name = classify(cmd, comm) if pid in mine else "background (not this benchmark)"
        out[pid] = (name, secs)
    return out


class CpuSampler:
    """``start()`` before a measurement, ``stop()`` after: CPU % of one core per component."""

    def __init__(self, markers: tuple[str, ...] = ()) -> None:
        self.markers = markers
        self._before: dict[int, tuple[str, float]] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._before = _snapshot(self.markers)
        self._children = _children_cpu()
        self._t0 = _uptime()

    def stop(self) -> dict[str, float]:
        after = _snapshot(self.markers)
        elapsed = max(1e-6, _uptime() - self._t0)
        busy: dict[str, float] = {}
        for pid, (name, secs) in after.items():
            prev = self._before.get(pid)
            delta = secs - (prev[1] if prev else 0.0)
            if delta > 0:
                busy[name] = busy.get(name, 0.0) + delta
        # processes that ran and exited meanwhile (wrk, the open-loop workers) are gone from
        # /proc; their time shows up in this process's reaped-children usage
        gone = _children_cpu() - self._children
        if gone > 0:
            busy["load generator (exited)"] = busy.get("load generator (exited)", 0.0) + gone
        pct = {k: round(100.0 * v / elapsed, 1) for k, v in busy.items()}
        pct[f"total (100 % = one core, {os.cpu_count() or 1} cores)"] = round(sum(pct.values()), 1)
        return dict(sorted(pct.items(), key=lambda kv: -kv[1]))


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


_WAIT_BUDGET_S = [240.0]  # for the whole run, so `make bench` stays well under 20 minutes


def wait_for_quiet(markers: tuple[str, ...] = (), limit_pct: float = 25.0, max_wait_s: float = 15.0) -> float:
    """Wait (up to ``max_wait_s``, and within a budget for the whole run) until processes
    outside the benchmark use less than ``limit_pct`` of a core over a 1 s probe; returns the
    last probe's background %. Measurements taken under load say so in their notes."""
    started = time.monotonic()
    deadline = started + min(max_wait_s, max(0.0, _WAIT_BUDGET_S[0]))
    try:
        return _wait(markers, limit_pct, deadline)
    finally:
        _WAIT_BUDGET_S[0] -= time.monotonic() - started


def _wait(markers: tuple[str, ...], limit_pct: float, deadline: float) -> float:
    while True:
        s = CpuSampler(markers)
        s.start()
        time.sleep(1.0)
        bg = s.stop().get("background (not this benchmark)", 0.0)
        if bg < limit_pct or time.monotonic() > deadline:
            return bg
        print(f"     waiting for background load to settle ({bg:.0f} % of a core) ...", flush=True)


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])
