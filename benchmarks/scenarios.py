"""The benchmark scenarios (SPEC.md §11). Each appends ``Result``s to the run context.

Every load is bounded in count and time, every server binds 127.0.0.1, and every stack is
started as a user would (``opsmantik serve`` subprocess in a temporary data folder, sites
via the CLI). Figures are judged against ceilings measured earlier in the same run.

This module lists the scenarios and runs them in order; they live in ``ceiling_scenarios``,
``ingest_scenarios``, ``upload_scenarios`` and ``soak``, and share ``scenario_kit``.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.ceiling_scenarios import http_ceiling, store_ceiling
from benchmarks.ingest_scenarios import ingest, partitions
from benchmarks.memory import MemorySampler, peaks_note
from benchmarks.scenario_kit import Context
from benchmarks.upload_scenarios import uploads

__all__ = ["DEFAULT_SCENARIOS", "SCENARIOS", "Context", "run_all"]

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
