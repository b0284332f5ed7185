"""The built wheel stands on its own: installed into a fresh virtual environment outside the
checkout, ``opsmantik migrate`` applies every migration of the repository and ``opsmantik
serve`` answers ``/health`` with 200.

One wheel build and one install per run (pip's cache is warm after ``make install``, so the
install takes about a minute); the checkout is copied first so the build leaves nothing in it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving import free_port, wait_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
# what a checkout may hold besides the sources (never part of a build)
_NOT_SOURCE = {".git", ".venv", "build", "dist", ".opsmantik", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n in _NOT_SOURCE or n == "__pycache__" or n.endswith(".egg-info")}
    if Path(folder).resolve() == ROOT / "benchmarks":
        skip.add("results")
    return skip


class Installed:
    def __init__(self, wheel: Path, venv: Path, home: Path) -> None:
        self.wheel = wheel
        self.venv = venv
        self.home = home  # a folder outside the checkout: the commands run there

    def env(self, **extra: str) -> dict[str, str]:
        # nothing of the checkout's environment: no PYTHONPATH, no OPSMANTIK_* variables
        env = {
            "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", str(self.home)),
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / args[0]), *args[1:]],
            cwd=self.home,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    # Not under pytest's tmp_path: its folders are 0700 (and pytest resets them to 0700), while
    # the embedded PostgreSQL runs the venv's pg_ctl as its own user when the tests run as root.
    base = Path(tempfile.mkdtemp(prefix="opsm-wheel-"))
    try:
        yield _install(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _install(base: Path) -> Installed:
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=_ignore)
    wheels = base / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(wheels), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = wheels.glob("opsmantik_stream-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # the checkout's pip installs into the new environment (no ensurepip: faster)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--disable-pip-version-check",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    home = base / "elsewhere"
    home.mkdir()
    return Installed(wheel, venv, home)


def test_the_wheel_ships_migrations_named_sql_and_static_files(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    migrations = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
    assert migrations, "the checkout has no migrations"
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("opsmantik_stream/migrations/")) == migrations
    for sql in (ROOT / "opsmantik_stream" / "sql").glob("*.sql"):
        assert f"opsmantik_stream/sql/{sql.name}" in names
    for static in (ROOT / "gateway" / "static").rglob("*"):
        if static.is_file():
            assert static.relative_to(ROOT).as_posix() in names


def test_installed_wheel_migrates_and_serves(installed: Installed) -> None:
    where = installed.run("python", "-c", "import actors, gateway, opsmantik_stream; print(opsmantik_stream.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), where.stdout  # not the checkout

    data = installed.home / "data"
    try:
        migrated = installed.run("opsmantik", "migrate", "--json", OPSMANTIK_DATA_DIR=str(data))
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        result = json.loads(migrated.stdout)
        expected = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
        assert result == {"applied": expected, "total": len(expected)}

        port = free_port()
        log = installed.home / "serve.log"
        env = installed.env(
            OPSMANTIK_DATA_DIR=str(data),
            OPSMANTIK_PORT=str(port),
            OPSMANTIK_PARTITIONS="1",
            OPSMANTIK_UPLOADERS="1",
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(installed.venv / "bin" / "opsmantik"), "serve"],
                cwd=installed.home,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            health = wait_healthy(port, proc, log)
            assert health["checks"]["database"] == "ok"
            assert health["checks"]["actors"] and all(v == "ok" for v in health["checks"]["actors"].values())
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert "stopped" in log.read_text()
    finally:
        shutil.rmtree(data, ignore_errors=True)
