"""SitePartition: the single writer for the sites hashed to it (see docs/architecture.md).

A thin shell around ``IngestStore`` (ingest batches, dead-letter replay) and the call-event
processor. It owns its database connections: ingest batches run on connections that are
never reset (a batch is one statement, it leaves no session state behind), so a batch costs
exactly one round trip.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import ray

from opsmantik_stream.config import Settings

if TYPE_CHECKING:
    import asyncpg

    from opsmantik_stream.ingest.store import IngestStore

__all__ = ["SitePartition"]


async def _keep(conn: asyncpg.Connection) -> None:
    """No reset on release: an ingest batch is one statement and leaves nothing behind."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class SitePartition:
    def __init__(self, db_url: str, settings: Settings, name: str) -> None:
        self._db_url = db_url
        self._settings = settings
        self._name = name
        # resize support (see retire): calls running now, and whether a newer routing
        # table took this partition's sites away
        self._retired = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._init_lock = asyncio.Lock()
        self._store: IngestStore | None = None
        self._pool: asyncpg.Pool | None = None

    async def ping(self) -> str:
        return "ok"

    async def node(self) -> str:
        """The Ray node this actor runs on (placement checks, ``opsmantik status``)."""
        return str(ray.get_runtime_context().get_node_id())

    async def retire(self) -> dict[str, int]:
        """A resize moved this partition's sites to a new generation: from now on every call
        raises ``PartitionRetired`` (nothing written; the gateway resends to the new owner),
        and this returns once the calls already running have committed (drained)."""
        self._retired = True
        await self._idle.wait()
        return {"inflight": self._inflight}

    def _enter(self) -> None:
        if self._retired:
            from opsmantik_stream.routing import PartitionRetired

            raise PartitionRetired(self._name)
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def ingest(self, payload: bytes, timeout_s: float | None = None) -> bytes:
        """A micro-batch of tracker events (msgpack ``list[WireEvent]``) -> msgpack
        ``list[WireResult]``, answered only after the batch's transaction committed.

        ``timeout_s`` is the gateway's: a call that could not start writing within it is
        dropped unwritten (``CallExpired``) instead of queueing behind newer batches."""
        from opsmantik_stream.ingest.schema import decode_wire, encode_results

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._enter()
        try:
            store = self._store or await self._make_store()
            return encode_results(await store.ingest(decode_wire(payload), deadline=deadline))
        finally:
            self._leave()

    async def replay_dead_letter(self, dead_letter_id: int, site_id: str) -> dict[str, object]:
        """Replay one ingest dead letter of a site this partition owns."""
        self._enter()
        try:
            store = self._store or await self._make_store()
            return await store.replay_dead_letter(dead_letter_id, site_id)
        finally:
            self._leave()

    async def ingest_stats(self) -> dict[str, int]:
        store = self._store
        return {} if store is None else dict(store.stats)

    async def _make_store(self) -> IngestStore:
        from opsmantik_stream.ingest.store import IngestStore

        async with self._init_lock:
            if self._store is None:
                import asyncpg

                size = self._settings.partition_db_connections
                pool = await asyncpg.create_pool(
                    self._db_url, min_size=size, max_size=size, reset=_keep, command_timeout=60
                )
                assert pool is not None
                self._store = IngestStore(pool)
        return self._store

    async def call_event(self, payload: bytes) -> bytes:
        """A signed call event of one of this partition's sites (the leads package)."""
        from opsmantik_stream.leads.call_events import process_call_event

        self._enter()
        try:
            pool = self._pool
            if pool is None:
                async with self._init_lock:
                    if self._pool is None:
                        from opsmantik_stream.db import create_pool

                        self._pool = await create_pool(self._db_url, min_size=0, max_size=self._settings.db_pool_max)
                    pool = self._pool
            return await process_call_event(pool, payload, self._settings, getattr(self, "_caches", None))
        finally:
            self._leave()
