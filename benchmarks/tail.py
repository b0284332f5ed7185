"""Where the latency tail at a fixed load comes from: the commit's flush, or the rest.

    python -m benchmarks.tail --rate 2000        # about 4 minutes on 2 cores

A diagnosis, not part of `make bench`. It starts a 2-partition stack the way a user does
(`opsmantik serve`, 8 sites via the CLI), warms it with two 15 s wrk runs, then offers
single-event requests open-loop at ``--rate`` for ``--points`` points of ``--seconds`` each,
alternating in ABBA order (so that neither setting always runs first, or always lands on the
same phase of the machine's periodic work):

- A, the product: ``synchronous_commit = on``. A 2xx leaves only after the batch's commit
  record is flushed to disk.
- B, a diagnosis only: ``synchronous_commit = off``. The same work, but the commit does not
  wait for its flush. The product never runs like this: it would acknowledge events that a
  crash can lose.

The difference between the two p99s is what waiting for the flush costs at that load.

Beside the load, a probe thread writes 8 KB to a file in the stack's data folder and times an
``fdatasync`` every ``--probe-ms``: the disk's own flush latency, measured apart from
PostgreSQL. For each point the report lists:

- how many flushes took over 10 ms;
- the point's stall windows: the 100 ms windows that hold requests over the point's p99;
- how many of those windows had such a slow probe flush start within the 300 ms before them,
  or inside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.openloop import OpenLoopResult, percentile, run_open_loop
from benchmarks.stack import ServeStack
from benchmarks.wrk import ensure_wrk, run_wrk

__all__ = ["FlushProbe", "stall_windows"]

SLOW_FLUSH_MS = 10.0
WINDOW_S = 0.1
# a slow flush explains a stall window when it started this long before the window, or inside it
LOOKBACK_S = 0.3
SETTINGS = {"A": "on", "B": "off"}


class FlushProbe:
    """Times ``fdatasync`` of an 8 KB write every ``interval_s`` in a thread: (Unix start
    time, milliseconds) of each flush."""

    def __init__(self, path: Path, interval_s: float) -> None:
        self.path = path
        self.interval_s = interval_s
        self.flushes: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FlushProbe:
        self._thread = threading.Thread(target=self._run, name="flush-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        block = b"\0" * 8192
        try:
            n = 0
            while not self._stop.is_set():
                os.pwrite(fd, block, (n % 1024) * 8192)  # rewrite a 8 MB region, like WAL pages
                n += 1
                started = time.time()
                t0 = time.perf_counter()
                os.fdatasync(fd)
                self.flushes.append((started, (time.perf_counter() - t0) * 1000.0))
                self._stop.wait(self.interval_s)
        finally:
            os.close(fd)


def stall_windows(
    series: list[tuple[float, float]], flushes: list[tuple[float, float]]
) -> tuple[float, list[dict[str, Any]]]:
    """The point's p99, and its stall windows (100 ms windows holding requests over that
    p99), each with its worst latency and the slow probe flushes that started within
    ``LOOKBACK_S`` before it or inside it."""
    if not series:
        return 0.0, []
    p99 = percentile([lat for _, lat in series], 99)
    by_window: dict[int, list[float]] = defaultdict(list)
    for sent, lat in series:
        by_window[int(sent / WINDOW_S)].append(lat)
    slow = [(t, ms) for t, ms in flushes if ms > SLOW_FLUSH_MS]
    out = []
    for w, lats in sorted(by_window.items()):
        over = sum(1 for x in lats if x > p99)
        if not over:
            continue
        start = w * WINDOW_S
        near = [round(ms, 1) for t, ms in slow if start - LOOKBACK_S <= t < start + WINDOW_S]
        out.append({"start": start, "over_p99": over, "worst_ms": round(max(lats), 1), "slow_flushes_ms": near})
    return p99, out


def _point(stack: ServeStack, sites: Any, port: int, args: argparse.Namespace, name: str, k: int) -> dict[str, Any]:
    stack.sql(f"ALTER SYSTEM SET synchronous_commit = {SETTINGS[name]}")
    stack.sql("SELECT pg_reload_conf()")
    time.sleep(3)  # let the reload reach every backend
    with FlushProbe(stack.data_dir / "flush-probe.dat", args.probe_ms / 1000.0) as probe:
        res: OpenLoopResult = run_open_loop(
            "127.0.0.1", port, sites, rate=args.rate, seconds=args.seconds, run=f"tail{k}{name}", series=True
        )
    flushes = probe.flushes
    p99, windows = stall_windows(res.series or [], flushes)
    lat = sorted(ms for _, ms in flushes)
    return {
        "setting": name,
        "synchronous_commit": SETTINGS[name],
        "achieved_rps": round(res.achieved_rps),
        "p50_ms": res.p50_ms,
        "p99_ms": round(p99, 1),
        "send_lag_p99_ms": res.send_lag_p99_ms,
        "probe_flushes": len(lat),
        "probe_flush_p50_ms": round(percentile(lat, 50), 2),
        "probe_flush_max_ms": round(max(lat, default=0.0), 1),
        "probe_flushes_over_10ms": sum(1 for x in lat if x > SLOW_FLUSH_MS),
        "stall_windows": len(windows),
        "stall_windows_with_slow_flush": sum(1 for w in windows if w["slow_flushes_ms"]),
        "windows": windows,
    }


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.tail", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        metavar="REQUESTS_PER_S",
        help="offered single-event requests/s (default 2000; use half of the single-event peak of `make bench`)",
    )
    ap.add_argument("--points", type=int, default=2, help="ABBA groups to run: 4 points each (default 2)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each point (default 10)")
    ap.add_argument("--probe-ms", type=float, default=20.0, help="interval of the flush probe in ms (default 20)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every point as JSON here")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install wrk when it is missing")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rate <= 0 or args.points < 1 or args.seconds <= 0 or args.probe_ms <= 0:
        print("--rate, --points, --seconds and --probe-ms must be positive", file=sys.stderr)
        return 2
    wrk = None if args.no_install else ensure_wrk()
    if wrk is None:
        print("wrk is needed for the warm-up (apt-get install wrk)", file=sys.stderr)
        return 2
    points: list[dict[str, Any]] = []
    with ServeStack(partitions=2, uploaders=0, label="tail") as stack:
        sites = stack.create_sites(8)
        for k in range(2):
            print(f"warm-up {k + 1}/2 (wrk, 15 s) ...", flush=True)
            run_wrk(wrk, stack.base_url, sites, run=f"tailwarm{k}", batch=0, seconds=15, connections=64)
        port = int(stack.base_url.rsplit(":", 1)[1])
        order = "ABBA" * args.points
        for k, name in enumerate(order):
            p = _point(stack, sites, port, args, name, k)
            points.append(p)
            print(
                f"[{k + 1}/{len(order)}] synchronous_commit={p['synchronous_commit']:<3} "
                f"{p['achieved_rps']:,} req/s  p50 {p['p50_ms']:.1f} ms  p99 {p['p99_ms']:.1f} ms  "
                f"send lag p99 {p['send_lag_p99_ms']:.1f} ms | probe flushes {p['probe_flushes']}, "
                f"p50 {p['probe_flush_p50_ms']:.2f} ms, {p['probe_flushes_over_10ms']} over 10 ms, "
                f"max {p['probe_flush_max_ms']:.0f} ms | stall windows {p['stall_windows']}, "
                f"{p['stall_windows_with_slow_flush']} with a slow flush",
                flush=True,
            )
    for name in "AB":
        mine = [p for p in points if p["setting"] == name]
        label = "on  (the product)" if name == "A" else "off (diagnosis only)"
        print(
            f"synchronous_commit {label}: p99 median {statistics.median(p['p99_ms'] for p in mine):.1f} ms "
            f"(points: {', '.join(format(p['p99_ms'], '.0f') for p in mine)}); stall windows with a slow flush: "
            f"{sum(p['stall_windows_with_slow_flush'] for p in mine)} of {sum(p['stall_windows'] for p in mine)}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"rate": args.rate, "seconds": args.seconds, "points": points}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
