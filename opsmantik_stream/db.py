"""PostgreSQL: the embedded server (pgserver), asyncpg pools, and API transactions under RLS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from opsmantik_stream.config import Settings

__all__ = [
    "API_ROLE",
    "EMBEDDED_SETTINGS",
    "GATEWAY_ROLE",
    "OWNER_ROLE",
    "EmbeddedPostgres",
    "api_database_url",
    "api_transaction",
    "bootstrap_roles",
    "close_pool",
    "create_pool",
    "gateway_database_url",
    "resolve_database_url",
    "run_sync",
    "url_with_user",
]

log = logging.getLogger(__name__)

# The three login roles (created by sql/roles.sql; see docs/security.md). The superuser is
# used only to create them.
OWNER_ROLE = "opsmantik_owner"
GATEWAY_ROLE = "opsmantik_gateway"
API_ROLE = "opsmantik_api"


# Settings of the embedded server for a write-heavy ingest load (an external PostgreSQL is
# the operator's to tune; docs/operations.md names these). Every checkpoint makes the next
# change of each page write the whole 8 KB page to the WAL; with the stock 1 GB
# `max_wal_size` a busy ingest checkpointed every minute or so and most of its WAL was such
# page images. Fewer checkpoints cost disk (WAL up to `max_wal_size`) and a longer crash
# recovery (replaying at most that), never durability: commits still flush the WAL.
#
# Shared buffers: the ledger's primary key takes a random leaf page per event (its keys are
# hashes), so its whole index is the working set; past the stock 128 MB every insert waits
# for a page to be written out and read back, and a 30-minute soak's p99 doubled as the
# ledger grew. 512 MB holds a few days of a busy site's index; it needs a restart, which
# `start` does once, right after it created the database.
#
# New WAL segments: until its first checkpoint a database has no old segment to recycle, so
# every 16 MB of WAL creates a file, and PostgreSQL zero-fills and flushes all of it while
# every commit waits (wait event WALInitWrite). At 3,000 events/s that was a stall every few
# seconds and most of the p99. With `wal_init_zero` off a new segment gets its size without
# being written; the WAL written into it is flushed by each commit as before.
EMBEDDED_SETTINGS: dict[str, str] = {
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
    "min_wal_size": "512MB",  # keeps WAL segments for reuse instead of creating new files
    "checkpoint_timeout": "15min",
    "wal_init_zero": "off",
}


class EmbeddedPostgres:
    """A PostgreSQL server in ``<data_dir>/pg`` run by pgserver; reused across starts.

    ``pgserver`` listens on a unix socket only (no TCP port at all), which keeps the
    embedded database off every network interface. ``EMBEDDED_SETTINGS`` are applied on
    every start (ALTER SYSTEM and a reload; a new database is restarted once for
    ``shared_buffers``).
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "pg"
        self._server: Any = None

    def start(self) -> str:
        # pgserver falls back to /tmp when XDG_RUNTIME_DIR is unset and warns about it.
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (self.pgdata / "PG_VERSION").exists()
        # pgserver exports get_server without listing it in __all__
        self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        self._server.psql(
            "".join(f"ALTER SYSTEM SET {k} = '{v}';" for k, v in EMBEDDED_SETTINGS.items()) + "SELECT pg_reload_conf();"
        )
        if fresh:
            # shared_buffers is read at server start: restart the server this call just created
            # (nobody else uses it yet); an older database takes it at its next start
            self._server.cleanup()
            self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        return str(self._server.get_uri())

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL not started")
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def resolve_database_url(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    """The configured URL, or the owner-role URL of an embedded server started for it.

    The embedded server's superuser is used once per start to create the roles and hand
    the database to the owner role (``bootstrap_roles``); everything after that, migrations
    included, runs as ``opsmantik_owner``.
    """
    if settings.database_url:
        return settings.database_url, None
    embedded = EmbeddedPostgres(settings.data_path)
    admin_url = embedded.start()
    try:
        run_sync(bootstrap_roles(admin_url))
    except BaseException:
        embedded.stop()
        raise
    return url_with_user(admin_url, OWNER_ROLE), embedded


async def bootstrap_roles(admin_url: str) -> None:
    """As a superuser: create the owner, gateway and API roles if missing, make the owner
    role own the database and every object of the application's schemas (sql/roles.sql).
    Idempotent and cheap once done."""
    from opsmantik_stream.queries import Q

    conn = await asyncpg.connect(admin_url)
    try:
        # one server-wide lock: two processes starting at once would race on CREATE ROLE
        await conn.execute("SELECT pg_advisory_lock(hashtext('opsmantik-roles'))")
        try:
            for step in (Q.roles.create_roles, Q.roles.own_database, Q.roles.take_ownership):
                await conn.execute(step)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext('opsmantik-roles'))")
    finally:
        await conn.close()


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, whether or not this thread already runs
    an event loop (the gateway's lifespan resolves the database inside one)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name="opsmantik-db-bootstrap")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb <-> Python objects everywhere, so callers never json.dumps by hand.
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def url_with_user(url: str, user: str) -> str:
    """``url`` with ``user`` as its user and no password (enough for trust authentication,
    as on the embedded server's unix socket)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


def api_database_url(url: str) -> str:
    """``url`` with the API role as user and no password."""
    return url_with_user(url, API_ROLE)


def gateway_database_url(url: str) -> str:
    """``url`` with the gateway's service role as user and no password."""
    return url_with_user(url, GATEWAY_ROLE)


class _Companion:
    """The API-role pool and identity key that belong to one owner pool."""

    def __init__(self, owner: asyncpg.Pool, api_url: str, api_max_size: int) -> None:
        self.owner = owner
        self.api_url = api_url
        self.api_max_size = api_max_size
        self.api_pool: asyncpg.Pool | None = None
        self.key: bytes | None = None
        self.lock = asyncio.Lock()


# asyncpg pools have __slots__ without __weakref__, so companions are keyed by id() and
# dropped by close_pool().
_COMPANIONS: dict[int, _Companion] = {}


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    api_url: str | None = None,
    api_max_size: int | None = None,
) -> asyncpg.Pool:
    """A service pool. ``api_transaction`` on it uses a companion pool that logs in as the
    API role (``api_url``, default derived from ``url``) with at most ``api_max_size``
    connections (default ``max_size``), opened on first use. Sizes come from the connection
    budget (opsmantik_stream.budget)."""
    pool = await asyncpg.create_pool(
        url, min_size=min(min_size, max_size), max_size=max_size, init=_init_connection, command_timeout=60
    )
    assert pool is not None
    _COMPANIONS[id(pool)] = _Companion(pool, api_url or api_database_url(url), api_max_size or max_size)
    return pool


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close an owner pool and its API companion."""
    companion = _COMPANIONS.pop(id(pool), None)
    if companion is not None and companion.api_pool is not None:
        await companion.api_pool.close()
    await pool.close()


async def _companion(pool: asyncpg.Pool) -> tuple[asyncpg.Pool, bytes]:
    comp = _COMPANIONS.get(id(pool))
    if comp is None or comp.owner is not pool:
        raise RuntimeError("api_transaction needs a pool made by opsmantik_stream.db.create_pool")
    if comp.api_pool is None or comp.key is None:
        async with comp.lock:
            if comp.key is None:
                comp.key = bytes(await pool.fetchval("SELECT key FROM private.identity_key"))
            if comp.api_pool is None:
                comp.api_pool = await asyncpg.create_pool(
                    comp.api_url, min_size=0, max_size=comp.api_max_size, init=_init_connection
                )
    assert comp.api_pool is not None and comp.key is not None
    return comp.api_pool, comp.key


def signed_identity(key: bytes, user_id: str) -> str:
    uid = str(user_id)
    return f"{uid}.{hashlib.sha256(key + b'|' + uid.encode()).hexdigest()}"


@asynccontextmanager
async def api_transaction(pool: asyncpg.Pool, user_id: str) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on a connection logged in as the API role, with the caller's signed
    identity set for this transaction only.

    Row-level security applies to everything executed on the yielded connection. Even a
    hand-written query cannot see or change another tenant's rows: the role cannot RESET
    ROLE to an owner (it never was one) and cannot forge another user's identity.
    """
    api_pool, key = await _companion(pool)
    async with api_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('opsmantik.identity', $1, true)", signed_identity(key, user_id))
        yield conn
