"""Every call from the gateway to a ``SitePartition``, in one place.

Batches to a partition on the gateway's own node travel over the partition's Unix socket
(``opsmantik_stream/channel.py``); to any other, or while the socket is not there, as Ray
actor calls. Either way the same rules hold.

- ``PartitionClient.ingest(site_id, encoded, count)``: through the owner's micro-batcher, so the
  events of many requests travel in one actor call.
- ``PartitionClient.call(site_id, method, *args)``: a direct call (signed call events,
  dead-letter replay).

Both resolve the owner from the routing table, bound the call with
``partition_call_timeout_s``, and when a resize retired the owner (it answers "moved",
nothing written) re-read the table and resend to the new owner -- every call is idempotent.
A dead actor's handle is looked up again on the next call. Whatever fails is raised as
``PartitionUnavailable`` (the route answers 503 + Retry-After: nothing was acknowledged).

Bounds (issue 18): one batcher, channel and lock per partition actor the gateway sent to
(the routing table's actors; a retired generation's batcher is dropped when it answers
"moved" with nothing waiting); a channel's pending calls are the batcher's calls in flight
(``OPSMANTIK_PARTITION_MAX_INFLIGHT``), each removed when answered, failed or timed out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.batcher import Backpressure, PartitionBatcher, PartitionMoved, PartitionUnavailable
from gateway.handles import RoutingCache
from gateway.metrics import BATCH_SIZE, timed_partition_call
from opsmantik_stream import channel as frames
from opsmantik_stream.config import Settings
from opsmantik_stream.ingest.schema import WireResult
from opsmantik_stream.routing import PartitionRetired

__all__ = ["Backpressure", "PartitionClient", "PartitionMoved", "PartitionUnavailable"]

log = logging.getLogger(__name__)

_HOPS = 3
# how long a partition found on another node (or without a socket) is not asked again
_REMOTE_RECHECK_S = 30.0
_RETRY_S = 1.0


class _Channel:
    """One connection to a partition's socket; several calls at once, matched by id."""

    def __init__(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[list[Any]]] = {}
        self._next = 0
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._read())

    @property
    def pending(self) -> int:
        """Calls sent and not yet answered, failed or timed out."""
        return len(self._pending)

    async def call(self, method: str, timeout_s: float, payload: bytes) -> bytes:
        if self.closed:
            raise ConnectionError(f"{self.name}: channel closed")
        self._next += 1
        call_id = self._next
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            frames.write_frame(self._writer, [call_id, method, timeout_s, payload])
            _id, status, body = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(call_id, None)
        if status == frames.OK:
            return bytes(body)
        if status == frames.RETIRED:
            raise PartitionRetired(self.name)
        raise PartitionUnavailable(f"{self.name}: {'expired' if status == frames.EXPIRED else bytes(body).decode()}")

    async def _read(self) -> None:
        error: BaseException = ConnectionError(f"{self.name}: the partition closed the channel")
        try:
            while True:
                frame = await frames.read_frame(self._reader)
                future = self._pending.get(frame[0])
                if future is not None and not future.done():
                    future.set_result(frame)
        except (asyncio.IncompleteReadError, OSError, ValueError) as exc:
            error = ConnectionError(f"{self.name}: {type(exc).__name__}")
        finally:
            # a dead or restarted actor closes its socket: every call still waiting fails now
            self.closed = True
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._writer.close()

    def close(self) -> None:
        self.closed = True
        self._task.cancel()
        self._writer.close()


class PartitionClient:
    """The gateway's door to the partitions (one per gateway process)."""

    def __init__(self, settings: Settings, routing: RoutingCache, *, enabled: bool = True) -> None:
        self._settings = settings
        self._routing = routing
        # False when the gateway runs without Ray (tests of routes that need no actors)
        self.enabled = enabled
        self.batchers: dict[str, PartitionBatcher] = {}
        # name -> open channel; or the time a partition was found without one (Ray calls)
        self._channels: dict[str, _Channel | float] = {}
        self._channel_locks: dict[str, asyncio.Lock] = {}
        self._node_id: str | None = None

    # ------------------------------------------------------------------ ingest

    async def ingest(self, site_id: str, encoded: bytes, count: int) -> list[WireResult]:
        """Send a request's ``count`` events (msgpack-encoded ``WireEvent`` values, joined)
        to the site's owner; their results once the owner's transaction committed."""
        for _hop in range(_HOPS):
            table = self._routing.fresh() or await self._routing.table()
            name = table.owner_of(site_id)
            try:
                return await self.batcher(name).submit(encoded, count)
            except PartitionMoved:
                old = self.batchers.get(name)
                if old is not None and old.inflight == 0 and old.queued == 0:
                    self.batchers.pop(name, None)  # that actor is going away
                await self._routing.refresh(table.version)
        raise PartitionUnavailable("the routing table did not settle")

    def batcher(self, name: str) -> PartitionBatcher:
        """The micro-batcher of the partition actor ``name`` (one per actor, created on use)."""
        batcher = self.batchers.get(name)
        if batcher is None:
            settings = self._settings
            batcher = PartitionBatcher(
                name,
                timed_partition_call(self._sender(name, "ingest")),
                max_events=settings.batch_max_events,
                max_bytes=settings.batch_max_bytes,
                max_wait_s=settings.batch_max_wait_ms / 1000.0,
                min_interval_s=settings.batch_min_interval_ms / 1000.0,
                small_call=settings.batch_small_call_events,
                max_inflight=settings.partition_max_inflight,
                max_queued=settings.partition_max_queued_events,
                on_call=BATCH_SIZE.observe,
            )
            self.batchers[name] = batcher
        return batcher

    def _sender(self, name: str, method: str) -> Callable[[bytes], Awaitable[bytes]]:
        timeout = self._settings.partition_call_timeout_s
        routing = self._routing

        async def send(payload: bytes) -> bytes:
            # by name: a batch always goes to the actor it was gathered for, even when the
            # routing table moved on meanwhile (it drains there). The timeout goes along: a
            # call that waited longer than that inside the actor is dropped there unwritten
            # (this side has answered 503 by then).
            local = await self._channel(name)
            if local is not None:
                try:
                    return await local.call(method, timeout, payload)
                except ConnectionError:
                    # the actor died or restarted: look it up again next time (a slow call is
                    # no reason to close a channel other calls are using)
                    self._drop_channel(name)
                    routing.forget(name)
                    raise
            try:
                handle = routing.handle(name)
                return bytes(await asyncio.wait_for(getattr(handle, method).remote(payload, timeout), timeout))
            except PartitionRetired:
                raise
            except Exception:
                routing.forget(name)
                self._drop_channel(name)
                raise

        return send

    async def _channel(self, name: str) -> _Channel | None:
        """The open channel to partition ``name``, opening one when the partition runs on this
        node and offers a socket; None means Ray calls (rechecked now and then)."""
        known = self._channels.get(name)
        if isinstance(known, _Channel) and not known.closed:
            return known
        if isinstance(known, float) and time.monotonic() - known < _REMOTE_RECHECK_S:
            return None
        if not self._settings.partition_local_socket:
            return None
        lock = self._channel_locks.setdefault(name, asyncio.Lock())
        async with lock:
            known = self._channels.get(name)
            if isinstance(known, _Channel) and not known.closed:
                return known
            try:
                handle = self._routing.handle(name)
                if await asyncio.wait_for(handle.node.remote(), 10) != self._local_node():
                    self._channels[name] = time.monotonic()
                    return None
                path = await asyncio.wait_for(handle.data_address.remote(), 10)
                if not path:
                    self._channels[name] = time.monotonic()
                    return None
                reader, writer = await asyncio.open_unix_connection(path, limit=frames.MAX_FRAME)
            except Exception as exc:
                # not reachable right now (restarting, another node): Ray calls; asked again later
                log.info("partition channel unavailable", extra={"partition": name, "error": type(exc).__name__})
                self._routing.forget(name)
                # a restart in progress is over soon: ask again in a second, not in 30
                self._channels[name] = time.monotonic() - _REMOTE_RECHECK_S + _RETRY_S
                return None
            opened = _Channel(name, reader, writer)
            self._channels[name] = opened
            return opened

    def bounded(self) -> dict[str, tuple[int, int]]:
        """Waiting events and calls in flight per partition, with their bounds (``/metrics``)."""
        s = self._settings
        out: dict[str, tuple[int, int]] = {}
        for name, b in self.batchers.items():
            out[f"batcher_queued_events:{name}"] = (b.queued, s.partition_max_queued_events)
            out[f"batcher_inflight_calls:{name}"] = (b.inflight, s.partition_max_inflight)
            channel = self._channels.get(name)
            if isinstance(channel, _Channel):
                out[f"channel_pending_calls:{name}"] = (channel.pending, s.partition_max_inflight)
        return out

    def _drop_channel(self, name: str) -> None:
        known = self._channels.pop(name, None)
        if isinstance(known, _Channel):
            known.close()

    def _local_node(self) -> str:
        if self._node_id is None:
            import ray

            self._node_id = str(ray.get_runtime_context().get_node_id())
        return self._node_id

    # ------------------------------------------------------------------ direct calls

    async def call(self, site_id: str, method: str, *args: Any) -> Any:
        """``method(*args)`` on the site's owner, with the timeout and "moved" resends."""
        if not self.enabled:
            raise PartitionUnavailable("the partitions are not running")
        timeout = self._settings.partition_call_timeout_s
        started = time.monotonic()
        for _hop in range(_HOPS):
            try:
                table = await self._routing.table()
            except Exception as exc:  # the Registry is not reachable: nothing was sent
                raise PartitionUnavailable(f"routing table: {type(exc).__name__}") from None
            name = table.owner_of(site_id)
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                break
            try:
                handle = self._routing.handle(name)  # raises when the actor is gone
                return await asyncio.wait_for(getattr(handle, method).remote(*args), left)
            except PartitionRetired:
                # a resize retired that partition (nothing written): ask for the new owner
                await self._routing.refresh(table.version)
            except Exception as exc:
                self._routing.forget(name)
                log.warning(
                    "partition call failed", extra={"partition": name, "method": method, "error": type(exc).__name__}
                )
                raise PartitionUnavailable(f"{name}: {type(exc).__name__}") from None
        raise PartitionUnavailable("the routing table did not settle")

    async def close(self) -> None:
        for batcher in list(self.batchers.values()):
            await batcher.close()
        self.batchers.clear()
        for name in list(self._channels):
            self._drop_channel(name)
