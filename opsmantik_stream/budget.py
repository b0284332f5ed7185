"""The connection budget: every PostgreSQL pool of a stack is sized here, from the server's
``max_connections``, so the pools together never ask for more than the server allows.

What is counted (per stack):

- kept free: the server's superuser-reserved slots (and ``reserved_connections``), plus
  ``db_reserved_connections`` for the CLI (its pool is ``CLI_POOL``), migrations, backups and
  an administrator's psql;
- per gateway process (``gateways``): its service pool and its API-role pool;
- the Registry and the Maintenance actor: small fixed pools;
- per partition actor: its ingest pool (``partition_db_connections``) and a pool for call
  events and replays; per uploader actor: one pool. Sized so that the partitions and
  uploaders fit **twice**: a resize (``opsmantik scale``) runs the old and the new
  generation side by side until the old one drains, and both generations are sized from the
  same budget, so any resize fits.

When even the smallest workable pools do not fit, ``plan_pools`` raises ``BudgetError``
naming the numbers; ``opsmantik scale`` refuses with it before changing anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from opsmantik_stream.poolplan import PoolPlan

if TYPE_CHECKING:
    import asyncpg

    from opsmantik_stream.config import Settings

__all__ = [
    "CLI_POOL",
    "REGISTRY_POOL",
    "BudgetError",
    "PoolPlan",
    "ServerLimits",
    "plan_for_settings",
    "plan_pools",
    "pool_size",
    "read_server_limits",
]

# pools of fixed size: the Registry reads and writes one routing row; the CLI runs one
# command at a time (both counted in the plan)
REGISTRY_POOL = 2
CLI_POOL = 2
_MAINTENANCE_POOL = 2
# PostgreSQL's default, assumed until a server has been asked
_DEFAULT_MAX_CONNECTIONS = 100
_DEFAULT_SERVER_RESERVED = 3
_MIN_GATEWAY_POOL = 2


class BudgetError(Exception):
    """The requested pools cannot fit in the server's connections; the message says why."""


class ServerLimits(msgspec.Struct, frozen=True):
    max_connections: int
    # superuser_reserved_connections + reserved_connections: slots ordinary roles never get
    server_reserved: int


def _shrink(mins: list[int], wants: list[int], counts: list[int], room: int) -> list[int]:
    """Sizes between ``mins`` and ``wants`` (per pool; ``counts`` pools of each) that use at
    most ``room`` connections in total, cut back by the same fraction of each pool's
    headroom above its minimum."""
    need_min = sum(m * c for m, c in zip(mins, counts, strict=True))
    need_want = sum(w * c for w, c in zip(wants, counts, strict=True))
    if need_want <= room:
        return list(wants)
    if need_want == need_min:
        return list(mins)
    fraction = max(0.0, (room - need_min) / (need_want - need_min))
    return [m + int((w - m) * fraction) for m, w in zip(mins, wants, strict=True)]


def plan_pools(limits: ServerLimits, *, partitions: int, uploaders: int, settings: Settings) -> PoolPlan:
    """Size every pool for ``partitions`` partitions and ``uploaders`` uploaders (see the
    module doc). Raises ``BudgetError`` when the smallest workable pools do not fit."""
    gateways = settings.gateways
    kept_free = limits.server_reserved + settings.db_reserved_connections
    available = limits.max_connections - kept_free
    # a partition writes ingest batches on its own fixed pool (partition_db_connections) and
    # call events and dead-letter replays on a second one; an uploader's workers each hold at
    # most two connections at a time, so one more than its workers can never deadlock
    partition_min = settings.partition_db_connections + 1
    partition_want = settings.partition_db_connections + 2
    uploader_min = settings.uploader_concurrency + 1
    uploader_want = max(uploader_min, settings.uploader_concurrency * 3)
    gateway_want = max(_MIN_GATEWAY_POOL, settings.db_pool_max)
    min_fixed = gateways * 2 * _MIN_GATEWAY_POOL + REGISTRY_POOL + _MAINTENANCE_POOL
    # the gateways take at most a quarter of the budget; their size does not depend on the
    # number of actors (gateways keep their pools through a resize)
    (gateway,) = _shrink(
        [_MIN_GATEWAY_POOL],
        [gateway_want],
        [2 * gateways],
        max(min_fixed, available // 4) - REGISTRY_POOL - _MAINTENANCE_POOL,
    )
    fixed = gateways * 2 * gateway + REGISTRY_POOL + _MAINTENANCE_POOL
    min_actors = partitions * partition_min + uploaders * uploader_min
    if fixed + 2 * min_actors > available:
        raise BudgetError(
            f"{partitions} partition(s) and {uploaders} uploader(s) need at least {fixed + 2 * min_actors} "
            f"PostgreSQL connections (gateways {fixed}, and twice {min_actors} for the actors so a resize "
            f"fits) but the budget is {available}: max_connections {limits.max_connections} minus "
            f"{limits.server_reserved} reserved for superusers minus {settings.db_reserved_connections} kept free "
            "(OPSMANTIK_DB_RESERVED_CONNECTIONS). Use fewer actors, or raise max_connections "
            "(or OPSMANTIK_DB_MAX_CONNECTIONS)."
        )
    partition, uploader = _shrink(
        [partition_min, uploader_min],
        [partition_want, uploader_want],
        [partitions, uploaders],
        (available - fixed) // 2,
    )
    return PoolPlan(
        max_connections=limits.max_connections,
        kept_free=kept_free,
        gateways=gateways,
        gateway=gateway,
        gateway_api=gateway,
        registry=REGISTRY_POOL,
        maintenance=_MAINTENANCE_POOL,
        cli=CLI_POOL,
        partitions=partitions,
        partition=partition,
        uploaders=uploaders,
        uploader=uploader,
    )


async def read_server_limits(conn: asyncpg.Connection | asyncpg.Pool, settings: Settings) -> ServerLimits:
    """The server's connection limits (``db_max_connections`` overrides max_connections, to
    budget for a share of a server used by other applications too)."""
    row = await conn.fetchrow(
        "SELECT current_setting('max_connections')::int AS max_connections, "
        "current_setting('superuser_reserved_connections')::int "
        "+ coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0) AS reserved"
    )
    assert row is not None
    max_connections = settings.db_max_connections or int(row["max_connections"])
    return ServerLimits(
        max_connections=min(max_connections, int(row["max_connections"])), server_reserved=int(row["reserved"])
    )


def plan_for_settings(settings: Settings) -> PoolPlan:
    """The plan the settings carry (made by the runtime from the server's limits), else one
    for PostgreSQL's default limits and the configured pool sizes."""
    if settings.pool_plan is not None:
        return settings.pool_plan
    limits = ServerLimits(
        max_connections=settings.db_max_connections or _DEFAULT_MAX_CONNECTIONS,
        server_reserved=_DEFAULT_SERVER_RESERVED,
    )
    try:
        return plan_pools(limits, partitions=settings.partition_count, uploaders=settings.uploaders, settings=settings)
    except BudgetError:
        return plan_pools(limits, partitions=1, uploaders=min(settings.uploaders, 1), settings=settings)


def pool_size(settings: Settings, kind: str) -> int:
    """The size of one pool: ``gateway``, ``gateway_api``, ``partition``, ``uploader``,
    ``maintenance``, ``registry`` or ``cli``."""
    return int(getattr(plan_for_settings(settings), kind))
