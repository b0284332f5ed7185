"""What the gateway needs at run time, built once (by the lifespan or by a test)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from gateway.handles import RoutingCache
from gateway.partitions import PartitionClient
from gateway.sync import SyncRuntime
from opsmantik_stream.config import Settings

if TYPE_CHECKING:  # only for the annotations: these modules read the context themselves
    from gateway.limits import KeyedLimit
    from gateway.metrics import MetricsState
    from gateway.signed import SignedSites

__all__ = ["AppContext"]


@dataclass
class AppContext:
    settings: Settings
    pool: asyncpg.Pool
    # False for an app run without Ray (e.g. unit tests of pure routes); /health says so.
    ray_enabled: bool = True
    # The clocks the routes read (a test moves time by replacing them).
    clock: Callable[[], float] = field(default=time.time)
    monotonic: Callable[[], float] = field(default=time.monotonic)
    # The routes' keyed limiters by name, made on first use (``gateway.limits.route_limit``);
    # a test may put its own in.
    route_limits: dict[str, KeyedLimit] = field(default_factory=dict)
    # Made on first use by the module that owns them.
    signed_sites: SignedSites | None = None
    metrics: MetricsState | None = None
    routing: RoutingCache = field(init=False)
    # every call to a partition goes through this one client (routing, timeout, resends)
    partitions: PartitionClient = field(init=False)
    # the lean /api/sync route's state (site cache, rate limits, counters)
    sync: SyncRuntime = field(init=False)

    def __post_init__(self) -> None:
        self.routing = RoutingCache(self.settings.ray_namespace)
        self.partitions = PartitionClient(self.settings, self.routing, enabled=self.ray_enabled)
        self.sync = SyncRuntime(self.settings, self.pool, self.partitions)
