"""Every call from the gateway to a ``SitePartition``, in one place.

- ``PartitionClient.ingest(site_id, events)``: through the owner's micro-batcher, so the
  events of many requests travel in one actor call.
- ``PartitionClient.call(site_id, method, *args)``: a direct call (signed call events,
  dead-letter replay).

Both resolve the owner from the routing table, bound the call with
``partition_call_timeout_s``, and when a resize retired the owner (it answers "moved",
nothing written) re-read the table and resend to the new owner -- every call is idempotent.
A dead actor's handle is looked up again on the next call. Whatever fails is raised as
``PartitionUnavailable`` (the route answers 503 + Retry-After: nothing was acknowledged).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.batcher import Backpressure, PartitionBatcher, PartitionMoved, PartitionUnavailable
from gateway.handles import RoutingCache
from gateway.metrics import BATCH_SIZE
from opsmantik_stream.config import Settings
from opsmantik_stream.ingest.schema import WireResult
from opsmantik_stream.routing import PartitionRetired

__all__ = ["Backpressure", "PartitionClient", "PartitionMoved", "PartitionUnavailable"]

log = logging.getLogger(__name__)

_HOPS = 3


class PartitionClient:
    """The gateway's door to the partitions (one per gateway process)."""

    def __init__(self, settings: Settings, routing: RoutingCache, *, enabled: bool = True) -> None:
        self._settings = settings
        self._routing = routing
        # False when the gateway runs without Ray (tests of routes that need no actors)
        self.enabled = enabled
        self.batchers: dict[str, PartitionBatcher] = {}

    # ------------------------------------------------------------------ ingest

    async def ingest(self, site_id: str, encoded: list[bytes]) -> list[WireResult]:
        """Send a request's events (each msgpack-encoded ``WireEvent``) to the site's owner;
        their results once the owner's transaction committed."""
        for _hop in range(_HOPS):
            table = self._routing.fresh() or await self._routing.table()
            name = table.owner_of(site_id)
            try:
                return await self.batcher(name).submit(encoded)
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
                self._sender(name, "ingest"),
                max_events=settings.batch_max_events,
                max_bytes=settings.batch_max_bytes,
                max_wait_s=settings.batch_max_wait_ms / 1000.0,
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
            try:
                # by name: a batch always goes to the actor it was gathered for, even when
                # the routing table moved on meanwhile (it drains there). The timeout goes
                # along: a call that waited longer than that inside the actor is dropped
                # there unwritten (this side has answered 503 by then).
                handle = routing.handle(name)
                return bytes(await asyncio.wait_for(getattr(handle, method).remote(payload, timeout), timeout))
            except PartitionRetired:
                raise
            except Exception:
                routing.forget(name)
                raise

        return send

    # ------------------------------------------------------------------ direct calls

    async def call(self, site_id: str, method: str, *args: Any) -> Any:
        """``method(*args)`` on the site's owner, with the timeout and "moved" resends."""
        if not self.enabled:
            raise PartitionUnavailable("the partitions are not running")
        timeout = self._settings.partition_call_timeout_s
        started = time.monotonic()
        for _hop in range(_HOPS):
            table = await self._routing.table()
            name = table.owner_of(site_id)
            handle = self._routing.handle(name)
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                break
            try:
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
