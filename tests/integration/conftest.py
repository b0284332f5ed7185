"""Fixtures shared by the integration tests that talk to the Google emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.integration._uploader_support import Emu, serve_emulator


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
