"""The settings the hot path relies on are in force: the embedded PostgreSQL's, the
priority of Ray's worker processes (the partitions), and Ray without the background work of
features the product does not use."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import asyncpg
import ray

from opsmantik_stream.db import EMBEDDED_SETTINGS, EmbeddedPostgres


def test_embedded_server_runs_with_its_settings(tmp_path: Path) -> None:
    embedded = EmbeddedPostgres(tmp_path)
    url = embedded.start()

    async def show() -> dict[str, str]:
        conn = await asyncpg.connect(url)
        try:
            return {name: await conn.fetchval(f"SHOW {name}") for name in EMBEDDED_SETTINGS}
        finally:
            await conn.close()

    try:
        shown = asyncio.run(show())
    finally:
        embedded.stop()
    # a new database is restarted once, so shared_buffers is in force too
    assert shown == EMBEDDED_SETTINGS
    assert shown["wal_init_zero"] == "off"


@ray.remote
def _niceness() -> int:
    return os.nice(0)


def test_ray_workers_are_not_deprioritised(ray_session: None) -> None:
    # Ray's default is 15; a partition at 15 starves behind the gateway and PostgreSQL
    assert ray.get(_niceness.remote(), timeout=60) == 0


_QUIET_RAY = (
    "RAY_enable_metrics_collection",
    "RAY_event_stats",
    "RAY_enable_task_events",
    "RAY_num_workers_soft_limit",
)


@ray.remote
def _ray_environment() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in _QUIET_RAY}


def _idle_workers(raylet: int) -> list[int]:
    """The raylet's worker processes that wait in its pool (``ray::IDLE``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            title = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == raylet and title.startswith(b"ray::IDLE"):
            out.append(int(entry.name))
    return out


def test_ray_keeps_no_idle_workers_and_none_of_its_unused_background_work(ray_session: None) -> None:
    # the worker that runs a task got the settings from the raylet, like every Ray process
    assert ray.get(_ray_environment.remote(), timeout=60) == {
        "RAY_enable_metrics_collection": "0",
        "RAY_event_stats": "0",
        "RAY_enable_task_events": "0",
        "RAY_num_workers_soft_limit": "0",
    }
    # ... and once that task is done, its idle worker is not kept in a pool (Ray's default
    # keeps one per CPU it advertises: ~100 MB and ~0.4 % of a core each, for nothing here)
    from ray._private import worker as ray_worker

    node = ray_worker._global_node
    assert node is not None
    raylet = node.all_processes["raylet"][0].process.pid
    deadline = time.monotonic() + 30
    while _idle_workers(raylet) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _idle_workers(raylet) == []
