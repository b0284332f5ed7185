"""Open-loop load for long runs (the soak): bodies made as they are sent, figures per window.

``benchmarks/openloop.py`` builds every body before the clock starts and reports once at the
end; for 30 minutes that would hold a million bodies and say nothing while it runs. Here
each worker process asks ``benchmarks/mix.py`` for the next request at its scheduled time,
sends on the same fixed schedule (latency from the *scheduled* time: no coordinated
omission; ``_Conn`` is the same keep-alive connection), and every second writes what
completed as a JSON line: per window of ``window_s`` (by scheduled time), the latencies, the
answers by kind and status, the requests sent and the worst send lag. ``StreamLoad`` in the
driver gathers those lines, so the soak can sample p50/p99 and throughput every window
while the load runs, and compare whole windows (the first and last five minutes) exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.mix import TrafficMix
from benchmarks.openloop import Connections, _Conn, percentile
from benchmarks.payloads import SiteRef

__all__ = ["StreamLoad", "Window"]


class _Delta:
    __slots__ = ("counts", "lag_max", "lat", "sent")

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.counts: Counter[str] = Counter()
        self.sent = 0
        self.lag_max = 0.0


async def _worker(cfg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    sites = [SiteRef(**s) for s in cfg["sites"]]
    host, port, path = cfg["host"], cfg["port"], cfg["path"]
    rate, seconds, window_s = cfg["rate"], cfg["seconds"], cfg["window_s"]
    mix = TrafficMix(sites, cfg["run"], cfg["worker"], active=cfg["active_sessions"])
    clock = time.perf_counter
    # the same start for every worker: the driver's wall-clock start, on this clock
    t0 = clock() + max(0.0, cfg["start_at"] - time.time())
    total = int(rate * seconds)
    deltas: dict[int, _Delta] = {}
    pending: deque[tuple[float, str, bytes]] = deque()
    outstanding = 0
    sent_all = False
    all_done = loop.create_future()
    out = sys.stdout

    def delta(intended: float) -> _Delta:
        w = int((intended - t0) // window_s)
        d = deltas.get(w)
        if d is None:
            d = deltas[w] = _Delta()
        return d

    def finish(intended: float, kind: str, status: str) -> None:
        nonlocal outstanding
        outstanding -= 1
        d = delta(intended)
        d.counts[f"{kind}:{status}"] += 1
        if status != "conn_error":
            d.lat.append(round((clock() - intended) * 1000.0, 3))
        if outstanding == 0 and sent_all and not all_done.done():
            all_done.set_result(None)

    def send(conn: _Conn, intended: float, kind: str, data: bytes) -> None:
        lag = (clock() - intended) * 1000.0
        d = delta(intended)
        d.lag_max = max(d.lag_max, lag)
        conn.send(data, intended, lambda i, status: finish(i, kind, status))

    def on_free(conn: _Conn) -> None:
        if pending:
            intended, kind, data = pending.popleft()
            send(conn, intended, kind, data)
        else:
            pool.idle.append(conn)

    pool = Connections(host, port, cfg["max_conns"], on_free)

    def flush(final: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {
            "deltas": {
                str(w): {"lat": d.lat, "counts": dict(d.counts), "sent": d.sent, "lag_max": round(d.lag_max, 1)}
                for w, d in deltas.items()
            }
        }
        deltas.clear()
        if final is not None:
            body["final"] = final
        out.write(json.dumps(body, separators=(",", ":")) + "\n")
        out.flush()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(1.0)
            flush()

    for _ in range(min(cfg["max_conns"], 8)):
        pool.idle.append(await pool.open())
    flushing = loop.create_task(flusher())
    n = 0
    while n < total:
        now = clock()
        due = t0 + n / rate
        if due > now:
            await asyncio.sleep(min(due - now, 0.002))
            continue
        while n < total and t0 + n / rate <= now:
            intended = t0 + n / rate
            req = mix.next()
            head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            if req.origin is not None:
                head += f"Origin: {req.origin}\r\n"
            data = (head + f"Content-Length: {len(req.body)}\r\n\r\n").encode() + req.body
            n += 1
            outstanding += 1
            delta(intended).sent += 1
            # a resent heartbeat adds no event row even when it is the copy that was stored
            tag = req.kind if req.kind != "duplicate" or req.stores_row else "duplicate_heartbeat"
            conn = pool.take()
            if conn is not None:
                send(conn, intended, tag, data)
            else:
                pending.append((intended, tag, data))
                pool.grow()
    sent_all = True
    if outstanding == 0 and not all_done.done():
        all_done.set_result(None)
    try:
        await asyncio.wait_for(asyncio.shield(all_done), cfg["drain_s"])
    except TimeoutError:
        pass
    flushing.cancel()
    pool.close()
    flush(
        {
            "sent": total,
            "unfinished": outstanding,
            "sessions": mix.sessions_started,
            "returning_sessions": mix.returning_started,
            "returning_pool": len(mix.visitors),
        }
    )


@dataclass
class Window:
    """What the workers reported for one window (by scheduled send time)."""

    index: int
    lat: array[float] = field(default_factory=lambda: array("f"))
    counts: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    lag_max: float = 0.0

    def ok(self) -> int:
        return sum(v for k, v in self.counts.items() if k.rsplit(":", 1)[1].startswith("2"))


class StreamLoad:
    """``processes`` workers offering ``rate`` requests/s in total for ``seconds``."""

    def __init__(
        self,
        host: str,
        port: int,
        sites: Sequence[SiteRef],
        *,
        rate: float,
        seconds: float,
        run: str,
        window_s: float = 10.0,
        processes: int = 2,
        max_conns: int = 256,
        active_sessions: int = 300,
        drain_s: float = 30.0,
    ) -> None:
        self.window_s = window_s
        self.seconds = seconds
        self.rate = rate
        self.start_at = time.time() + 2.0
        self.windows: dict[int, Window] = {}
        self.finals: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen[str]] = []
        self._threads: list[threading.Thread] = []
        self._cfgs = [
            {
                "host": host,
                "port": port,
                "path": "/api/sync",
                "rate": rate / processes,
                "seconds": seconds,
                "window_s": window_s,
                "start_at": self.start_at,
                "sites": [asdict(s) for s in sites],
                "run": run,
                "worker": i,
                "max_conns": max(1, max_conns // processes),
                "active_sessions": active_sessions,
                "drain_s": drain_s,
            }
            for i in range(processes)
        ]

    def start(self) -> StreamLoad:
        for cfg in self._cfgs:
            p = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.stream", "--worker", json.dumps(cfg)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self._procs.append(p)
            t = threading.Thread(target=self._read, args=(p,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _read(self, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                for key, d in msg.get("deltas", {}).items():
                    w = self.windows.get(int(key))
                    if w is None:
                        w = self.windows[int(key)] = Window(int(key))
                    w.lat.extend(d["lat"])
                    w.counts.update(d["counts"])
                    w.sent += d["sent"]
                    w.lag_max = max(w.lag_max, d["lag_max"])
                if "final" in msg:
                    self.finals.append(msg["final"])

    def elapsed(self) -> float:
        return time.time() - self.start_at

    def running(self) -> bool:
        return any(p.poll() is None for p in self._procs)

    def wait(self, timeout_s: float) -> None:
        """Wait for the workers to finish (raise with their error output if one failed)."""
        deadline = time.monotonic() + timeout_s
        for p in self._procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        for t in self._threads:
            t.join(timeout=30)
        for p in self._procs:
            err = p.stderr.read() if p.stderr is not None else ""
            if p.returncode != 0:
                self.errors.append(f"worker exited with {p.returncode}: {err[-800:]}")
        if self.errors:
            raise RuntimeError("; ".join(self.errors))

    def stop(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.terminate()

    # ------------------------------------------------------------------ figures

    def window(self, index: int) -> dict[str, Any]:
        """p50/p99, answers/s and sent/s of one window (what has arrived so far)."""
        with self._lock:
            w = self.windows.get(index)
            if w is None:
                return {"window": index, "sent_per_s": 0.0, "ok_per_s": 0.0, "p50_ms": None, "p99_ms": None}
            lat = list(w.lat)
            ok, sent, lag = w.ok(), w.sent, w.lag_max
        return {
            "window": index,
            "sent_per_s": round(sent / self.window_s, 1),
            "ok_per_s": round(ok / self.window_s, 1),
            "p50_ms": round(percentile(lat, 50), 2) if lat else None,
            "p99_ms": round(percentile(lat, 99), 2) if lat else None,
            "send_lag_max_ms": lag,
        }

    def span(self, first: int, last: int) -> dict[str, Any]:
        """p50/p99 over the windows ``first`` .. ``last`` (inclusive), all their latencies."""
        with self._lock:
            lat: list[float] = []
            sent = ok = 0
            for i in range(first, last + 1):
                w = self.windows.get(i)
                if w is not None:
                    lat.extend(w.lat)
                    sent += w.sent
                    ok += w.ok()
        return {
            "windows": [first, last],
            "requests": len(lat),
            "sent": sent,
            "ok": ok,
            "p50_ms": round(percentile(lat, 50), 2) if lat else None,
            "p99_ms": round(percentile(lat, 99), 2) if lat else None,
        }

    def counts(self) -> Counter[str]:
        """Answers by ``kind:status`` over the whole run."""
        with self._lock:
            total: Counter[str] = Counter()
            for w in self.windows.values():
                total.update(w.counts)
            return total


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="soak load worker (used by the benchmark suite)")
    ap.add_argument("--worker", required=True, help="JSON configuration")
    import uvloop

    uvloop.run(_worker(json.loads(ap.parse_args().worker)))
