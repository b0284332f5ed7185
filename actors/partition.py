"""SitePartition: the single writer for the sites hashed to it (see ARCHITECTURE.md)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import ray

from opsmantik_stream.config import Settings

if TYPE_CHECKING:
    from opsmantik_stream.ingest.store import IngestStore

__all__ = ["SitePartition"]


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

    async def ping(self) -> str:
        return "ok"

    async def metrics(self) -> dict[str, object]:
        """Figures for the gateway's /metrics: the store's counters (``ingest_stats``) and the
        ``lru_cache`` statistics of this process. Read at scrape time: nothing per event."""
        from opsmantik_stream.telemetry import lru_cache_figures

        return {"ingest": await self.ingest_stats(), "caches": lru_cache_figures()}

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

    async def ingest(self, payload: bytes) -> bytes:
        """A micro-batch of tracker events (msgpack ``list[WireEvent]``) -> msgpack
        ``list[WireResult]``, answered only after the batch's transaction committed.

        The store (and its caches) is built on first use, so a restarted actor refills its
        caches from PostgreSQL as events arrive."""
        from opsmantik_stream.ingest.schema import decode_wire, encode_results

        self._enter()
        try:
            store = getattr(self, "_ingest_store", None)
            if store is None:
                store = await self._make_ingest_store()
            return encode_results(await store.ingest(decode_wire(payload)))
        finally:
            self._leave()

    async def replay_dead_letter(self, dead_letter_id: int, site_id: str) -> dict[str, object]:
        """Replay one ingest dead letter of a site this partition owns."""
        self._enter()
        try:
            store = getattr(self, "_ingest_store", None)
            if store is None:
                store = await self._make_ingest_store()
            return await store.replay_dead_letter(dead_letter_id, site_id)
        finally:
            self._leave()

    async def ingest_stats(self) -> dict[str, int]:
        store = getattr(self, "_ingest_store", None)
        return {} if store is None else {**store.stats, **store.cache_sizes()}

    async def _make_ingest_store(self) -> IngestStore:
        from opsmantik_stream.db import create_pool
        from opsmantik_stream.ingest.store import IngestStore

        lock = self.__dict__.setdefault("_ingest_init_lock", asyncio.Lock())
        async with lock:
            if getattr(self, "_ingest_store", None) is None:
                if getattr(self, "_pool", None) is None:
                    pool = await create_pool(self._db_url, min_size=0, max_size=self._settings.db_pool_max)
                    if getattr(self, "_pool", None) is None:
                        self._pool = pool
                    else:  # call_event created it meanwhile
                        await pool.close()
                self._ingest_store = IngestStore(self._pool)
        return self._ingest_store

    async def call_event(self, payload: bytes) -> bytes:
        """A signed call event of one of this partition's sites (issue 4's leads package)."""
        from opsmantik_stream.leads.call_events import process_call_event

        self._enter()
        try:
            pool = getattr(self, "_pool", None)
            if pool is None:
                from opsmantik_stream.db import create_pool

                pool = await create_pool(self._db_url, min_size=0, max_size=self._settings.db_pool_max)
                if getattr(self, "_pool", None) is None:
                    self._pool = pool
                else:  # another call created it meanwhile
                    await pool.close()
                    pool = self._pool
            return await process_call_event(pool, payload, self._settings, getattr(self, "_caches", None))
        finally:
            self._leave()
