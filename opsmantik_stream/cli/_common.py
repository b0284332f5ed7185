"""Shared CLI plumbing: one-line errors, --json output, a database for the command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import asyncpg

from opsmantik_stream.budget import CLI_POOL
from opsmantik_stream.config import ConfigError, Settings, load_settings
from opsmantik_stream.db import EmbeddedPostgres, resolve_database_url
from opsmantik_stream.migrate import MigrationError, apply_migrations
from opsmantik_stream.tenancy import TenancyError

__all__ = ["CliError", "Parser", "add_json_flag", "emit", "run_with_db", "run_with_pool", "settings_or_exit"]

T = TypeVar("T")


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Parser(argparse.ArgumentParser):
    """argparse with a single error line (plus a pointer to --help) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, default=str, sort_keys=True))
    else:
        print(text)


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def run_with_pool(
    body: Callable[[asyncpg.Pool, Settings], Awaitable[T]],
    *,
    migrate: bool = True,
    settings: Settings | None = None,
) -> T:
    """Run ``body`` with a small pool on the configured (or embedded) database.

    The schema is brought up to date first (unless ``migrate`` is false), so every command
    works on a fresh data folder. Database, migration and tenancy errors become one
    ``CliError`` line.
    """
    cfg = settings or settings_or_exit()
    try:
        url, embedded = resolve_database_url(cfg)
    except Exception as exc:
        raise CliError(f"cannot start the embedded PostgreSQL: {exc}") from None

    async def go() -> T:
        from opsmantik_stream.db import close_pool, create_pool

        try:
            pool = await create_pool(url, min_size=1, max_size=CLI_POOL, api_url=cfg.api_database_url)
        except asyncpg.TooManyConnectionsError:
            raise CliError(
                "the database has no free connection (max_connections reached): retry shortly, or raise "
                "max_connections / OPSMANTIK_DB_RESERVED_CONNECTIONS (docs/reliability.md, connection budget)"
            ) from None
        except (OSError, asyncpg.PostgresError) as exc:
            raise CliError(f"cannot connect to the database: {type(exc).__name__}: {exc}") from None
        try:
            if migrate:
                async with pool.acquire() as conn:
                    await apply_migrations(conn, progress=lambda m: print(m, file=sys.stderr))
            return await body(pool, cfg)
        finally:
            await close_pool(pool)

    try:
        return asyncio.run(go())
    except MigrationError as exc:
        raise CliError(f"migrations: {exc}") from None
    except TenancyError as exc:
        raise CliError(str(exc)) from None
    finally:
        _stop(embedded)


def run_with_db(
    body: Callable[[asyncpg.Connection, Settings], Awaitable[T]],
    *,
    migrate: bool = True,
    settings: Settings | None = None,
) -> T:
    """Like ``run_with_pool`` for a body that needs one connection."""

    async def on_one_connection(pool: asyncpg.Pool, cfg: Settings) -> T:
        async with pool.acquire() as conn:
            return await body(conn, cfg)

    return run_with_pool(on_one_connection, migrate=migrate, settings=settings)


def _stop(embedded: EmbeddedPostgres | None) -> None:
    if embedded is not None:
        embedded.stop()
