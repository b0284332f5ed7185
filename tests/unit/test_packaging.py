"""Packaging rules that need no build: what the shipped code imports is what it declares, and
a checkout migrates from its top-level folder (the wheel's copy is tested in
tests/e2e/test_wheel_install.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opsmantik_stream.migrate import default_migrations_dir, load_migrations

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_imports_are_declared_runtime_dependencies() -> None:
    """deptry (configured in pyproject.toml) reads every import of opsmantik_stream, actors and
    gateway: each must be a runtime dependency (not a transitive one, not a test or bench
    extra), and every runtime dependency must be imported (or listed with its reason)."""
    deptry = Path(sys.executable).with_name("deptry")
    binary = str(deptry) if deptry.exists() else shutil.which("deptry")
    assert binary, "deptry is part of the test extra: make install"
    result = subprocess.run([binary, ".", "--no-ansi"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_checkout_migrates_from_its_top_level_folder() -> None:
    assert default_migrations_dir() == ROOT / "migrations"
    assert [m.filename for m in load_migrations(default_migrations_dir())] == sorted(
        p.name for p in (ROOT / "migrations").glob("*.sql")
    )
