"""The micro-batcher: one per partition actor, gathering events of many requests into one
actor call.

Batches grow with load. An idle partition gets a request's events at once (no added latency
at low load) unless its previous call left moments ago (pacing, below). While a call is in
flight, arriving events wait: the next call leaves when ``max_wait_s`` passed since the
first of them arrived, when ``max_events`` events or ``max_bytes`` of payload are queued, or
as soon as a call returns -- so under load a call carries everything that arrived during the
previous one. A small call (fewer than ``small_call`` events) leaves no sooner than
``min_interval_s`` after the previous one left: at moderate load calls would otherwise
return every few milliseconds with a handful of events, and a call's fixed cost (the call,
the transaction, each statement's start-up: about 1.2 ms of PostgreSQL's CPU) is about that
of thirty events; a call worth its cost never waits. At most ``max_inflight`` calls per
partition run at once. Beyond ``max_queued`` waiting events a request is refused at once
(``Backpressure`` -> 503 + Retry-After): a slow partition costs the gateway bounded memory,
never a silent drop. ``max_bytes`` bounds the payload one call holds at both ends (over a
Ray call, an argument above ~100 KB travels through Ray's object store: one copy more,
nothing lost; the node-local socket carries any size alike).

Bounds (issue 18): waiting events ``max_queued`` (``OPSMANTIK_PARTITION_MAX_QUEUED_EVENTS``,
each at most a few KB: the schema limits every field), calls in flight ``max_inflight``
(``OPSMANTIK_PARTITION_MAX_INFLIGHT``, each at most ``max_bytes`` of payload or one request's
events), the sizes of the last ``BATCH_SIZES_KEPT`` calls; ``stats`` has fixed keys.

Each request's events arrive already msgpack-encoded (``WireEvent`` values, joined into one
``bytes``), so a batch is an array header plus the requests' parts: nothing is encoded twice.

A request's events always travel in the same call. A failed call (actor dead or
restarting, timeout, error in the partition) fails every request in it with
``PartitionUnavailable``; none of them was acknowledged, and all of them are idempotent,
so the client's retry stores each event exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from opsmantik_stream.ingest.schema import WireResult, decode_results, msgpack_array
from opsmantik_stream.routing import PartitionRetired

__all__ = ["BATCH_SIZES_KEPT", "Backpressure", "PartitionBatcher", "PartitionMoved", "PartitionUnavailable"]

BATCH_SIZES_KEPT = 1000

log = logging.getLogger(__name__)


class PartitionUnavailable(Exception):
    """The partition did not answer this batch (nothing in it was acknowledged)."""


class PartitionMoved(PartitionUnavailable):
    """A resize retired this partition before the batch reached it (nothing was written):
    the caller re-resolves the owner and resends."""


class Backpressure(Exception):
    """Too many events already wait for this partition."""


class _Group:
    __slots__ = ("count", "events", "future")

    def __init__(self, events: bytes, count: int, future: asyncio.Future[list[WireResult]]) -> None:
        self.events = events  # ``count`` encoded WireEvents, joined
        self.count = count
        self.future = future


class PartitionBatcher:
    """Batches encoded ``WireEvent`` values for one partition; ``send`` delivers one batch."""

    def __init__(
        self,
        name: str,
        send: Callable[[bytes], Awaitable[bytes]],
        *,
        max_events: int,
        max_bytes: int = 256_000,
        max_wait_s: float,
        min_interval_s: float = 0.0,
        small_call: int = 1,
        max_inflight: int,
        max_queued: int,
        on_call: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self._send = send
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._max_wait_s = max_wait_s
        self._min_interval_s = min_interval_s
        self._small_call = small_call
        self._last_start = -1e9
        self._max_inflight = max_inflight
        self._max_queued = max_queued
        self._on_call = on_call  # observes each call's size (metrics)
        self._pending: deque[_Group] = deque()
        self._queued = 0
        self._queued_bytes = 0
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # set whenever a call starts (tests wait on it to act while a batch is in flight)
        self.call_started = asyncio.Event()
        self.stats: dict[str, int] = {"calls": 0, "events": 0, "failed_calls": 0, "refused_events": 0}
        self.batch_sizes: deque[int] = deque(maxlen=BATCH_SIZES_KEPT)

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def queued(self) -> int:
        return self._queued

    async def submit(self, events: bytes, count: int) -> list[WireResult]:
        """Queue a request's ``count`` events (encoded ``WireEvent`` values, joined); returns
        their ``count`` results once their batch committed."""
        if self._queued + count > self._max_queued:
            self.stats["refused_events"] += count
            raise Backpressure(self.name)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[WireResult]] = loop.create_future()
        group = _Group(events, count, future)
        self._pending.append(group)
        self._queued += count
        self._queued_bytes += len(events)
        self._pump(due=self._inflight == 0)
        return await future

    def _full(self) -> bool:
        return self._queued >= self._max_events or self._queued_bytes >= self._max_bytes

    def _pump(self, *, due: bool) -> None:
        """Start calls while slots are free and a batch is full or due."""
        loop = asyncio.get_running_loop()
        while self._pending and self._inflight < self._max_inflight:
            early = 0.0
            if due and self._min_interval_s and self._queued < self._small_call and not self._full():
                early = self._last_start + self._min_interval_s - loop.time()
            if early > 0 or (not due and not self._full()):
                if self._timer is None:
                    self._timer = loop.call_later(early if early > 0 else self._max_wait_s, self._on_timer)
                return
            self._last_start = loop.time()
            groups: list[_Group] = []
            size = 0
            nbytes = 0
            while self._pending:
                head = self._pending[0]
                if groups and (size + head.count > self._max_events or nbytes + len(head.events) > self._max_bytes):
                    break
                groups.append(self._pending.popleft())
                size += head.count
                nbytes += len(head.events)
            self._queued -= size
            self._queued_bytes -= nbytes
            self._inflight += 1
            due = False
            task = loop.create_task(self._call(groups, size))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self._pump(due=True)

    async def _call(self, groups: list[_Group], size: int) -> None:
        self.stats["calls"] += 1
        self.stats["events"] += size
        self.batch_sizes.append(size)
        if self._on_call is not None:
            self._on_call(size)
        self.call_started.set()
        try:
            payload = msgpack_array(size, [group.events for group in groups])
            try:
                results = decode_results(await self._send(payload))
                if len(results) != size:
                    raise PartitionUnavailable(f"{self.name}: {len(results)} results for {size} events")
            except asyncio.CancelledError:
                self._fail(groups, PartitionUnavailable(f"{self.name}: call cancelled"))
                raise
            except PartitionRetired:
                self.stats["moved_calls"] = self.stats.get("moved_calls", 0) + 1
                self._fail(groups, PartitionMoved(self.name))
                return
            except Exception as exc:
                self.stats["failed_calls"] += 1
                log.warning("partition call failed", extra={"partition": self.name, "error": type(exc).__name__})
                self._fail(groups, PartitionUnavailable(f"{self.name}: {type(exc).__name__}"))
                return
            start = 0
            for group in groups:
                end = start + group.count
                if not group.future.done():
                    group.future.set_result(results[start:end])
                start = end
        finally:
            self._inflight -= 1
            # whatever queued while this call ran has waited long enough
            if self._pending:
                self._pump(due=True)

    @staticmethod
    def _fail(groups: list[_Group], exc: Exception) -> None:
        for group in groups:
            if not group.future.done():
                group.future.set_exception(exc)

    def snapshot(self) -> dict[str, Any]:
        return {"inflight": self._inflight, "queued": self._queued, **self.stats}

    async def close(self) -> None:
        """Cancel the timer and wait for calls in flight (application shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail(list(self._pending), PartitionUnavailable(f"{self.name}: gateway stopping"))
        self._pending.clear()
        self._queued = 0
        self._queued_bytes = 0
