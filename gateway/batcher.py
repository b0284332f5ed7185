"""The micro-batcher: one per partition actor, gathering events of many requests into one
actor call.

Events for a partition wait until ``max_events`` are queued or ``max_wait_s`` passed, then go
out as one call; every waiting request is answered from that call's per-event results.
At most ``max_inflight`` calls per partition run at once; while all are busy, events keep
queueing and leave together as soon as a call returns (so batches grow with load). Beyond
``max_queued`` waiting events a request is refused at once (``Backpressure`` -> 503 +
Retry-After): a slow partition costs the gateway bounded memory, never a silent drop.

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

from opsmantik_stream.ingest.schema import WireEvent, WireResult, decode_results, encode_wire
from opsmantik_stream.routing import PartitionRetired

__all__ = ["Backpressure", "PartitionBatcher", "PartitionMoved", "PartitionUnavailable"]

log = logging.getLogger(__name__)


class PartitionUnavailable(Exception):
    """The partition did not answer this batch (nothing in it was acknowledged)."""


class PartitionMoved(PartitionUnavailable):
    """A resize retired this partition before the batch reached it (nothing was written):
    the caller re-resolves the owner and resends."""


class Backpressure(Exception):
    """Too many events already wait for this partition."""


class _Group:
    __slots__ = ("events", "future")

    def __init__(self, events: list[WireEvent], future: asyncio.Future[list[WireResult]]) -> None:
        self.events = events
        self.future = future


class PartitionBatcher:
    """Batches ``WireEvent`` lists for one partition; ``send`` delivers one encoded batch."""

    def __init__(
        self,
        name: str,
        send: Callable[[bytes], Awaitable[bytes]],
        *,
        max_events: int,
        max_wait_s: float,
        max_inflight: int,
        max_queued: int,
        on_call: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self._send = send
        self._max_events = max_events
        self._max_wait_s = max_wait_s
        self._max_inflight = max_inflight
        self._max_queued = max_queued
        self._on_call = on_call  # observes each call's size (metrics)
        self._pending: deque[_Group] = deque()
        self._queued = 0
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # set whenever a call starts (tests wait on it to act while a batch is in flight)
        self.call_started = asyncio.Event()
        self.stats: dict[str, int] = {"calls": 0, "events": 0, "failed_calls": 0, "refused_events": 0}
        self.batch_sizes: deque[int] = deque(maxlen=1000)

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def queued(self) -> int:
        return self._queued

    async def submit(self, events: list[WireEvent]) -> list[WireResult]:
        """Queue a request's events; returns their results once their batch committed."""
        if self._queued + len(events) > self._max_queued:
            self.stats["refused_events"] += len(events)
            raise Backpressure(self.name)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[WireResult]] = loop.create_future()
        self._pending.append(_Group(events, future))
        self._queued += len(events)
        self._pump(due=False)
        return await future

    def _pump(self, *, due: bool) -> None:
        """Start calls while slots are free and a batch is full or due."""
        while self._pending and self._inflight < self._max_inflight:
            if not due and self._queued < self._max_events:
                if self._timer is None:
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(self._max_wait_s, self._on_timer)
                return
            groups: list[_Group] = []
            size = 0
            while self._pending and (not groups or size + len(self._pending[0].events) <= self._max_events):
                group = self._pending.popleft()
                groups.append(group)
                size += len(group.events)
            self._queued -= size
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._call(groups, size))
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
            events = [ev for group in groups for ev in group.events]
            try:
                results = decode_results(await self._send(encode_wire(events)))
                if len(results) != len(events):
                    raise PartitionUnavailable(f"{self.name}: {len(results)} results for {len(events)} events")
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
                end = start + len(group.events)
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
