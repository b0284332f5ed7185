"""What the gateway needs at run time, built once (by the lifespan or by a test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.handles import RoutingCache
from gateway.partitions import PartitionClient
from gateway.sync import SyncRuntime
from opsmantik_stream.config import Settings

__all__ = ["AppContext"]


@dataclass
class AppContext:
    settings: Settings
    pool: asyncpg.Pool
    # False for an app run without Ray (e.g. unit tests of pure routes); /health says so.
    ray_enabled: bool = True
    # Free-form slots for components added by later modules (limiters, test clocks, ...).
    extras: dict[str, Any] = field(default_factory=dict)
    routing: RoutingCache = field(init=False)
    # every call to a partition goes through this one client (routing, timeout, resends)
    partitions: PartitionClient = field(init=False)
    # the lean /api/sync route's state (site cache, rate limits, counters)
    sync: SyncRuntime = field(init=False)

    def __post_init__(self) -> None:
        self.routing = RoutingCache(self.settings.ray_namespace)
        self.partitions = PartitionClient(self.settings, self.routing, enabled=self.ray_enabled)
        self.sync = SyncRuntime(self.settings, self.pool, self.partitions)
