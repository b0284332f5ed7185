"""Fixtures shared by the integration tests that talk to the Google emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from opsmantik_stream.config import Settings
from tests.integration._uploader_support import Emu, fast_settings, serve_emulator


@pytest.fixture(scope="module")
def emu_base() -> Iterator[str]:
    """The emulator on a real uvicorn at 127.0.0.1 (uploaders run in other processes)."""
    with serve_emulator() as base:
        yield base


@pytest.fixture
async def emu(emu_base: str) -> AsyncIterator[Emu]:
    """A client for the emulator's control API, reset to defaults for this test."""
    e = Emu(emu_base)
    await e.reset()
    try:
        yield e
    finally:
        await e.aclose()


@pytest.fixture
def uploader_stack(ray_session: None, settings: Settings, db_url: str, emu_base: str) -> Iterator[Callable[..., Any]]:
    """``start(n, **settings)``: a stack with N Uploader actors sending to the emulator (their
    loops not started: tests call ``run_once``; maintenance off). Returns (settings, handles)."""
    from actors.runtime import get_actor, start_stack, stop_stack

    started: list[str] = []

    def start(uploaders: int = 1, **kw: Any) -> tuple[Settings, list[Any]]:
        s = fast_settings(settings, emu_base, uploaders=uploaders, partitions=1, **kw)
        table = start_stack(s, db_url, start_maintenance=False)
        started.append(s.ray_namespace)
        return s, [get_actor(n, s.ray_namespace) for n in table["uploaders"]]

    yield start
    for ns in started:
        stop_stack(ns)
