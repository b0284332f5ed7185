"""A partition's Unix sockets: the ones of processes that are gone are removed when a new one
is opened, so killed incarnations leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.partition import remove_stale_sockets

pytestmark = pytest.mark.unit


def _gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped: nothing runs under this pid now
    return proc.pid


def test_only_the_sockets_of_gone_processes_are_removed(tmp_path: Path) -> None:
    gone = tmp_path / f"{_gone_pid()}-0123456789ab.sock"
    mine = tmp_path / f"{os.getpid()}-ba9876543210.sock"
    other = tmp_path / "notes.txt"  # not a partition socket: never touched
    for f in (gone, mine, other):
        f.touch()
    assert remove_stale_sockets(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])
    assert remove_stale_sockets(str(tmp_path / "missing")) == 0  # no folder yet: nothing to do
