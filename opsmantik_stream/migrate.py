"""Numbered SQL migrations: applied in order, one transaction each, recorded with checksums."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

__all__ = ["Migration", "MigrationError", "apply_migrations", "default_migrations_dir", "load_migrations"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Serialises concurrent migrators (two `serve` starting at once) on one database.
_LOCK_KEY = 0x0F5A_2026


class MigrationError(Exception):
    """The migration folder or the recorded history is not consistent."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def default_migrations_dir() -> Path:
    """The migrations that belong to this code.

    An installed wheel carries them inside the package (``opsmantik_stream/migrations``,
    copied there by setup.py); a checkout (and an editable install) keeps them in the
    top-level ``migrations/`` folder beside the package.
    """
    here = Path(__file__).resolve().parent
    packaged = here / "migrations"
    if packaged.is_dir():
        return packaged
    return here.parent / "migrations"


def load_migrations(folder: Path) -> list[Migration]:
    if not folder.is_dir():
        raise MigrationError(f"migration folder {folder} does not exist")
    found: list[Migration] = []
    for path in sorted(folder.iterdir()):
        if path.suffix != ".sql":
            continue
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise MigrationError(f"{mig.filename}: expected version {expected:04d} (gap or duplicate in {folder})")
    return found


_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def apply_migrations(
    conn: asyncpg.Connection,
    folder: Path | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[Migration]:
    """Apply what is not applied yet; returns the migrations applied by this call.

    Refuses (before applying anything) when an applied file changed or disappeared.
    """
    migrations = load_migrations(folder or default_migrations_dir())
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_HISTORY)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        applied = {r["version"]: r for r in rows}
        by_version = {m.version: m for m in migrations}
        for version, row in applied.items():
            mig = by_version.get(version)
            if mig is None:
                raise MigrationError(f"applied migration {version:04d}_{row['name']}.sql is missing from the folder")
            if mig.checksum != row["checksum"]:
                raise MigrationError(f"{mig.filename} changed after it was applied (checksum mismatch)")
        done: list[Migration] = []
        for mig in migrations:
            if mig.version in applied:
                continue
            if progress:
                progress(f"applying {mig.filename}")
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            done.append(mig)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
