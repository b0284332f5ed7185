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

from opsmantik_stream.budget import REGISTRY_POOL
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
        self._pending: RoutingTable | None = None  # prepared by a resize, not yet committed
        self._autostart: bool | None = None

    async def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await create_pool(self._db_url, min_size=0, max_size=REGISTRY_POOL)
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
        """Publish a new table version at once (prepare + commit; actors are started by the caller).

        ``opsmantik scale`` uses :meth:`prepare` and :meth:`commit` instead, so the new
        generation is running before any gateway routes to it."""
        pending = await self.prepare(partitions, uploaders)
        return await self.commit(int(pending["version"]))

    async def prepare(self, partitions: int, uploaders: int) -> dict[str, Any]:
        """Phase one of a resize: the next table (version + 1, names carry the version), not
        yet visible to anyone. The caller creates and pings its actors, then commits.

        A pending table left by a resize that died half-way is replaced (its actors were
        never routed to)."""
        if partitions < 1 or uploaders < 0:
            raise ValueError("partitions must be >= 1 and uploaders >= 0")
        current = await self._load()
        async with self._lock:
            version = max(current.version, self._pending.version if self._pending else 0) + 1
            self._pending = RoutingTable(
                version=version,
                actors=tuple(partition_actor_name(version, i) for i in range(partitions)),
                uploaders=tuple(uploader_actor_name(version, i) for i in range(uploaders)),
            )
            return _to_json(self._pending)

    async def commit(self, version: int) -> dict[str, Any]:
        """Phase two: persist the prepared table and make it the current one (gateways see it
        at their next version check, at most a second later)."""
        await self._load()
        async with self._lock:
            if self._pending is None or self._pending.version != version:
                raise ValueError(
                    f"no prepared routing table v{version} (another resize won, or the Registry restarted)"
                )
            table = self._pending
            pool = await self._db()
            await pool.execute(Q.runtime.put_state, "routing", _to_json(table))
            self._table = table
            self._pending = None
        return _to_json(table)

    async def abort(self, version: int) -> None:
        """Forget a prepared table (its actors are removed by the caller)."""
        async with self._lock:
            if self._pending is not None and self._pending.version == version:
                self._pending = None

    async def pending(self) -> dict[str, Any] | None:
        return None if self._pending is None else _to_json(self._pending)

    async def set_uploaders_autostart(self, on: bool) -> None:
        """Whether this stack runs its uploaders' loops (``opsmantik serve``): a resize starts
        the new generation and a restarted uploader resumes its loop only then. Persisted."""
        pool = await self._db()
        await pool.execute(Q.runtime.put_state, "uploaders_autostart", {"on": bool(on)})
        self._autostart = bool(on)

    async def uploaders_autostart(self) -> bool:
        if self._autostart is None:
            pool = await self._db()
            raw = await pool.fetchval(Q.runtime.get_state, "uploaders_autostart")
            self._autostart = bool(raw and raw.get("on"))
        return self._autostart

    async def uploader_share(self, name: str) -> tuple[int, int]:
        """(index, pool size) of an uploader, so it can take its share of a global budget."""
        table = await self._load()
        if name not in table.uploaders:
            return (-1, len(table.uploaders))
        return (table.uploaders.index(name), len(table.uploaders))

    async def database_url(self) -> str:
        """The database the stack's actors use (a resize gives it to the new generation)."""
        return self._db_url

    async def ping(self) -> str:
        return "ok"


def _to_json(table: RoutingTable) -> dict[str, Any]:
    return {"version": table.version, "actors": list(table.actors), "uploaders": list(table.uploaders)}
