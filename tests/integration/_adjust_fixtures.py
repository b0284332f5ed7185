"""The fixtures of the issue-13 integration tests, imported by the test modules by name:
``fast`` (settings with Google's endpoints at the emulator), ``client`` (the gateway
in-process) and ``engine`` (an uploader engine)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from opsmantik_stream.config import Settings
from opsmantik_stream.uploads import UploadEngine
from tests.conftest import _make_app
from tests.integration._uploader_support import fast_settings


@pytest.fixture(name="fast")
def fast_fixture(settings: Settings, emu_base: str) -> Settings:
    return fast_settings(settings, emu_base)


@pytest.fixture(name="client")
async def client_fixture(fast: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process with the deployment's Google endpoints at the emulator."""
    app = _make_app(fast, pool, ray_enabled=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


@pytest.fixture(name="engine")
async def engine_fixture(pool: asyncpg.Pool, fast: Settings) -> AsyncIterator[UploadEngine]:
    e = UploadEngine(pool, fast, "uploader-adj-0", seed=1)
    yield e
    await e.aclose()
