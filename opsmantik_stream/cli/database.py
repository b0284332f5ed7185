"""``opsmantik migrate``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import asyncpg

from opsmantik_stream.cli._common import add_json_flag, emit, run_with_db
from opsmantik_stream.config import Settings
from opsmantik_stream.migrate import apply_migrations


def register(sub: Any) -> None:
    p = sub.add_parser(
        "migrate",
        help="apply pending database migrations",
        description="Apply the numbered SQL files in migrations/ that are not applied yet, each in "
        "its own transaction. Refuses to run when an applied file changed or a number is missing.",
    )
    p.add_argument("--dir", type=Path, help="migration folder (default: the project's migrations/)")
    add_json_flag(p)
    p.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        done = await apply_migrations(conn, args.dir, progress=None if args.json else print)
        total = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        return {"applied": [m.filename for m in done], "total": int(total)}

    result = run_with_db(body, migrate=False)
    emit(
        args,
        result,
        f"{len(result['applied'])} migration(s) applied; {result['total']} in total, schema up to date",
    )
    return 0
