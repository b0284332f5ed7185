"""Resident memory by component, read from /proc (Linux), for every benchmark and the soak.

Components are named per instance where the product has several: ``gateway``, ``partition 1``,
``partition 2`` ..., ``uploader 1`` ..., ``maintenance``, ``registry``, ``postgresql``, plus
``ray: other`` (raylet, GCS, dashboard, idle workers) and the benchmark's own processes. Which
processes belong to the benchmark is decided as in ``benchmarks/cpu.py``: descendants of this
process, plus the PostgreSQL servers of the data folders in ``watched()`` (pgserver
daemonises the postmaster, so it is not a descendant).

- Python processes are measured by RSS (what ``top`` and the kernel's OOM killer see).
- PostgreSQL is made of many processes that share its buffer pool: summing their RSS would
  count shared memory once per backend, so its figures come from their PSS (proportional set
  size, ``/proc/<pid>/smaps_rollup``), which counts every shared page once in total, split in
  two: ``postgresql`` is the processes' own memory (PSS less ``Pss_Shmem``: backends' work
  memory, caches, the catalogue) and ``postgresql: shared memory`` is the part of its shared
  segment that is resident (``Pss_Shmem``). The shared segment has a fixed size
  (``shared_memory_size``: ``shared_buffers``, 128 MB by default, plus WAL buffers and lock
  tables) and its pages become resident as buffers are first used, so that figure rises
  until the segment is resident and then stays: that is a bounded cache filling, not a leak.

Instances are numbered in the order their processes started (by ``starttime``), and keep their
number for the sampler's life: an actor that restarts shows up as a new number.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MB",
    "PG_SHARED",
    "MemorySampler",
    "ProcInfo",
    "kind_of",
    "peaks_note",
    "processes",
    "product_peaks",
    "scan",
    "unwatch",
    "watch",
    "watched",
]

_PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024

# data folders of the stacks and ceilings running now (their PostgreSQL servers are ours)
_WATCHED: set[str] = set()
_WATCHED_LOCK = threading.Lock()

# kinds with several instances, each reported on its own
NUMBERED = ("partition", "uploader")
# kinds reported as one figure (the sum over their processes)
SUMMED = ("postgresql", "ray: other", "load generator", "other")
# PostgreSQL's resident shared segment (a component of its own: bounded by its fixed size)
PG_SHARED = "postgresql: shared memory"


def watch(folder: str | Path) -> None:
    """Count the PostgreSQL server of this data folder as the benchmark's."""
    with _WATCHED_LOCK:
        _WATCHED.add(str(folder))


def unwatch(folder: str | Path) -> None:
    with _WATCHED_LOCK:
        _WATCHED.discard(str(folder))


def watched() -> tuple[str, ...]:
    with _WATCHED_LOCK:
        return tuple(sorted(_WATCHED))


def kind_of(cmdline: str, comm: str) -> str:
    """The component kind of a process, by its command line (Ray sets actor processes' titles
    to ``ray::<ClassName>``)."""
    head = cmdline.split(" ", 1)[0]
    if "postgres" in comm or "postgres" in head:
        return "postgresql"
    if head.startswith("ray::"):
        title = head[5:]
        for cls, kind in (
            ("SitePartition", "partition"),
            ("Uploader", "uploader"),
            ("Maintenance", "maintenance"),
            ("Registry", "registry"),
        ):
            if title.startswith(cls):
                return kind
        return "ray: other"
    if (
        comm == "wrk"
        or head.endswith("/wrk")
        or head == "wrk"
        or "benchmarks.openloop" in cmdline
        or "benchmarks.stream" in cmdline
    ):
        return "load generator"
    if "benchmarks.ceiling_app" in cmdline:
        return "ceiling server"
    if "opsmantik" in cmdline and " serve" in cmdline:
        return "gateway"
    if "opsmantik_stream.emulator" in cmdline or "opsmantik emulator" in cmdline or " emulator " in cmdline:
        return "google emulator"
    if "ray" in cmdline or comm in ("raylet", "gcs_server"):
        return "ray: other"
    if "benchmarks" in cmdline:
        return "bench driver"
    return "other"


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    kind: str
    started: int  # clock ticks after boot (orders instances)
    rss: int  # bytes
    pss: int | None  # bytes (PostgreSQL only)
    shmem: int | None = None  # bytes of ``pss`` in shared memory (PostgreSQL only)


def _pss(pid: int) -> tuple[int | None, int | None]:
    """(PSS, the part of it in shared memory) in bytes; a kernel without ``Pss_Shmem`` gives
    ``None`` for the second (then all of it counts as the process's own)."""
    pss: int | None = None
    shmem: int | None = None
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith(b"Pss_Shmem:"):
                    shmem = int(line.split()[1]) * 1024
    except OSError:
        return None, None
    return pss, shmem


def processes() -> Iterator[tuple[int, str, str, list[str]]]:
    """Every process now: pid, name, command line (the name when it has none) and the fields
    of ``/proc/<pid>/stat`` after the name (field k of proc(5) is ``fields[k - 3]``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # exited meanwhile
        rpar = stat.rfind(")")  # the name may hold spaces and parentheses
        comm = stat[stat.find("(") + 1 : rpar]
        yield int(entry.name), comm, cmd or comm, stat[rpar + 2 :].split()


# How long a PostgreSQL process's PSS is reused by a sampler. Reading it (smaps_rollup) walks
# every resident page the process maps, the whole buffer pool included: beside an ingest stack
# after 40 s of batches a sample cost 9.5-9.9 ms of CPU reading it each time and 3.3 ms without
# (more with a paired ceiling's server too), taken at 1 Hz from the two cores the stack under
# test runs on. PostgreSQL's memory moves slowly (the shared segment fills, a backend's own
# memory grows), so a peak read up to this much later than it happened is the same peak.
PSS_MAX_AGE_S = 5.0

# (pid, starttime) -> (when read, PSS, its shared-memory part)
PssCache = dict[tuple[int, int], tuple[float, int | None, int | None]]


def scan(markers: Iterable[str] = (), pss_cache: PssCache | None = None) -> list[ProcInfo]:
    """This benchmark's processes with their memory (see the module doc for "this benchmark's").

    With ``pss_cache`` (kept by the caller between scans), a PostgreSQL process's PSS is read
    again only when the one kept is older than ``PSS_MAX_AGE_S``."""
    marks = tuple(m for m in markers if m)
    rows: dict[int, tuple[int, str, str, int, int]] = {}  # pid -> ppid, comm, cmd, start, rss
    for pid, comm, cmd, fields in processes():
        # fields[k] is stat field k + 3: ppid 4, starttime 22, rss 24 (pages)
        rows[pid] = (int(fields[1]), comm, cmd, int(fields[19]), int(fields[21]) * _PAGE)
    children: dict[int, list[int]] = {}
    for pid, row in rows.items():
        children.setdefault(row[0], []).append(pid)
    roots = [os.getpid()] + [pid for pid, row in rows.items() if marks and any(m in row[2] for m in marks)]
    mine: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in mine or pid not in rows:
            continue
        mine.add(pid)
        stack.extend(children.get(pid, []))
    out = []
    now = time.monotonic()
    for pid in mine:
        _ppid, comm, cmd, started, rss = rows[pid]
        if rss == 0:  # a kernel thread or a zombie
            continue
        kind = kind_of(cmd, comm)
        pss: int | None = None
        shmem: int | None = None
        if kind == "postgresql":
            kept = pss_cache.get((pid, started)) if pss_cache is not None else None
            if kept is not None and now - kept[0] < PSS_MAX_AGE_S:
                pss, shmem = kept[1], kept[2]
            else:
                pss, shmem = _pss(pid)
                if pss_cache is not None:
                    pss_cache[(pid, started)] = (now, pss, shmem)
        out.append(ProcInfo(pid, kind, started, rss, pss, shmem))
    if pss_cache is not None:
        for key in [k for k in pss_cache if k[0] not in mine]:  # exited
            del pss_cache[key]
    return out


class MemorySampler:
    """Memory by component, sampled every ``interval_s`` in a background thread.

    ``start()`` / ``stop()`` around a measurement; ``peaks_mb()`` is the highest value seen
    per component; with ``keep_series`` every sample is kept (``series``: time -> MB per
    component) for the soak's charts. ``sample()`` takes one sample now (no thread needed).
    """

    def __init__(
        self,
        markers: Callable[[], Iterable[str]] = watched,
        *,
        interval_s: float = 1.0,
        keep_series: bool = False,
    ) -> None:
        self._markers = markers
        self.interval_s = interval_s
        self.keep_series = keep_series
        self.series: list[tuple[float, dict[str, float]]] = []
        self.peaks: dict[str, float] = {}
        self._labels: dict[tuple[int, int], str] = {}  # (pid, starttime) -> label
        self._pss: PssCache = {}
        self._counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    def _label(self, p: ProcInfo) -> str:
        if p.kind not in NUMBERED:
            return p.kind
        key = (p.pid, p.started)
        label = self._labels.get(key)
        if label is None:
            n = self._counts[p.kind] = self._counts.get(p.kind, 0) + 1
            label = self._labels[key] = f"{p.kind} {n}"
        return label

    def sample(self) -> dict[str, float]:
        """MB per component now (also folded into the peaks and, if kept, the series)."""
        now: dict[str, float] = {}
        with self._lock:  # (also keeps two samples from sharing the PSS cache at once)
            procs = sorted(scan(self._markers(), self._pss), key=lambda p: (p.started, p.pid))
            for p in procs:
                label = self._label(p)
                size = p.pss if p.pss is not None else p.rss
                if p.shmem is not None:
                    now[PG_SHARED] = now.get(PG_SHARED, 0.0) + p.shmem / MB
                    size -= p.shmem
                now[label] = now.get(label, 0.0) + size / MB
            now = {k: round(v, 1) for k, v in now.items()}
            for k, v in now.items():
                if v > self.peaks.get(k, 0.0):
                    self.peaks[k] = v
            if self.keep_series:
                self.series.append((round(time.monotonic() - self._t0, 1), now))
        return now

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # a process vanished mid-read: the next tick sees the new state
                pass
            self._stop.wait(self.interval_s)

    def start(self) -> MemorySampler:
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        return self.peaks_mb()

    def reset_peaks(self) -> None:
        with self._lock:
            self.peaks = {}

    def peaks_mb(self) -> dict[str, float]:
        """The peak MB per component, largest first (benchmark driver last)."""
        with self._lock:
            items = dict(self.peaks)
        return dict(sorted(items.items(), key=lambda kv: (kv[0] == "bench driver", -kv[1])))


def product_peaks(peaks: dict[str, float]) -> dict[str, float]:
    """The product's components only (not the load generators, the emulator, the driver)."""
    skip = ("load generator", "bench driver", "google emulator", "other")
    return {k: v for k, v in peaks.items() if k not in skip}


def peaks_note(peaks: dict[str, float]) -> str:
    """One line for a result's note: peak RSS of the product's components."""
    shown = product_peaks(peaks)
    if not shown:
        return ""
    return "peak RSS " + ", ".join(f"{k} {v:,.0f} MB" for k, v in shown.items())
