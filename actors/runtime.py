"""Starting and finding the actors of one stack (Registry, partitions, uploaders, Maintenance)."""

from __future__ import annotations

from typing import Any

import ray

from actors.maintenance import MAINTENANCE_NAME, Maintenance
from actors.partition import SitePartition
from actors.registry import REGISTRY_NAME, Registry
from actors.uploader import Uploader
from opsmantik_stream.config import Settings
from opsmantik_stream.ray_runtime import NAMESPACE

__all__ = ["actor_status", "get_actor", "start_stack", "stop_stack"]

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


def _actor_class(cls: Any) -> Any:
    # @ray.remote turns a class into an ActorClass that type checkers do not see.
    return cls


def get_actor(name: str, namespace: str = NAMESPACE) -> Any:
    return ray.get_actor(name, namespace=namespace)


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
        .remote(db_url, settings.partitions, settings.uploaders)
    )
    table: dict[str, Any] = ray.get(registry.routing.remote(), timeout=60)
    handles = [
        _actor_class(SitePartition)
        .options(name=name, namespace=ns, get_if_exists=True)
        .remote(db_url, settings, name)
        for name in table["actors"]
    ]
    handles += [
        _actor_class(Uploader)
        .options(name=name, namespace=ns, get_if_exists=True)
        .remote(db_url, settings, name)
        for name in table["uploaders"]
    ]
    maintenance = (
        _actor_class(Maintenance)
        .options(name=MAINTENANCE_NAME, namespace=ns, get_if_exists=True)
        .remote(db_url, settings)
    )
    handles.append(maintenance)
    _KEEP[(ns, REGISTRY_NAME)] = registry
    _KEEP[(ns, MAINTENANCE_NAME)] = maintenance
    for name, handle in zip([*table["actors"], *table["uploaders"]], handles, strict=False):
        _KEEP[(ns, name)] = handle
    ray.get([h.ping.remote() for h in handles], timeout=120)
    if start_maintenance:
        ray.get(maintenance.start.remote(), timeout=30)
    if start_uploaders:
        ray.get([_KEEP[(ns, name)].start.remote() for name in table["uploaders"]], timeout=60)
    return table


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
