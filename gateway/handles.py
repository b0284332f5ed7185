"""The gateway's only door to Ray: actor handles and the cached routing table."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opsmantik_stream.routing import RoutingTable

__all__ = ["RoutingCache", "actor_status", "get_actor"]

_REFRESH_S = 1.0


def get_actor(name: str, namespace: str) -> Any:
    from actors.runtime import get_actor as _get

    return _get(name, namespace)


async def actor_status(namespace: str, timeout_s: float = 2.0) -> dict[str, str]:
    from actors.runtime import actor_status as _status

    return await _status(timeout_s, namespace)


class RoutingCache:
    """The Registry's routing table, re-read at most once a second (cheap version check)."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._table: RoutingTable | None = None
        self._checked = 0.0
        self._handles: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    def fresh(self) -> RoutingTable | None:
        """The cached table when it was checked less than a second ago (no await on the hot path)."""
        if self._table is not None and time.monotonic() - self._checked < _REFRESH_S:
            return self._table
        return None

    async def table(self) -> RoutingTable:
        now = time.monotonic()
        if self._table is not None and now - self._checked < _REFRESH_S:
            return self._table
        async with self._lock:
            if self._table is None or time.monotonic() - self._checked >= _REFRESH_S:
                from actors.registry import REGISTRY_NAME

                registry = get_actor(REGISTRY_NAME, self._namespace)
                version = await registry.version.remote()
                if self._table is None or version != self._table.version:
                    raw = await registry.routing.remote()
                    self._table = RoutingTable(
                        version=raw["version"], actors=tuple(raw["actors"]), uploaders=tuple(raw["uploaders"])
                    )
                self._checked = time.monotonic()
        assert self._table is not None
        return self._table

    async def refresh(self, stale_version: int) -> RoutingTable:
        """Re-read the table now because a partition answered "moved" (a resize retired it).

        Only the first of many requests that saw the same stale version asks the Registry;
        the others find the newer table already cached."""
        async with self._lock:
            if self._table is None or self._table.version <= stale_version:
                self._checked = 0.0
        return await self.table()

    def handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = get_actor(name, self._namespace)
        return handle

    def forget(self, name: str) -> None:
        self._handles.pop(name, None)

    async def owner(self, site_id: str) -> tuple[str, Any]:
        table = await self.table()
        name = table.owner_of(site_id)
        return name, self.handle(name)
