"""Maintenance: the singleton that runs periodic jobs (``opsmantik_stream.jobs.JOBS``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
import ray

from opsmantik_stream.budget import pool_size
from opsmantik_stream.config import Settings
from opsmantik_stream.db import create_pool
from opsmantik_stream.jobs import JOBS, run_job

__all__ = ["MAINTENANCE_NAME", "Maintenance"]

MAINTENANCE_NAME = "maintenance"
log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Maintenance:
    def __init__(self, db_url: str, settings: Settings, autostart: bool = False) -> None:
        self._db_url = db_url
        self._settings = settings
        # Ray restarts a crashed Maintenance with the same arguments: with autostart it
        # resumes its job loop by itself (here when a loop runs, else on the next call).
        self._autostart = autostart
        self._pool: asyncpg.Pool | None = None
        self._last_run: dict[str, float] = {}
        self._last_result: dict[str, Any] = {}
        self._loop_task: asyncio.Task[None] | None = None
        if autostart:
            with contextlib.suppress(RuntimeError):  # no running loop yet: _ensure_started later
                self._loop_task = asyncio.get_running_loop().create_task(self._loop(5.0))

    def _ensure_started(self) -> None:
        if self._autostart and self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._loop(5.0))

    async def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await create_pool(self._db_url, min_size=0, max_size=pool_size(self._settings, "maintenance"))
        return self._pool

    async def start(self, tick_s: float = 5.0) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._loop(tick_s))

    async def _loop(self, tick_s: float) -> None:
        while True:
            now = time.monotonic()
            for job in JOBS.values():
                last = self._last_run.get(job.name)
                if last is None or now - last >= job.interval_s:
                    self._last_run[job.name] = now
                    try:
                        await self.run(job.name)
                    except Exception:
                        log.exception("job %s failed", job.name)
            await asyncio.sleep(tick_s)

    async def run(self, name: str) -> dict[str, Any]:
        result = await run_job(name, await self._db(), self._settings)
        self._last_result[name] = result
        return result

    async def status(self) -> dict[str, Any]:
        self._ensure_started()
        return {"jobs": sorted(JOBS), "running": self._loop_task is not None, "last_result": self._last_result}

    async def ping(self) -> str:
        self._ensure_started()
        return "ok"
