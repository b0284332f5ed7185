"""What a run did inside the product, read before and after it: partition calls and the
events they carried (the gateway's ``opsmantik_ingest_batch_events`` histogram), commits
(PostgreSQL's ``xact_commit``), and CPU milliseconds per request or event by component.

These explain a ratio: on a noisy or different machine, CPU per unit of work moves much
less than throughput does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["Snapshot", "cpu_ms_per_unit", "diff", "snapshot"]

_BUCKET = re.compile(r'^opsmantik_ingest_batch_events_bucket\{le="([^"]+)"\} (\S+)$', re.MULTILINE)
_COUNT = re.compile(r"^opsmantik_ingest_batch_events_count (\S+)$", re.MULTILINE)
_SUM = re.compile(r"^opsmantik_ingest_batch_events_sum (\S+)$", re.MULTILINE)


@dataclass
class Snapshot:
    calls: float = 0.0
    events: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count
    commits: int = 0
    wal_bytes: int = 0


def snapshot(base_url: str, stack: Any = None) -> Snapshot:
    """The gateway's batch histogram (and the database's commits when ``stack`` is given)."""
    text = httpx.get(base_url + "/metrics", timeout=30).text
    snap = Snapshot()
    m = _COUNT.search(text)
    snap.calls = float(m.group(1)) if m else 0.0
    m = _SUM.search(text)
    snap.events = float(m.group(1)) if m else 0.0
    for le, n in _BUCKET.findall(text):
        snap.buckets[math.inf if le == "+Inf" else float(le)] = float(n)
    if stack is not None:
        snap.commits = int(
            stack.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        )
        # bytes of WAL written so far (the server's, all databases: the stack is alone on it)
        snap.wal_bytes = int(stack.fetchval("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"))
    return snap


def _quantile(buckets: dict[float, float], q: float) -> float | None:
    """Histogram quantile by linear interpolation inside the bucket (as Prometheus does)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            span = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 1.0)
        prev_bound, prev_count = bound, count
    return prev_bound


def diff(before: Snapshot, after: Snapshot, seconds: float) -> dict[str, Any]:
    """Partition calls/s, events per call (mean, p50, p99) and commits/s between two snapshots."""
    calls = after.calls - before.calls
    buckets = {b: after.buckets.get(b, 0.0) - before.buckets.get(b, 0.0) for b in after.buckets}
    out: dict[str, Any] = {
        "partition_calls_per_s": round(calls / seconds, 1) if seconds else 0.0,
        "events_per_call_mean": round((after.events - before.events) / calls, 1) if calls else None,
        "events_per_call_p50": _round(_quantile(buckets, 0.50)),
        "events_per_call_p99": _round(_quantile(buckets, 0.99)),
    }
    if after.commits:
        out["commits_per_s"] = round((after.commits - before.commits) / seconds, 1) if seconds else 0.0
    events = after.events - before.events
    if after.wal_bytes and events:
        out["wal_bytes_per_event"] = round((after.wal_bytes - before.wal_bytes) / events)
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def cpu_ms_per_unit(cpu_percent: dict[str, float], units_per_s: float) -> dict[str, float]:
    """CPU milliseconds per request (or event) by component, from CPU % of one core."""
    if units_per_s <= 0:
        return {}
    # x % of a core for a second is 10·x ms of CPU
    return {k: round(v * 10.0 / units_per_s, 4) for k, v in cpu_percent.items() if not k.startswith("total")}
