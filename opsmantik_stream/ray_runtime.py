"""Connecting to Ray: an existing cluster (``OPSMANTIK_RAY_ADDRESS``) or a local one on 127.0.0.1."""

from __future__ import annotations

import logging
import os
from typing import Any

from opsmantik_stream.config import Settings

__all__ = ["NAMESPACE", "init_ray", "shutdown_ray"]

log = logging.getLogger(__name__)

NAMESPACE = "opsmantik"


def init_ray(settings: Settings, *, address: str | None = None) -> dict[str, Any]:
    """Connect (idempotent). A local Ray has no dashboard, no usage stats, loopback only."""
    # Must be set before ray is imported by anything that may report usage.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    if ray.is_initialized():
        return {"address": "connected"}
    target = address or settings.ray_address
    common: dict[str, Any] = {
        "namespace": NAMESPACE,
        "log_to_driver": True,
        "configure_logging": False,
    }
    if target:
        info = ray.init(address=target, **common)
    else:
        # Ray turns "127.0.0.1" into the machine's routable address unless it believes it runs
        # as a single-node install; this switch (read when Ray starts a node) keeps the head,
        # its raylet and its workers on loopback. Nodes joining with `ray start --address`
        # resolve their own address from the head's loopback address.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # ray may have been imported before the env was set
        info = ray.init(
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            num_cpus=settings.ray_num_cpus,
            **common,
        )
    return {"address": info.address_info.get("address"), "node_ip": info.address_info.get("node_ip_address")}


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
