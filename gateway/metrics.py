"""Prometheus metrics: in-process counters and histograms, plus figures read from
PostgreSQL at scrape time (queue depth, breaker states, upload outcomes, the oldest due row),
so every gateway reports the same cluster-wide truth, plus the figures of every actor of the
routing table (partitions, uploaders), asked for at scrape time.

Why the actors are asked at scrape time (see docs/metrics.md): they run in other processes,
often on other nodes, where this process's prometheus-client registry cannot reach. Each
actor keeps plain counters (``opsmantik_stream.telemetry``) and answers ``metrics()``; this
module renders the answers with the actor's name as a label. An actor that does not answer
in time is reported by ``opsmantik_actor_metrics_up`` = 0 and its series are left out for
that scrape (Prometheus marks them stale; its counters resume when it answers again, or
restart from zero after an actor restart, which ``rate()`` handles as a counter reset).

The database figures are cached for ``metrics_cache_s`` per gateway (one refresh at a time,
whatever the number of scrapers), so scraping never costs a scan of the queue per request.
``metrics_bearer_token`` requires ``Authorization: Bearer <token>``; ``metrics_port`` serves
``/metrics`` on its own port on 127.0.0.1 only (and the main port answers 404 for it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from opsmantik_stream.enums import AlertKind
from opsmantik_stream.privacy.retention import last_run
from opsmantik_stream.queries import Q
from opsmantik_stream.telemetry import UPLOADER_METRICS, MetricSpec, lru_cache_figures

__all__ = [
    "BATCH_SIZE",
    "HTTP_LATENCY",
    "INGEST_EVENTS",
    "PARTITION_CALL_SECONDS",
    "REGISTRY",
    "MetricsState",
    "register_cache_source",
    "render_metrics",
    "timed_partition_call",
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
PARTITION_CALL_SECONDS = Histogram(
    "opsmantik_partition_call_duration_seconds",
    "Duration of one ingest call from the gateway to a partition (send to answer, after commit)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)


def timed_partition_call(send: Callable[[bytes], Awaitable[bytes]]) -> Callable[[bytes], Awaitable[bytes]]:
    """``send`` (one partition call) observed by ``PARTITION_CALL_SECONDS``: one observation
    per call, never per event."""
    observe = PARTITION_CALL_SECONDS.observe

    async def timed(payload: bytes) -> bytes:
        started = time.perf_counter()
        try:
            return await send(payload)
        finally:
            observe(time.perf_counter() - started)

    return timed


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
                "oldest_due": {r["destination"]: r for r in await conn.fetch(Q.ops.oldest_due_by_destination)},
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
        age = GaugeMetricFamily(
            "opsmantik_upload_oldest_due_age_seconds",
            "How long the oldest row that may be sent now (QUEUED or RETRY, due) has waited, per destination",
            labels=["destination"],
        )
        due = GaugeMetricFamily(
            "opsmantik_upload_due_rows",
            "Rows that may be sent now (QUEUED or RETRY, due), per destination",
            labels=["destination"],
        )
        for destination in destination_names():
            row = snap["oldest_due"].get(destination)
            age.add_metric([destination], max(0.0, float(row["age_s"])) if row else 0.0)
            due.add_metric([destination], int(row["n"]) if row else 0)
        yield age
        yield due
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


class MetricsState:
    """The database figures and bounded-structure figures of one gateway, with their own
    registry (one per app, so two gateways in one process, as in tests, never mix them)."""

    def __init__(self) -> None:
        self.figures = _DatabaseFigures()
        self.bounded = _BoundedFigures()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self.figures)
        self.registry.register(self.bounded)


def _state(ctx: Any) -> MetricsState:
    state: MetricsState | None = ctx.metrics
    if state is None:
        state = ctx.metrics = MetricsState()
    return state


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
        for name, limit in ctx.route_limits.items():  # the routes' keyed buckets (gateway.limits)
            gateway[f"route_buckets:{name}"] = limit.bounded()
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


def destination_names() -> list[str]:
    from opsmantik_stream.destinations import registry

    return registry.names()


# ---------------------------------------------------------------------- actors' figures

_ACTOR_TIMEOUT_S = 2.0

#: partition ``ingest_stats`` keys -> (family, label value); other keys are not exported
_PARTITION_EVENT_OUTCOMES = ("accepted", "duplicate", "rejected_quota", "dead_letter")
_PARTITION_BATCH_REDOS = ("retried_batches", "split_batches", "expired_batches")


class _ActorFigures(Collector):
    """The figures every actor of the routing table reported at the last scrape, plus this
    gateway's own ``lru_cache`` statistics."""

    def __init__(self) -> None:
        self.partitions: dict[str, dict[str, Any] | None] = {}
        self.uploaders: dict[str, dict[str, Any] | None] = {}

    async def refresh(self, routing: Any, timeout_s: float = _ACTOR_TIMEOUT_S) -> None:
        """Ask every partition and uploader for ``metrics()`` at once; ``None`` for those that
        did not answer within ``timeout_s``."""
        table = await asyncio.wait_for(routing.table(), timeout_s)

        async def ask(name: str) -> dict[str, Any] | None:
            try:
                return dict(await asyncio.wait_for(routing.handle(name).metrics.remote(), timeout_s))
            except Exception:
                routing.forget(name)  # a dead actor's handle is looked up again next time
                return None

        names = [*table.actors, *table.uploaders]
        answers = await asyncio.gather(*(ask(n) for n in names))
        got = dict(zip(names, answers, strict=True))
        self.partitions = {n: got[n] for n in table.actors}
        self.uploaders = {n: got[n] for n in table.uploaders}

    def clear(self) -> None:
        self.partitions = {}
        self.uploaders = {}

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "opsmantik_actor_metrics_up",
            "1 when the actor answered this scrape's metrics call, 0 when it did not",
            labels=["kind", "actor"],
        )
        for kind, answers in (("partition", self.partitions), ("uploader", self.uploaders)):
            for name, answer in sorted(answers.items()):
                up.add_metric([kind, name], 0 if answer is None else 1)
        yield up
        yield from _uploader_families(self.uploaders)
        yield from _partition_families(self.partitions)
        caches: dict[str, dict[str, tuple[int, int, int, int]]] = {"gateway": _gateway_caches()}
        for name, answer in self.partitions.items():
            if answer:
                caches[name] = dict(answer.get("caches") or {})
        yield from _cache_families(caches)


def _uploader_families(answers: dict[str, dict[str, Any] | None]) -> Iterator[Any]:
    """One family per ``UPLOADER_METRICS`` entry, the uploader's name as the first label."""
    families = {spec.name: _family(spec) for spec in UPLOADER_METRICS.values()}
    for uploader, answer in sorted(answers.items()):
        if not answer:
            continue
        for name, labels, value in answer.get("counters", ()):
            if name in families and UPLOADER_METRICS[name].kind == "counter":
                families[name].add_metric([uploader, *labels], value)
        for name, labels, counts, total, _count in answer.get("histograms", ()):
            hspec = UPLOADER_METRICS.get(name)
            if hspec is None or hspec.kind != "histogram":
                continue
            cumulative, buckets = 0, []
            for bound, n in zip([*hspec.buckets, float("inf")], counts, strict=True):
                cumulative += n
                buckets.append((_le(bound), cumulative))
            families[name].add_metric([uploader, *labels], buckets, total)
    yield from families.values()


def _family(spec: MetricSpec) -> Any:
    labels = ["uploader", *spec.labels]
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=labels)
    return HistogramMetricFamily(spec.name, spec.help, labels=labels)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _partition_families(answers: dict[str, dict[str, Any] | None]) -> Iterator[Any]:
    calls = CounterMetricFamily(
        "opsmantik_partition_batches", "Ingest batches (calls) a partition committed", labels=["partition"]
    )
    events = CounterMetricFamily(
        "opsmantik_partition_events", "Events a partition decided, by outcome", labels=["partition", "outcome"]
    )
    redos = CounterMetricFamily(
        "opsmantik_partition_batch_redos",
        "Batches a partition ran again (retried, split event by event) or dropped unwritten (expired)",
        labels=["partition", "kind"],
    )
    for name, answer in sorted(answers.items()):
        stats = (answer or {}).get("ingest") or {}
        if not answer:
            continue
        calls.add_metric([name], int(stats.get("batches", 0)))
        for outcome in _PARTITION_EVENT_OUTCOMES:
            events.add_metric([name, outcome], int(stats.get(outcome, 0)))
        for kind in _PARTITION_BATCH_REDOS:
            if kind in stats:
                redos.add_metric([name, kind.removesuffix("_batches")], int(stats[kind]))
    yield calls
    yield events
    yield redos


def _cache_families(caches: dict[str, dict[str, tuple[int, int, int, int]]]) -> Iterator[Any]:
    hits = CounterMetricFamily(
        "opsmantik_cache_hits", "lru_cache hits per process and cache", labels=["process", "cache"]
    )
    misses = CounterMetricFamily(
        "opsmantik_cache_misses", "lru_cache misses per process and cache", labels=["process", "cache"]
    )
    entries = GaugeMetricFamily(
        "opsmantik_cache_entries", "Entries held per process and cache", labels=["process", "cache"]
    )
    capacity = GaugeMetricFamily(
        "opsmantik_cache_capacity_entries", "Most entries a cache holds (0: unbounded)", labels=["process", "cache"]
    )
    for process, figures in sorted(caches.items()):
        for cache, (h, m, size, cap) in sorted(figures.items()):
            hits.add_metric([process, cache], h)
            misses.add_metric([process, cache], m)
            entries.add_metric([process, cache], size)
            capacity.add_metric([process, cache], cap)
    yield hits
    yield misses
    yield entries
    yield capacity


#: callables returning ``cache -> (hits, misses, entries, capacity)`` for caches of this process
#: that are not ``lru_cache`` (e.g. the ingest route's site cache); weakly held, so an app
#: that is gone (tests build many) stops reporting
_CACHE_SOURCES: list[weakref.WeakMethod[Callable[[], dict[str, tuple[int, int, int, int]]]]] = []


def register_cache_source(figures: Callable[[], dict[str, tuple[int, int, int, int]]]) -> None:
    """Report a cache's figures (a bound method) under ``process="gateway"`` at scrape time."""
    _CACHE_SOURCES.append(weakref.WeakMethod(figures))


def _gateway_caches() -> dict[str, tuple[int, int, int, int]]:
    """This process's ``lru_cache`` figures plus the registered caches (summed when several
    apps of one process report the same cache)."""
    out = lru_cache_figures()
    alive = []
    for ref in _CACHE_SOURCES:
        figures = ref()
        if figures is None:
            continue
        alive.append(ref)
        for name, values in figures().items():
            held = out.get(name, (0, 0, 0, 0))
            out[name] = (held[0] + values[0], held[1] + values[1], held[2] + values[2], held[3] + values[3])
    _CACHE_SOURCES[:] = alive
    return out


_ACTOR_FIGURES = _ActorFigures()
REGISTRY.register(_ACTOR_FIGURES)


async def render_metrics(ctx: Any) -> bytes:
    """The exposition text: in-process metrics, the (cached) database figures, the bounded
    structures of the gateway and the partitions, and every actor's figures; the sources are
    refreshed concurrently, each asked at most ``_ACTOR_TIMEOUT_S``."""
    state = _state(ctx)
    routing = ctx.routing if ctx.ray_enabled else None

    async def actors() -> None:
        if routing is None:
            _ACTOR_FIGURES.clear()
            return
        try:
            await _ACTOR_FIGURES.refresh(routing)
        except Exception:
            _ACTOR_FIGURES.clear()  # no routing table (Registry away): no actor figures this time

    await asyncio.gather(
        state.figures.refresh_if_stale(ctx.pool, ctx.settings.metrics_cache_s, ctx.monotonic()),
        state.bounded.refresh(ctx),
        actors(),
    )
    return generate_latest(REGISTRY) + generate_latest(state.registry)
