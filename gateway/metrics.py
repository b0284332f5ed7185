"""Prometheus metrics: in-process counters and histograms, plus figures read from
PostgreSQL (queue depth, breaker states, upload outcomes), so every gateway reports the same
cluster-wide truth.

The database figures are cached for ``metrics_cache_s`` per gateway (one refresh at a time,
whatever the number of scrapers), so scraping never costs a scan of the queue per request.
``metrics_bearer_token`` requires ``Authorization: Bearer <token>``; ``metrics_port`` serves
``/metrics`` on its own port on 127.0.0.1 only (and the main port answers 404 for it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.limits import KeyedLimit
from opsmantik_stream.enums import AlertKind
from opsmantik_stream.privacy.retention import last_run
from opsmantik_stream.queries import Q

__all__ = [
    "BATCH_SIZE",
    "HTTP_LATENCY",
    "INGEST_EVENTS",
    "REGISTRY",
    "render_metrics",
]

REGISTRY = CollectorRegistry(auto_describe=True)

# Ingest outcomes are counted in a plain dict by the /api/sync route (once per request, a
# dict update) and exposed at scrape time: a prometheus_client Counter costs several
# microseconds per increment, a noticeable share of a single-event request.
INGEST_EVENTS: dict[str, int] = {}


class _IngestOutcomes(Collector):
    def collect(self) -> Iterator[Any]:
        family = CounterMetricFamily(
            "opsmantik_ingest_events",
            "Ingest outcomes per event (accepted, duplicate, rejected_quota, rate_limited, consent_missing, ...)",
            labels=["outcome"],
        )
        for outcome, n in sorted(INGEST_EVENTS.items()):
            family.add_metric([outcome], n)
        yield family


REGISTRY.register(_IngestOutcomes())
BATCH_SIZE = Histogram(
    "opsmantik_ingest_batch_events",
    "Events per partition batch sent by the micro-batcher",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "opsmantik_http_request_duration_seconds",
    "Gateway request latency by route template",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)


class _DatabaseFigures(Collector):
    """Exposes the snapshot taken by ``refresh`` (collectors are synchronous)."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}
        self.taken_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh_if_stale(self, pool: asyncpg.Pool, max_age_s: float, now: float) -> None:
        """Refresh when the snapshot is older than ``max_age_s`` (concurrent scrapes wait for
        the one refresh under way and then serve its result)."""
        if self.taken_at is not None and now - self.taken_at < max_age_s:
            return
        async with self._lock:
            if self.taken_at is not None and now - self.taken_at < max_age_s:
                return
            try:
                await self.refresh(pool)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                # the in-process figures still say something useful while the database is away
                self.snapshot = {}
            self.taken_at = now

    async def refresh(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            self.snapshot = {
                "queue": {r["status"]: r["n"] for r in await conn.fetch(Q.ops.queue_by_status)},
                "breakers": {r["state"]: r["n"] for r in await conn.fetch(Q.ops.breakers_by_state)},
                "uploads": dict(await conn.fetchrow(Q.ops.upload_totals)),
                "dead_letters": await conn.fetchval(Q.ops.dead_letters_pending),
                "privacy_retention": await last_run(conn),
                "alerts": {r["kind"]: r["n"] for r in await conn.fetch(Q.watchtower.open_alerts_by_kind)},
            }

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot
        if not snap:
            return
        queue = GaugeMetricFamily("opsmantik_queue_rows", "Offline conversion queue rows by status", labels=["status"])
        for status in ("QUEUED", "PROCESSING", "RETRY", "COMPLETED", "FAILED", "BLOCKED"):
            queue.add_metric([status], snap["queue"].get(status, 0))
        yield queue
        breakers = GaugeMetricFamily("opsmantik_breakers", "Circuit breakers by state", labels=["state"])
        for state in ("CLOSED", "OPEN", "HALF_OPEN"):
            breakers.add_metric([state], snap["breakers"].get(state, 0))
        yield breakers
        uploads = CounterMetricFamily("opsmantik_uploads", "Uploaded conversion rows by outcome", labels=["outcome"])
        for outcome in ("completed", "failed", "retry", "blocked"):
            uploads.add_metric([outcome], snap["uploads"].get(outcome, 0))
        yield uploads
        yield GaugeMetricFamily("opsmantik_dead_letters_pending", "Dead letters waiting", value=snap["dead_letters"])
        yield from _retention_metrics(snap.get("privacy_retention"))
        alerts = GaugeMetricFamily(
            "opsmantik_watchtower_alerts_open", "Open watchtower alerts by kind", labels=["kind"]
        )
        for kind in AlertKind:
            alerts.add_metric([kind.value], snap["alerts"].get(kind.value, 0))
        yield alerts


def _retention_metrics(run: dict[str, Any] | None) -> Iterator[Any]:
    """The last privacy_retention run: when, and rows anonymised per table."""
    if not run:
        return
    finished = dt.datetime.fromisoformat(run["finished_at"]).timestamp()
    yield GaugeMetricFamily(
        "opsmantik_privacy_retention_last_run_timestamp_seconds",
        "End of the last privacy_retention run",
        value=finished,
    )
    rows = GaugeMetricFamily(
        "opsmantik_privacy_retention_last_run_rows", "Rows the last privacy_retention run changed", labels=["table"]
    )
    for table, n in sorted(run["counts"].items()):
        rows.add_metric([table], n)
    yield rows


def _figures(ctx: Any) -> tuple[_DatabaseFigures, CollectorRegistry]:
    """The database figures of this gateway (its own database; one per app, so two gateways
    in one process, as in tests, never mix their figures)."""
    found = ctx.extras.get("metrics_figures")
    if found is None:
        figures = _DatabaseFigures()
        registry = CollectorRegistry(auto_describe=True)
        registry.register(figures)
        found = ctx.extras["metrics_figures"] = (figures, registry)
    return found  # type: ignore[no-any-return]


class _BoundedFigures(Collector):
    """Entries and bound of every bounded in-memory structure, per process: the gateway's
    caches, limiters, batcher queues and memos, and each partition's memos and resident
    memory (asked at scrape time, 2 s at most; a partition that does not answer is left out).
    What operators watch for a slow leak; ``make soak`` reads the same figures."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], tuple[int, int]] = {}
        self.resident: dict[str, int] = {}

    async def refresh(self, ctx: Any) -> None:
        import asyncio

        from opsmantik_stream.bounds import lru_report, resident_bytes

        entries: dict[tuple[str, str], tuple[int, int]] = {}
        resident: dict[str, int] = {}
        gateway = {**ctx.sync.bounded(), **ctx.partitions.bounded(), **lru_report()}
        for name, found in ctx.extras.items():
            if isinstance(found, KeyedLimit):  # the routes' keyed buckets (gateway.limits)
                gateway[f"route_buckets:{name}"] = found.bounded()
        entries.update({("gateway", k): v for k, v in gateway.items()})
        own = resident_bytes()
        if own is not None:
            resident["gateway"] = own
        if ctx.ray_enabled:
            try:
                table = await asyncio.wait_for(ctx.routing.table(), 2.0)
                names = list(table.actors)
                answers = await asyncio.gather(
                    *(asyncio.wait_for(ctx.routing.handle(n).memory.remote(), 2.0) for n in names),
                    return_exceptions=True,
                )
            except Exception:
                names, answers = [], []
            for name, answer in zip(names, answers, strict=True):
                if isinstance(answer, BaseException):
                    continue
                entries.update({(name, k): (int(v[0]), int(v[1])) for k, v in answer["memos"].items()})
                if answer.get("rss_bytes"):
                    resident[name] = int(answer["rss_bytes"])
        self.entries, self.resident = entries, resident

    def collect(self) -> Iterator[Any]:
        if not self.entries and not self.resident:
            return
        size = GaugeMetricFamily(
            "opsmantik_bounded_entries", "Entries in a bounded in-memory structure", labels=["process", "structure"]
        )
        bound = GaugeMetricFamily(
            "opsmantik_bounded_limit", "The bound of that structure", labels=["process", "structure"]
        )
        for (process, name), (n, limit) in sorted(self.entries.items()):
            size.add_metric([process, name], n)
            bound.add_metric([process, name], limit)
        yield size
        yield bound
        rss = GaugeMetricFamily(
            "opsmantik_process_resident_bytes", "Resident memory of the gateway and each partition", labels=["process"]
        )
        for process, n in sorted(self.resident.items()):
            rss.add_metric([process], n)
        yield rss


async def render_metrics(ctx: Any) -> bytes:
    """The exposition text: in-process metrics, the (cached) database figures, and the
    bounded structures of the gateway and the partitions (asked at scrape time)."""
    figures, registry = _figures(ctx)
    clock = ctx.extras.get("monotonic") or time.monotonic
    await figures.refresh_if_stale(ctx.pool, ctx.settings.metrics_cache_s, clock())
    bounded = ctx.extras.get("metrics_bounded")
    if bounded is None:
        bounded = ctx.extras["metrics_bounded"] = _BoundedFigures()
        registry.register(bounded)
    await bounded.refresh(ctx)
    return generate_latest(REGISTRY) + generate_latest(registry)
