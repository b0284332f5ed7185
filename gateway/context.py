"""What the gateway needs at run time, built once (by the lifespan or by a test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.handles import RoutingCache
from opsmantik_stream.config import Settings

__all__ = ["AppContext"]


@dataclass
class AppContext:
    settings: Settings
    pool: asyncpg.Pool
    # False for an app run without Ray (e.g. unit tests of pure routes); /health says so.
    ray_enabled: bool = True
    # Free-form slots for components added by later modules (micro-batcher, limiters, ...).
    extras: dict[str, Any] = field(default_factory=dict)
    routing: RoutingCache = field(init=False)

    def __post_init__(self) -> None:
        self.routing = RoutingCache(self.settings.ray_namespace)
