"""Figures an actor keeps in its own process and hands to the gateway's ``/metrics``.

Why not prometheus-client inside the actors: uploaders and partitions are Ray actors in other
processes, often on other nodes. prometheus-client's registry is per process, its
multiprocess mode needs one shared directory on one machine, and Ray's own metrics API
exports through Ray's metrics agent on another port, not through the gateway's ``/metrics``.
So an actor keeps plain counters and histogram buckets here (an integer or float add per
observation; no lock: an actor's event loop is one thread) and answers a ``metrics()`` call
with :meth:`Stats.snapshot`. The gateway asks every actor of the routing table at scrape time
and renders the snapshots with the actor's name as a label (``gateway/metrics.py``).

The metric definitions (:data:`UPLOADER_METRICS`) live here, once: the uploader records by
them, the gateway renders by them, and the documentation's reference table lists them.

:func:`lru_cache_figures` reads ``functools.lru_cache`` statistics of the calling process at
scrape time, so cache hit rates cost the hot path nothing beyond what ``lru_cache`` counts.
"""

from __future__ import annotations

import bisect
import functools
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "LATENCY_BUCKETS_S",
    "UPLOADER_METRICS",
    "Histogram",
    "MetricSpec",
    "Stats",
    "lru_cache_figures",
]

#: Google answers in tens to hundreds of milliseconds; a timeout is seconds.
LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Token-bucket waits: zero for most sends, up to a minute for a conversions budget.
WAIT_BUCKETS_S: tuple[float, ...] = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric an actor records. ``name`` is the exposed name without ``_total`` (the
    renderer adds it to counters); ``labels`` exclude the actor label the gateway adds."""

    name: str
    kind: Literal["counter", "histogram"]
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


UPLOADER_METRICS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec(
            "opsmantik_upload_request_duration_seconds",
            "histogram",
            "Duration of one HTTP request to the destination's API (Google), as the uploader saw it",
            ("destination",),
            LATENCY_BUCKETS_S,
        ),
        MetricSpec(
            "opsmantik_upload_responses",
            "counter",
            "Answers to upload requests by HTTP status ('none': no HTTP answer) and the "
            "request-level error code ('none': no request-level error)",
            ("destination", "status", "code"),
        ),
        MetricSpec(
            "opsmantik_upload_rows",
            "counter",
            "Queue rows an uploader finished, by the status they moved to "
            "(completed, failed, retry, blocked; late: a rescued claim, nothing changed)",
            ("destination", "outcome"),
        ),
        MetricSpec(
            "opsmantik_upload_bucket_wait_seconds",
            "histogram",
            "Time one request waited for its account's token bucket before it was sent",
            ("destination",),
            WAIT_BUCKETS_S,
        ),
        MetricSpec(
            "opsmantik_upload_breaker_transitions",
            "counter",
            "Circuit-breaker state changes an uploader made (from_state -> to_state)",
            ("destination", "from_state", "to_state"),
        ),
    )
}


class Histogram:
    """Cumulative-on-render histogram: one count per bucket (non-cumulative), sum, count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value


class Stats:
    """Counters and histograms of one actor, keyed by (metric name, label values)."""

    def __init__(self, specs: dict[str, MetricSpec]) -> None:
        self._specs = specs
        self.counters: dict[tuple[str, tuple[str, ...]], float] = {}
        self.histograms: dict[tuple[str, tuple[str, ...]], Histogram] = {}

    def inc(self, name: str, labels: tuple[str, ...], n: float = 1) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0) + n

    def observe(self, name: str, labels: tuple[str, ...], value: float) -> None:
        key = (name, labels)
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = Histogram(self._specs[name].buckets)
        hist.observe(value)

    def snapshot(self) -> dict[str, Any]:
        """Plain data (lists, tuples, numbers) that travels through a Ray call."""
        return {
            "counters": [(name, labels, value) for (name, labels), value in self.counters.items()],
            "histograms": [
                (name, labels, list(h.counts), h.sum, h.count) for (name, labels), h in self.histograms.items()
            ],
        }


_CACHE_PACKAGES = ("opsmantik_stream", "gateway", "actors")


def lru_cache_figures(packages: Iterable[str] = _CACHE_PACKAGES) -> dict[str, tuple[int, int, int, int]]:
    """``module.function -> (hits, misses, entries, capacity)`` for every ``lru_cache`` defined
    in the project's modules loaded in this process (read at scrape time; costs nothing)."""
    prefixes = tuple(packages)
    out: dict[str, tuple[int, int, int, int]] = {}
    for mod_name, module in list(sys.modules.items()):
        if module is None or not mod_name.startswith(prefixes):
            continue
        for attr, value in list(vars(module).items()):
            if not isinstance(value, functools._lru_cache_wrapper) or value.__module__ != mod_name:
                continue  # imported from elsewhere: reported under its own module
            info = value.cache_info()
            out[f"{mod_name}.{attr}"] = (info.hits, info.misses, info.currsize, info.maxsize or 0)
    return out
