"""Starting, resizing and finding the actors of one stack (Registry, partitions, uploaders,
Maintenance).

Placement: partitions and uploaders are created with ``scheduling_strategy="SPREAD"`` so they
spread over the nodes of a cluster, and, when some node advertises the custom resource
``opsmantik_partition`` / ``opsmantik_uploader`` (see ray_cluster.yaml), each asks for a
small amount of it, which keeps them on those nodes. A resource no node has is never asked
for (the actor would never be placed).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from actors.maintenance import MAINTENANCE_NAME, Maintenance
from actors.partition import SitePartition
from actors.registry import REGISTRY_NAME, Registry
from actors.uploader import Uploader
from opsmantik_stream.budget import PoolPlan, ServerLimits, plan_pools, read_server_limits
from opsmantik_stream.config import Settings
from opsmantik_stream.ray_runtime import NAMESPACE

__all__ = [
    "PARTITION_RESOURCE",
    "UPLOADER_RESOURCE",
    "actor_status",
    "get_actor",
    "placement_options",
    "plan_stack",
    "role_settings",
    "scale_stack",
    "start_stack",
    "stop_stack",
]

log = logging.getLogger(__name__)

PARTITION_RESOURCE = "opsmantik_partition"
UPLOADER_RESOURCE = "opsmantik_uploader"
# what one actor asks of its custom resource: small, so a node advertising 8 holds 800
_RESOURCE_UNIT = 0.01
# how long a retired partition keeps answering "moved" before it is killed: longer than the
# gateways' routing refresh interval (1 s), so no gateway still routes to it afterwards
RETIRE_GRACE_S = 2.5

# Named actors that are not detached are reference counted like any other: the driver that
# started them keeps a handle to each for as long as it runs, or Ray collects them.
_KEEP: dict[tuple[str, str], Any] = {}


def stop_stack(namespace: str) -> None:
    """Kill every actor this process started in ``namespace`` (tests, shutdown)."""
    for key in [k for k in _KEEP if k[0] == namespace]:
        handle = _KEEP.pop(key)
        try:
            ray.kill(handle, no_restart=True)
        except Exception:
            pass


def role_settings(settings: Settings, role: str, plan: PoolPlan | None = None) -> Settings:
    """What one kind of actor is given.

    Only uploaders may open credentials, so only they get the vault's private key (or may
    read its file); every other actor gets neither. Each actor carries the pool plan; a
    partition's planned connections are its ingest pool (``partition_db_connections``) plus
    its call-event pool, whose size it reads from ``db_pool_max``.
    """
    changes: dict[str, Any] = {}
    if plan is not None:
        changes["pool_plan"] = plan
        if role == "partition":
            changes.update(db_pool_max=max(1, plan.partition - settings.partition_db_connections), db_pool_min=0)
    if role == "uploader":
        return settings.with_overrides(vault_open_credentials=True, **changes)
    return settings.with_overrides(vault_key=None, vault_open_credentials=False, **changes)


def plan_stack(settings: Settings, db_url: str, partitions: int, uploaders: int) -> PoolPlan:
    """The pool plan for this many actors against the server's limits (``BudgetError`` when
    they cannot fit)."""
    from opsmantik_stream.db import run_sync

    async def limits() -> ServerLimits:
        import asyncpg

        conn = await asyncpg.connect(db_url)
        try:
            return await read_server_limits(conn, settings)
        finally:
            await conn.close()

    return plan_pools(run_sync(limits()), partitions=partitions, uploaders=uploaders, settings=settings)


def _actor_class(cls: Any) -> Any:
    # @ray.remote turns a class into an ActorClass that type checkers do not see.
    return cls


def get_actor(name: str, namespace: str = NAMESPACE) -> Any:
    return ray.get_actor(name, namespace=namespace)


def placement_options(resource: str) -> dict[str, Any]:
    """Ray options that spread actors of one kind over the cluster's nodes (see module doc)."""
    options: dict[str, Any] = {"scheduling_strategy": "SPREAD"}
    try:
        advertised = float(ray.cluster_resources().get(resource, 0.0))  # type: ignore[no-untyped-call]
    except Exception:  # pragma: no cover - the GCS did not answer: plain SPREAD
        advertised = 0.0
    if advertised >= _RESOURCE_UNIT:
        options["resources"] = {resource: _RESOURCE_UNIT}
    return options


def _create(cls: Any, name: str, ns: str, resource: str, *args: Any, detached: bool = False) -> Any:
    options = placement_options(resource)
    if detached:
        options["lifetime"] = "detached"
    handle = _actor_class(cls).options(name=name, namespace=ns, get_if_exists=True, **options).remote(*args)
    _KEEP[(ns, name)] = handle
    return handle


def start_stack(
    settings: Settings, db_url: str, *, start_maintenance: bool = True, start_uploaders: bool = False
) -> dict[str, Any]:
    """Create (or find) every named actor of the current routing table; returns the table.

    ``start_uploaders`` starts the uploaders' loops (``opsmantik serve``); tests drive them
    with ``run_once`` instead."""
    ns = settings.ray_namespace
    registry = (
        _actor_class(Registry)
        .options(name=REGISTRY_NAME, namespace=ns, get_if_exists=True)
        .remote(db_url, settings.partition_count, settings.uploaders)
    )
    table: dict[str, Any] = ray.get(registry.routing.remote(), timeout=60)
    plan = plan_stack(settings, db_url, len(table["actors"]), len(table["uploaders"]))
    partition_cfg, uploader_cfg = role_settings(settings, "partition", plan), role_settings(settings, "uploader", plan)
    handles = [
        _create(SitePartition, name, ns, PARTITION_RESOURCE, db_url, partition_cfg, name) for name in table["actors"]
    ]
    handles += [
        _create(Uploader, name, ns, UPLOADER_RESOURCE, db_url, uploader_cfg, name) for name in table["uploaders"]
    ]
    maintenance = (
        _actor_class(Maintenance)
        .options(name=MAINTENANCE_NAME, namespace=ns, get_if_exists=True)
        .remote(db_url, role_settings(settings, "maintenance", plan), autostart=start_maintenance)
    )
    handles.append(maintenance)
    _KEEP[(ns, REGISTRY_NAME)] = registry
    _KEEP[(ns, MAINTENANCE_NAME)] = maintenance
    ray.get([h.ping.remote() for h in handles], timeout=120)
    # a restarted uploader, and every generation a resize creates, runs its loop only when
    # the stack does (`opsmantik serve`); tests drive uploaders with run_once instead
    ray.get(registry.set_uploaders_autostart.remote(start_uploaders), timeout=30)
    if start_maintenance:
        ray.get(maintenance.start.remote(), timeout=30)
    if start_uploaders:
        ray.get([_KEEP[(ns, name)].start.remote() for name in table["uploaders"]], timeout=60)
    return table


def scale_stack(
    settings: Settings,
    db_url: str | None,
    partitions: int,
    uploaders: int,
    *,
    timeout_s: float = 120.0,
    retire_grace_s: float = RETIRE_GRACE_S,
) -> dict[str, Any]:
    """Resize a running stack to ``partitions`` partitions and ``uploaders`` uploaders.

    1. The Registry prepares routing table version v+1 (actor names carry the version).
    2. The new partitions and uploaders are created (spread over the nodes) and pinged, so
       no gateway is ever routed to an actor that does not exist yet. New partitions start
       with empty caches and fill them from PostgreSQL.
    3. The old uploaders drain (no new claims, in-flight attempts finish) before any new one
       starts, so the pool never holds more than the account budget.
    4. The Registry commits v+1 (persisted); gateways see it within a second.
    5. The new uploaders start (when the stack runs its uploaders); their budget shares come
       from the new table.
    6. The old partitions retire: calls already running finish (batches in flight complete
       on their old owner), later calls answer "moved" and the gateway resends them to the
       new owner (every event is idempotent).
    7. After a grace period longer than the gateways' routing refresh, the old generation
       is killed.

    The new actors are detached: they must outlive the process that ran the resize (e.g.
    ``opsmantik scale``); stopping the stack (or its local Ray) removes them.

    ``db_url`` None takes the database URL from the Registry (the one the stack runs on).
    Returns a summary (old and new table, timings). On a failure before the commit the new
    actors are removed and the old table stays in force.
    """
    ns = settings.ray_namespace
    started = time.monotonic()
    registry = get_actor(REGISTRY_NAME, ns)
    if db_url is None:  # `opsmantik scale`: the database the running stack uses
        db_url = str(ray.get(registry.database_url.remote(), timeout=30))
    old: dict[str, Any] = ray.get(registry.routing.remote(), timeout=30)
    # refuse before anything changes when the new generation cannot fit beside the old one
    plan = plan_stack(settings, db_url, partitions, uploaders)
    new: dict[str, Any] = ray.get(registry.prepare.remote(partitions, uploaders), timeout=30)
    created: list[str] = []
    try:
        partition_cfg, uploader_cfg = (
            role_settings(settings, "partition", plan),
            role_settings(settings, "uploader", plan),
        )
        for name in new["actors"]:
            _create(SitePartition, name, ns, PARTITION_RESOURCE, db_url, partition_cfg, name, detached=True)
            created.append(name)
        for name in new["uploaders"]:
            _create(Uploader, name, ns, UPLOADER_RESOURCE, db_url, uploader_cfg, name, detached=True)
            created.append(name)
        ray.get([_KEEP[(ns, n)].ping.remote() for n in created], timeout=timeout_s)
        autostart = bool(ray.get(registry.uploaders_autostart.remote(), timeout=30))
        old_uploaders = _existing(old["uploaders"], ns)
        # drain before the commit: nothing of the old generation sends once the new one starts
        ray.get([h.drain.remote() for h in old_uploaders.values()], timeout=timeout_s)
        ray.get(registry.commit.remote(new["version"]), timeout=30)
    except BaseException:
        log.exception("resize to v%s failed; the old routing table stays", new["version"])
        ray.get(registry.abort.remote(new["version"]), timeout=30)
        for name in created:
            _kill(ns, name)
        if old["uploaders"]:
            # the old generation is still in force: resume it if the stack runs uploaders
            _restart_uploaders(old["uploaders"], ns, registry)
        raise
    committed = time.monotonic()
    if autostart and new["uploaders"]:
        ray.get([_KEEP[(ns, n)].start.remote() for n in new["uploaders"]], timeout=timeout_s)
    old_partitions = _existing(old["actors"], ns)
    drained = ray.get([h.retire.remote() for h in old_partitions.values()], timeout=timeout_s)
    retired = time.monotonic()
    time.sleep(retire_grace_s)
    for name in [*old["actors"], *old["uploaders"]]:
        _kill(ns, name)
    return {
        "previous": old,
        "routing": new,
        "uploaders_started": bool(autostart and new["uploaders"]),
        "partitions_drained": len(drained),
        "commit_s": round(committed - started, 3),
        "drain_s": round(retired - committed, 3),
        "total_s": round(time.monotonic() - started, 3),
    }


def _existing(names: list[str], ns: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        handle = _KEEP.get((ns, name))
        if handle is None:
            try:
                handle = get_actor(name, ns)
            except ValueError:
                continue  # never created (or already gone)
        out[name] = handle
    return out


def _restart_uploaders(names: list[str], ns: str, registry: Any) -> None:
    try:
        if ray.get(registry.uploaders_autostart.remote(), timeout=30):
            ray.get([h.start.remote() for h in _existing(names, ns).values()], timeout=60)
    except Exception:
        log.exception("could not restart the old uploaders")


def _kill(ns: str, name: str) -> None:
    handle = _KEEP.pop((ns, name), None)
    if handle is None:
        try:
            handle = get_actor(name, ns)
        except ValueError:
            return
    try:
        ray.kill(handle, no_restart=True)
    except Exception:
        pass


async def actor_status(timeout_s: float = 2.0, namespace: str = NAMESPACE) -> dict[str, str]:
    """Ping every actor the routing table names; ``ok`` or the reason it did not answer."""
    import asyncio

    status: dict[str, str] = {}
    try:
        registry = get_actor(REGISTRY_NAME, namespace)
        table = await asyncio.wait_for(registry.routing.remote(), timeout_s)
        status[REGISTRY_NAME] = "ok"
    except Exception as exc:
        return {REGISTRY_NAME: f"unavailable: {type(exc).__name__}"}
    names = [*table["actors"], *table["uploaders"], MAINTENANCE_NAME]

    async def ping(name: str) -> tuple[str, str]:
        try:
            return name, await asyncio.wait_for(get_actor(name, namespace).ping.remote(), timeout_s)
        except Exception as exc:
            return name, f"unavailable: {type(exc).__name__}"

    for name, state in await asyncio.gather(*(ping(n) for n in names)):
        status[name] = state
    return status
