"""The Registry actor: pool sizes and the versioned routing table, persisted in PostgreSQL.

Nothing else hard-codes the partition count: gateways ask the Registry for the table and
route with ``partition_for(site_id, len(table.actors))``. The table is stored in
``runtime_state`` so a restarted Registry (or a restarted stack) keeps its version.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import ray

from opsmantik_stream.db import create_pool
from opsmantik_stream.queries import Q
from opsmantik_stream.routing import RoutingTable

__all__ = ["REGISTRY_NAME", "Registry", "partition_actor_name", "uploader_actor_name"]

REGISTRY_NAME = "registry"


def partition_actor_name(version: int, index: int) -> str:
    # The version is part of the name: a resize creates a new generation of owners while
    # the old generation drains the batches it already holds.
    return f"partition-v{version}-{index}"


def uploader_actor_name(version: int, index: int) -> str:
    return f"uploader-v{version}-{index}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Registry:
    def __init__(self, db_url: str, partitions: int, uploaders: int) -> None:
        self._db_url = db_url
        self._defaults = (partitions, uploaders)
        self._pool: asyncpg.Pool | None = None
        self._table: RoutingTable | None = None
        self._lock = asyncio.Lock()

    async def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await create_pool(self._db_url, min_size=0, max_size=2)
        return self._pool

    async def _load(self) -> RoutingTable:
        if self._table is not None:
            return self._table
        async with self._lock:
            if self._table is None:
                pool = await self._db()
                row = await pool.fetchval(Q.runtime.get_state, "routing")
                if row is None:
                    partitions, uploaders = self._defaults
                    table = RoutingTable(
                        version=1,
                        actors=tuple(partition_actor_name(1, i) for i in range(partitions)),
                        uploaders=tuple(uploader_actor_name(1, i) for i in range(uploaders)),
                    )
                    await pool.execute(Q.runtime.put_state, "routing", _to_json(table))
                    self._table = table
                else:
                    self._table = RoutingTable(
                        version=row["version"], actors=tuple(row["actors"]), uploaders=tuple(row["uploaders"])
                    )
        assert self._table is not None
        return self._table

    async def routing(self) -> dict[str, Any]:
        return _to_json(await self._load())

    async def version(self) -> int:
        return (await self._load()).version

    async def publish(self, partitions: int, uploaders: int) -> dict[str, Any]:
        """Publish a new table version with the given pool sizes (actors are started by the caller)."""
        if partitions < 1 or uploaders < 0:
            raise ValueError("partitions must be >= 1 and uploaders >= 0")
        current = await self._load()
        async with self._lock:
            version = current.version + 1
            table = RoutingTable(
                version=version,
                actors=tuple(partition_actor_name(version, i) for i in range(partitions)),
                uploaders=tuple(uploader_actor_name(version, i) for i in range(uploaders)),
            )
            pool = await self._db()
            await pool.execute(Q.runtime.put_state, "routing", _to_json(table))
            self._table = table
        return _to_json(table)

    async def uploader_share(self, name: str) -> tuple[int, int]:
        """(index, pool size) of an uploader, so it can take its share of a global budget."""
        table = await self._load()
        if name not in table.uploaders:
            return (-1, len(table.uploaders))
        return (table.uploaders.index(name), len(table.uploaders))

    async def ping(self) -> str:
        return "ok"


def _to_json(table: RoutingTable) -> dict[str, Any]:
    return {"version": table.version, "actors": list(table.actors), "uploaders": list(table.uploaders)}
