"""The settings the hot path relies on are in force: the embedded PostgreSQL's, and the
priority of Ray's worker processes (the partitions)."""

from __future__ import annotations

import asyncio
import os
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
