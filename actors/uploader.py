"""Uploader: drains the offline conversion queue to Google (see SPEC.md §6)."""

from __future__ import annotations

import ray

from opsmantik_stream.config import Settings

__all__ = ["Uploader"]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class Uploader:
    def __init__(self, db_url: str, settings: Settings, name: str) -> None:
        self._db_url = db_url
        self._settings = settings
        self._name = name

    async def ping(self) -> str:
        return "ok"
