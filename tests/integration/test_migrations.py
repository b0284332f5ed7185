"""Migrations: applied in order, recorded, safe twice, refusing changed files and gaps."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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


async def _old_installation(conn: asyncpg.Connection, tmp_path: Path, *, before: int) -> dict[str, Any]:
    """An installation migrated up to (not including) migration ``before``, with one site."""
    from opsmantik_stream import tenancy
    from opsmantik_stream.db import _init_connection

    await _init_connection(conn)  # the JSON codecs create_site uses
    folder = tmp_path / "migrations"
    folder.mkdir()
    for mig in load_migrations(default_migrations_dir()):
        if mig.version < before:
            shutil.copy(default_migrations_dir() / mig.filename, folder)
    await apply_migrations(conn, folder)
    return await tenancy.create_site(conn, name="Old shop", domain="old.example.com")


async def test_session_clicks_start_with_the_click_sessions_already_stored(
    empty_db: asyncpg.Connection, tmp_path: Path
) -> None:
    # an installation at 0018 with sessions: 0019 fills session_clicks from them
    site = await _old_installation(empty_db, tmp_path, before=19)
    rows = [
        ("fp-1", "G-1", None),  # a click session of a visitor
        ("fp-1", None, None),  # the same visitor without a click
        (None, "G-2", None),  # a click without a fingerprint
        ("fp-2", None, "GB-1"),  # a gbraid counts as a click id
    ]
    ids = []
    for fp, gclid, gbraid in rows:
        ids.append(uuid.uuid4())
        await empty_db.execute(
            """INSERT INTO sessions (id, site_id, created_month, fingerprint, gclid, gbraid)
               VALUES ($1, $2, now()::date, $3, $4, $5)""",
            ids[-1],
            site["site_id"],
            fp,
            gclid,
            gbraid,
        )
    assert 19 in [m.version for m in await apply_migrations(empty_db)]
    held = await empty_db.fetch("SELECT fingerprint, session_id FROM session_clicks ORDER BY fingerprint")
    assert [(r["fingerprint"], r["session_id"]) for r in held] == [("fp-1", ids[0]), ("fp-2", ids[3])]
    assert await empty_db.fetchval("SELECT to_regclass('public.sessions_site_fp_click_idx')") is None


async def test_a_ledger_from_before_0023_still_knows_its_keys(
    empty_db: asyncpg.Connection, pg_server: str, tmp_path: Path
) -> None:
    # an installation at 0022 with events in its ledger: after 0023 (the keys compared byte by
    # byte) the same events are still duplicates, and the billing export's order is unchanged
    import datetime as dt

    import msgspec

    from opsmantik_stream.db import close_pool, create_pool
    from opsmantik_stream.ingest.schema import MetaIn, WireEvent
    from opsmantik_stream.ingest.store import IngestStore
    from tests.conftest import _with_db

    site = await _old_installation(empty_db, tmp_path, before=23)
    now = dt.datetime.now(dt.UTC)

    def event(n: int) -> WireEvent:
        return WireEvent(
            site_id=str(site["site_id"]),
            received_ms=int(now.timestamp() * 1000),
            url=f"https://old.example.com/{n}",
            eid=f"e-{n}",
            sid=str(uuid.uuid4()),
            ec="interaction",
            ea="view",
            el="Home",
            consent=["analytics"],
            meta=msgspec.convert({"fp": f"fp-{n}"}, MetaIn),
            ip="203.0.113.0",
            ua="Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
        )

    name = await empty_db.fetchval("SELECT current_database()")
    pool = await create_pool(_with_db(pg_server, name), max_size=2)
    try:
        store = IngestStore(pool)
        old = [event(n) for n in range(40)]
        assert {r.status for r in await store.ingest(old)} == {"accepted"}
        collation = (
            "SELECT collation_name FROM information_schema.columns"
            " WHERE table_name = 'ingest_idempotency' AND column_name = 'idempotency_key'"
        )
        assert await empty_db.fetchval(collation) is None  # the database's own
        before = await empty_db.fetch("SELECT idempotency_key FROM ingest_idempotency ORDER BY idempotency_key")

        assert 23 in [m.version for m in await apply_migrations(empty_db)]
        assert await empty_db.fetchval(collation) == "C"
        results = await store.ingest([*old[:3], event(40), old[39]])
        assert [r.status for r in results] == ["duplicate", "duplicate", "duplicate", "accepted", "duplicate"]
        assert await empty_db.fetchval("SELECT count(*) FROM ingest_idempotency") == 41
        assert await empty_db.fetchval("SELECT count(*) FROM events") == 41
        after = await empty_db.fetch("SELECT idempotency_key FROM ingest_idempotency ORDER BY idempotency_key")
        old_keys = [r["idempotency_key"] for r in before]
        new_keys = [r["idempotency_key"] for r in after]
        assert [k for k in new_keys if k in set(old_keys)] == old_keys
        assert new_keys == sorted(new_keys)  # byte order, as Python sorts str
    finally:
        await close_pool(pool)
