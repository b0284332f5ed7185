"""Migrations: applied in order, recorded, safe twice, refusing changed files and gaps."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from opsmantik_stream.migrate import MigrationError, apply_migrations, default_migrations_dir, load_migrations

pytestmark = pytest.mark.integration


@pytest.fixture
async def empty_db(pg_server: str) -> AsyncIterator[asyncpg.Connection]:
    from tests.conftest import _with_db

    name = f"e_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(_with_db(pg_server, name))
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_applies_all_in_order_then_nothing(empty_db: asyncpg.Connection) -> None:
    expected = load_migrations(default_migrations_dir())
    done = await apply_migrations(empty_db)
    assert [m.version for m in done] == [m.version for m in expected]
    rows = await empty_db.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["checksum"]) for r in rows] == [(m.version, m.checksum) for m in expected]
    assert await apply_migrations(empty_db) == []


async def test_refuses_a_changed_file(empty_db: asyncpg.Connection, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), folder)
    await apply_migrations(empty_db, folder)
    first = sorted(folder.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(empty_db, folder)


async def test_refuses_a_gap_before_touching_the_database(empty_db: asyncpg.Connection, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), folder)
    sorted(folder.glob("0002_*.sql"))[0].unlink()
    with pytest.raises(MigrationError, match="gap"):
        await apply_migrations(empty_db, folder)
    exists = await empty_db.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    assert exists is False


async def test_refuses_when_an_applied_file_disappeared(empty_db: asyncpg.Connection, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), folder)
    await apply_migrations(empty_db, folder)
    last = sorted(folder.glob("*.sql"))[-1]
    last.unlink()
    with pytest.raises(MigrationError, match="missing"):
        await apply_migrations(empty_db, folder)


def test_bad_file_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_init.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)
