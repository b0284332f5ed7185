"""Uploader: drains the offline conversion queue to Google (see SPEC.md §6).

The work itself is :class:`opsmantik_stream.uploads.UploadEngine`; this actor owns the event
loop side: a few worker tasks (``settings.uploader_concurrency``) that call
``engine.run_once()`` until drained, and the uploader's share of every account budget, read
from the Registry and re-read when the routing version changes (a resize re-splits budgets).

Methods: ``start()``, ``drain()`` (finish in-flight work, take no more), ``stop()`` (cancel at
once; claimed rows are rescued later), ``run_once()`` (one deterministic iteration, for tests
and operators), ``status()``, ``ping()``, ``metrics()`` (figures for ``/metrics``),
``test_credentials()`` (the connection test of ``POST /api/sites/{site}/credentials/test``:
only uploaders hold the vault key that opens stored credentials).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
import ray

from actors.registry import REGISTRY_NAME
from opsmantik_stream.budget import pool_size
from opsmantik_stream.config import Settings
from opsmantik_stream.db import create_pool
from opsmantik_stream.enums import ActorType
from opsmantik_stream.uploads import UploadEngine, delivery
from opsmantik_stream.uploads.credentials import CredentialsError

__all__ = ["Uploader"]

log = logging.getLogger(__name__)

_SHARE_REFRESH_S = 1.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class Uploader:
    def __init__(self, db_url: str, settings: Settings, name: str) -> None:
        self._db_url = db_url
        self._settings = settings
        self._name = name
        self._pool: asyncpg.Pool | None = None
        self._engine: UploadEngine | None = None
        self._init_lock = asyncio.Lock()
        self._workers: list[asyncio.Task[None]] = []
        self._draining = False
        self._wake = asyncio.Event()
        self._version: int | None = None
        self._share: tuple[int, int] | None = None
        self._share_checked = 0.0
        self._iterations = 0
        self._last: dict[str, Any] = {}
        if _reconstructed():
            # Ray restarted this actor after a crash (or its node went away): resume the loop
            # when the stack runs its uploaders, so the pool recovers by itself.
            with contextlib.suppress(RuntimeError):  # no loop: the next start() call resumes it
                self._resume_task = asyncio.get_running_loop().create_task(self._resume())

    async def _resume(self) -> None:
        try:
            registry = ray.get_actor(REGISTRY_NAME, namespace=self._settings.ray_namespace)
            if await asyncio.wait_for(registry.uploaders_autostart.remote(), 30.0):
                index, _size = await self._current_share()
                if index >= 0:  # still in the routing table (not a retired generation)
                    await self.start()
        except Exception:
            log.exception("uploader %s: could not resume after a restart", self._name)

    async def _get_engine(self) -> UploadEngine:
        if self._engine is None:
            async with self._init_lock:
                if self._engine is None:
                    s = self._settings
                    self._pool = await create_pool(self._db_url, min_size=0, max_size=pool_size(s, "uploader"))
                    engine = UploadEngine(self._pool, s, self._name, share=self._current_share)
                    await engine.startup()
                    self._engine = engine
        return self._engine

    async def _current_share(self) -> tuple[int, int]:
        """(index, size) from the Registry; re-read when the routing version changes.

        Until the Registry has answered once the uploader has no share (sends nothing), so a
        budget is never exceeded because of a missing answer.
        """
        now = time.monotonic()
        if self._share is not None and now - self._share_checked < _SHARE_REFRESH_S:
            return self._share
        try:
            registry = ray.get_actor(REGISTRY_NAME, namespace=self._settings.ray_namespace)
            version: int = await asyncio.wait_for(registry.version.remote(), 5.0)
            if version != self._version or self._share is None:
                index, size = await asyncio.wait_for(registry.uploader_share.remote(self._name), 5.0)
                self._share = (int(index), int(size))
                self._version = version
            self._share_checked = now
        except Exception as exc:
            log.warning(
                "uploader %s: registry unavailable (%s); keeping share %s",
                self._name,
                type(exc).__name__,
                self._share,
            )
            self._share_checked = now
        return self._share if self._share is not None else (-1, 0)

    # ------------------------------------------------------------------ loop control

    async def start(self) -> dict[str, Any]:
        """Start the worker tasks (idempotent)."""
        await self._get_engine()
        self._draining = False
        self._workers = [t for t in self._workers if not t.done()]
        loop = asyncio.get_running_loop()
        while len(self._workers) < self._settings.uploader_concurrency:
            self._workers.append(loop.create_task(self._worker()))
        return await self.status()

    async def drain(self) -> dict[str, Any]:
        """Take no new work, wait for in-flight attempts to finish, then stop."""
        self._draining = True
        self._wake.set()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        return await self.status()

    async def stop(self) -> dict[str, Any]:
        """Stop now: in-flight attempts are abandoned (their rows are rescued later)."""
        self._draining = True
        for t in self._workers:
            t.cancel()
        for t in self._workers:
            with contextlib.suppress(BaseException):
                await t
        self._workers = []
        return await self.status()

    def wake(self) -> None:
        """Look for work now instead of at the next idle poll."""
        self._wake.set()

    async def _worker(self) -> None:
        idle_s = self._settings.upload_idle_poll_s
        while not self._draining:
            try:
                result = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("uploader %s: iteration failed", self._name)
                result = {"idle": True, "error": True}
            if result.get("idle") or not result.get("claimed"):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), idle_s)

    async def run_once(self) -> dict[str, Any]:
        """One iteration of the loop (also usable while the loop runs)."""
        engine = await self._get_engine()
        result = await engine.run_once()
        self._iterations += 1
        self._last = result
        return result

    async def status(self) -> dict[str, Any]:
        return {
            "name": self._name,
            "uploader_id": self._engine.uploader_id if self._engine else None,
            "running": any(not t.done() for t in self._workers),
            "draining": self._draining,
            "share": list(self._share) if self._share else None,
            "routing_version": self._version,
            "iterations": self._iterations,
            "last": self._last,
        }

    async def ping(self) -> str:
        return "ok"

    async def metrics(self) -> dict[str, Any]:
        """This uploader's figures for the gateway's /metrics (``telemetry.Stats.snapshot``;
        empty until the engine is built)."""
        return self._engine.stats.snapshot() if self._engine is not None else {}

    async def test_credentials(
        self, site_id: str, public_id: str, destination: str | None, actor_type: str, actor_id: str | None
    ) -> dict[str, Any]:
        """Test a site's stored credentials (``uploads.delivery.test_credentials``: a token
        refresh and a validate-only upload, audited) here, where the vault key is. A refusal
        comes back as ``{"error": {"code", "message"}}`` for the gateway to answer."""
        await self._get_engine()
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                return await delivery.test_credentials(
                    conn,
                    self._settings,
                    site_id,
                    public_id,
                    destination,
                    actor_type=ActorType(actor_type),
                    actor_id=actor_id,
                )
        except CredentialsError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}

    async def node(self) -> str:
        """The Ray node this actor runs on (placement checks)."""
        return str(ray.get_runtime_context().get_node_id())


def _reconstructed() -> bool:
    import warnings

    with warnings.catch_warnings():
        # Ray's own implementation of this property uses a deprecated accessor
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
