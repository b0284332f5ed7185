"""Connecting to Ray: an existing cluster (``OPSMANTIK_RAY_ADDRESS``) or a local one on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from opsmantik_stream.config import Settings
from opsmantik_stream.logs import ray_runtime_env

__all__ = ["NAMESPACE", "init_ray", "prepare_ray_environment", "shutdown_ray"]

log = logging.getLogger(__name__)

NAMESPACE = "opsmantik"


def prepare_ray_environment() -> None:
    """Environment for Ray, set before Ray reads it (call early: CLI entry, test set-up).

    Token authentication is on explicitly: a local cluster keeps its token in
    ~/.ray/auth_token and every driver that connects later (status, scale) sends it.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Workers log JSON lines (opsmantik_stream/logs.py); forwarded to the driver's stderr without
    # Ray's "(ActorName pid=...)" prefix they stay JSON there too (the line names its actor).
    os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")
    # Ray starts its worker processes at nice 15 by default, to keep them behind its own
    # daemons. Here the workers are the ingest hot path (partitions) and share the machine
    # with the gateway and PostgreSQL at nice 0: whenever the CPU was busy a partition got a
    # small fraction of the gateway's share, and batches waited in a runnable actor. Read by
    # the raylet that a local `ray.init` starts; nodes started with `ray start` need it too.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # What Ray does in the background for features this product never uses, measured on an
    # idle 2-partition stack with 2 uploaders (30 s, % of one core, docs/performance.md):
    # - its own metrics (the product's are prometheus-client's), per-handler event-loop
    #   statistics and task events for the state API and timeline: 8.4-9.3 % -> 7.3-7.8 %;
    # - pooled idle workers, kept for Ray tasks (every process here is a named actor with a
    #   worker of its own): two more processes, ~0.8 % and ~100 MB each, -> 6.9-7.2 %.
    # Read by the raylet, the GCS and every worker of a local `ray.init`; nodes started with
    # `ray start` take them from their own environment.
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    os.environ.setdefault("RAY_event_stats", "0")
    os.environ.setdefault("RAY_enable_task_events", "0")
    os.environ.setdefault("RAY_num_workers_soft_limit", "0")
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    if "ray._private.ray_constants" in sys.modules:  # Ray read it at import, before this ran
        from ray._private import ray_constants

        ray_constants.RAY_DISABLE_WORKER_LOG_PREFIX = os.environ["RAY_DISABLE_WORKER_LOG_PREFIX"] not in {"0", ""}
    if os.environ.get("RAY_AUTH_MODE") is None:
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray._raylet" in sys.modules:
            # Ray caches its config at import; refresh it the way Ray itself does when it
            # turns token mode on.
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")


def init_ray(settings: Settings, *, address: str | None = None) -> dict[str, Any]:
    """Connect (idempotent). A local Ray has no dashboard, no usage stats, loopback only."""
    prepare_ray_environment()
    import ray

    if ray.is_initialized():
        return {"address": "connected"}
    target = address or settings.ray_address
    if not target or _is_loopback(target):
        _keep_loopback()
    common: dict[str, Any] = {
        "namespace": NAMESPACE,
        "log_to_driver": True,
        "configure_logging": False,
        # every worker process (every actor) logs like the gateway: one set-up, run by Ray
        "runtime_env": ray_runtime_env(settings.log_level),
    }
    if target:
        info = ray.init(address=target, **common)
    else:
        info = ray.init(
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            num_cpus=settings.ray_num_cpus,
            # a local head hosts partitions and uploaders itself; nodes that join it (with the
            # same resources) share them, and when such a node goes away its actors restart
            # here (see placement_options in actors/runtime.py)
            resources={"opsmantik_partition": 64.0, "opsmantik_uploader": 64.0},
            **common,
        )
    address_info: dict[str, Any] = getattr(info, "address_info", {})
    return {"address": address_info.get("address"), "node_ip": address_info.get("node_ip_address")}


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in {"127.0.0.1", "localhost", "::1", "[::1]"} or host.startswith("127.")


def _keep_loopback() -> None:
    """Keep Ray on 127.0.0.1.

    Ray replaces "127.0.0.1" (as a node address, and as the address of a cluster to join)
    with the machine's routable address unless it believes it runs as a single-machine
    install. This switch, read when Ray starts or joins a node, keeps the head, its raylet,
    its workers and every driver that connects to it on loopback. Nodes that join with
    `ray start --address=127.0.0.1:PORT` take their own address from that loopback address.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # ray may have been imported before the env was set


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
