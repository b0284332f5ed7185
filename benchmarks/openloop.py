"""Open-loop load at a fixed rate, for latency at a given offered load.

wrk is closed-loop (a new request only when one returns), which hides queueing delay, so
latency at 25/50/100 % of peak comes from this generator: ``processes`` separate worker
processes (uvloop + raw HTTP/1.1 keep-alive connections), each sending its share of the
rate on a fixed schedule whether or not earlier requests returned. Latency is measured from
the *scheduled* send time (no coordinated omission): a request that waits for a free
connection, or for the generator itself, counts that wait. Each worker reports how late it
sent (``send_lag``), and how much of that was its own lateness (``schedule_lag``: how late
its loop came to the request, before any wait for a connection). A saturated or stalled
generator shows in the second; a server that holds every connection only in the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from benchmarks.payloads import SiteRef, batch_body, single_body

__all__ = ["Connections", "OpenLoopResult", "percentile", "run_open_loop", "window_p99s"]

# the shortest sleep the schedule takes (uvloop's timer resolution: 1 ms)
_TICK_S = 0.001


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; 0.0 for none."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return float(s[k])


def window_p99s(series: Sequence[tuple[float, float]], width_s: float = 10.0) -> list[float]:
    """The p99 latency (ms) of each consecutive ``width_s`` window of a point, by scheduled
    send time (``series`` as ``run_open_loop(series=True)`` returns it). A trailing window
    shorter than half of ``width_s`` is left out: too few requests to say anything."""
    if not series:
        return []
    start = min(t for t, _ in series)
    buckets: dict[int, list[float]] = {}
    for t, latency in series:
        buckets.setdefault(int((t - start) // width_s), []).append(latency)
    end = max(t for t, _ in series)
    last = int((end - start) // width_s)
    keep = [k for k in sorted(buckets) if k < last or (end - start) - last * width_s >= width_s / 2]
    return [round(percentile(buckets[k], 99), 2) for k in keep]


@dataclass
class OpenLoopResult:
    offered_rps: float
    achieved_rps: float
    sent: int
    completed: int
    unfinished: int
    statuses: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    send_lag_p99_ms: float
    processes: int
    # how late the generator's own loop came to each request (the send lag without the wait
    # for a free connection, which a slow server causes)
    schedule_lag_p99_ms: float = 0.0
    # (scheduled send time as Unix time, latency in ms) of every answered request, only when
    # asked for (``series=True``): lines requests up with other clocks (benchmarks/tail.py)
    series: list[tuple[float, float]] | None = None
    # the p99 of each 10 s window of the point (only with ``series=True``): how much of the
    # point's p99 one bad stretch made
    window_p99_ms: list[float] | None = None
    # what the machine did in each of those windows (``benchmarks.timeline.windows``), when
    # the caller sampled it (``scenario_kit.sweep`` does for the judged point)
    window_machine: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The figures (without the series, which only the tail diagnosis reads)."""
        return {k: v for k, v in asdict(replace(self, series=None)).items() if k != "series"}


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self, on_free: Any) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: tuple[float, Any] | None = None
        self.on_free = on_free
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None:
            intended, done = self.waiter
            self.waiter = None
            done(intended, "conn_error")

    def send(self, data: bytes, intended: float, done: Any) -> None:
        assert self.transport is not None
        self.waiter = (intended, done)
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.waiter is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            status = head.split(" ", 2)[1]
            del self.buf[: end + 4 + length]
            intended, done = self.waiter
            self.waiter = None
            done(intended, status)
            self.on_free(self)


class Connections:
    """The keep-alive connections of one open-loop worker: the idle ones, and one more
    opened (up to ``max_conns``) whenever a request finds none idle; a new connection is
    handed to ``on_free`` as soon as it is open."""

    def __init__(self, host: str, port: int, max_conns: int, on_free: Any) -> None:
        self.host, self.port, self.max_conns, self.on_free = host, port, max_conns, on_free
        self.idle: deque[_Conn] = deque()
        self.all: list[_Conn] = []
        self._opening = 0
        self._tasks: set[asyncio.Task[None]] = set()  # keeps references to the openers

    async def open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _Conn(self.on_free), self.host, self.port)
        self.all.append(proto)
        return proto

    def take(self) -> _Conn | None:
        """An idle open connection, or None."""
        while self.idle and self.idle[0].closed:
            self.idle.popleft()
        return self.idle.popleft() if self.idle else None

    def grow(self) -> None:
        """Open one more connection in the background, unless ``max_conns`` are open or opening."""
        if len(self.all) + self._opening >= self.max_conns:
            return
        self._opening += 1
        task = asyncio.get_running_loop().create_task(self._grow())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _grow(self) -> None:
        try:
            conn = await self.open()
        except OSError:
            return
        finally:
            self._opening -= 1
        self.on_free(conn)

    def close(self) -> None:
        for c in self.all:
            if c.transport is not None:
                c.transport.close()


async def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    sites = [SiteRef(**s) for s in cfg["sites"]]
    host, port, path = cfg["host"], cfg["port"], cfg["path"]
    rate, seconds, max_conns = cfg["rate"], cfg["seconds"], cfg["max_conns"]
    run, batch = cfg["run"], cfg["batch"]
    total = int(rate * seconds)
    pending: deque[tuple[float, bytes]] = deque()
    latencies: list[float] = []
    series: list[tuple[float, float]] | None = [] if cfg.get("series") else None
    # perf_counter -> Unix time, for the series only
    wall0 = time.time() - time.perf_counter()
    lags: list[float] = []
    schedule_lags: list[float] = []
    statuses: dict[str, int] = {}
    completed_in_window = 0
    outstanding = 0
    t0 = 0.0
    all_done = loop.create_future()

    def done(intended: float, status: str) -> None:
        nonlocal outstanding, completed_in_window
        now = clock()
        outstanding -= 1
        statuses[status] = statuses.get(status, 0) + 1
        if status != "conn_error":
            latencies.append((now - intended) * 1000.0)
            if series is not None:
                series.append((intended + wall0, (now - intended) * 1000.0))
            if now <= t0 + seconds and status.startswith("2"):
                completed_in_window += 1
        if outstanding == 0 and sent_all and not all_done.done():
            all_done.set_result(None)

    def on_free(conn: _Conn) -> None:
        if pending:
            intended, body = pending.popleft()
            lags.append((clock() - intended) * 1000.0)
            conn.send(body, intended, done)
        else:
            pool.idle.append(conn)

    pool = Connections(host, port, max_conns, on_free)

    def build(n: int) -> bytes:
        site = sites[n % len(sites)]
        body = single_body(site, run, n) if batch == 0 else batch_body(site, run, n, batch)
        return (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Origin: {site.origin}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    # bodies are built before the clock starts, so the schedule costs the generator little
    offset, stride = cfg["offset"], cfg["stride"]
    prepared = [build(offset + i * stride) for i in range(total)]
    clock = time.perf_counter

    for _ in range(min(max_conns, cfg["initial_conns"])):
        pool.idle.append(await pool.open())

    sent_all = False
    t0 = clock() + 0.05
    n = 0
    while n < total:
        now = clock()
        due = t0 + n / rate
        if due > now:
            # uvloop's timers count whole milliseconds and run a shorter sleep at once: sleeping
            # `due - now` (under 1 ms at these rates) spun the loop, and that busy wait took
            # about a third of a core from the stack under test. Sleep at least a tick; what
            # fell due meanwhile is sent on waking, its latency still counted from `intended`.
            await asyncio.sleep(min(max(due - now, _TICK_S), 0.002))
            continue
        while n < total and t0 + n / rate <= now:
            intended = t0 + n / rate
            schedule_lags.append((now - intended) * 1000.0)
            data = prepared[n]
            outstanding += 1
            n += 1
            conn = pool.take()
            if conn is not None:
                lags.append((clock() - intended) * 1000.0)
                conn.send(data, intended, done)
            else:
                pending.append((intended, data))
                pool.grow()
    sent_all = True
    if outstanding == 0 and not all_done.done():
        all_done.set_result(None)
    try:
        await asyncio.wait_for(asyncio.shield(all_done), cfg["drain_s"])
    except TimeoutError:
        pass
    pool.close()
    return {
        "sent": total,
        "completed": len(latencies),
        "completed_in_window": completed_in_window,
        "unfinished": outstanding,
        "statuses": statuses,
        "latencies": latencies,
        "lags": lags,
        "schedule_lags": schedule_lags,
        "series": series,
    }


def _worker_main(raw: str) -> None:
    import uvloop

    cfg = json.loads(raw)
    result = uvloop.run(_worker(cfg))
    with open(cfg["out"], "w") as fh:
        json.dump(result, fh)


def run_open_loop(
    host: str,
    port: int,
    sites: Sequence[SiteRef],
    *,
    rate: float,
    seconds: float,
    run: str,
    batch: int = 0,
    processes: int = 1,
    max_conns: int = 256,
    path: str = "/api/sync",
    drain_s: float = 15.0,
    series: bool = False,
) -> OpenLoopResult:
    """Offer ``rate`` requests/s for ``seconds`` from ``processes`` worker processes
    (``series``: also return every answered request's send time and latency)."""
    procs = []
    folder = tempfile.mkdtemp(prefix="opsm-openloop-")
    for i in range(processes):
        cfg = {
            "host": host,
            "port": port,
            "path": path,
            "rate": rate / processes,
            "seconds": seconds,
            "max_conns": max(1, max_conns // processes),
            "initial_conns": 16,
            "run": run,
            "batch": batch,
            "sites": [asdict(s) for s in sites],
            "drain_s": drain_s,
            "series": series,
            "offset": i,
            "stride": processes,
            "out": os.path.join(folder, f"w{i}.json"),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.openloop", "--worker", json.dumps(cfg)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    try:
        for i, p in enumerate(procs):
            _, err = p.communicate(timeout=seconds + drain_s + 60)
            if p.returncode != 0:
                raise RuntimeError(f"open-loop worker failed: {err[-800:]}")
            with open(os.path.join(folder, f"w{i}.json")) as fh:
                outs.append(json.load(fh))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    latencies = [x for o in outs for x in o["latencies"]]
    lags = [x for o in outs for x in o["lags"]]
    schedule_lags = [x for o in outs for x in o["schedule_lags"]]
    statuses: dict[str, int] = {}
    for o in outs:
        for k, v in o["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    ok_in_window = sum(o["completed_in_window"] for o in outs)
    every = sorted(x for o in outs for x in o["series"]) if series else None
    return OpenLoopResult(
        offered_rps=rate,
        achieved_rps=ok_in_window / seconds,
        sent=sum(o["sent"] for o in outs),
        completed=len(latencies),
        unfinished=sum(o["unfinished"] for o in outs),
        statuses=statuses,
        p50_ms=round(percentile(latencies, 50), 2),
        p90_ms=round(percentile(latencies, 90), 2),
        p99_ms=round(percentile(latencies, 99), 2),
        max_ms=round(max(latencies, default=0.0), 2),
        send_lag_p99_ms=round(percentile(lags, 99), 2),
        processes=processes,
        schedule_lag_p99_ms=round(percentile(schedule_lags, 99), 2),
        series=every,
        window_p99_ms=window_p99s(every) if every is not None else None,
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="open-loop worker (used by the benchmark suite)")
    ap.add_argument("--worker", required=True, help="JSON configuration")
    _worker_main(ap.parse_args().worker)
