"""The pool sizes of one stack (``PoolPlan``), apart from ``opsmantik_stream.budget`` which
computes them: the settings carry a plan (``Settings.pool_plan``) and the budget reads the
settings, so the type lives in neither, and neither module imports the other at run time.
"""

from __future__ import annotations

import msgspec

__all__ = ["PoolPlan"]


class PoolPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Pool sizes for one stack, and what they add up to."""

    max_connections: int
    kept_free: int
    gateways: int
    gateway: int
    gateway_api: int
    registry: int
    maintenance: int
    cli: int
    partitions: int
    partition: int
    uploaders: int
    uploader: int

    @property
    def fixed(self) -> int:
        """The gateways', the Registry's and Maintenance's pools (they never resize)."""
        return self.gateways * (self.gateway + self.gateway_api) + self.registry + self.maintenance

    @property
    def actors(self) -> int:
        """One generation of partitions and uploaders."""
        return self.partitions * self.partition + self.uploaders * self.uploader

    @property
    def steady(self) -> int:
        """Connections the stack can hold at once outside a resize."""
        return self.fixed + self.actors

    @property
    def during_resize(self) -> int:
        """The bound while two generations run side by side: each generation, whatever its
        size, is planned within the same half of what the fixed pools leave."""
        return self.fixed + 2 * ((self.max_connections - self.kept_free - self.fixed) // 2)

    def to_dict(self) -> dict[str, int]:
        return {**msgspec.structs.asdict(self), "steady": self.steady, "during_resize": self.during_resize}
