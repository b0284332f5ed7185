"""SitePartition: the single writer for the sites hashed to it (see ARCHITECTURE.md)."""

from __future__ import annotations

import ray

from opsmantik_stream.config import Settings

__all__ = ["SitePartition"]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class SitePartition:
    def __init__(self, db_url: str, settings: Settings, name: str) -> None:
        self._db_url = db_url
        self._settings = settings
        self._name = name

    async def ping(self) -> str:
        return "ok"
