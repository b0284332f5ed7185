"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration._uploader_support import serve_emulator


@pytest.fixture(scope="module")
def emulator_base() -> Iterator[str]:
    """The Google emulator on its own uvicorn at 127.0.0.1 (the deployment's endpoints point
    there; uploaders run in other processes)."""
    with serve_emulator() as base:
        yield base
