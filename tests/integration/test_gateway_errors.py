"""What the gateway answers for an exception no route handled (issue 14): connection loss is a
retryable 503, an exhausted connection budget a 503 with its own code, and everything else a
bug: a clear 500 ``internal_error`` with the request id, logged with the exception class; it
must never pass for a database outage."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.app import create_app
from gateway.context import AppContext
from gateway.errors import is_connection_loss
from opsmantik_stream.db import close_pool, create_pool
from tests.serving import free_port

pytestmark = pytest.mark.integration


def _app(settings: Any, pool: Any) -> Any:
    return create_app(AppContext(settings=settings, pool=pool, ray_enabled=False))


def _connect_error_under_uvloop(url: str) -> BaseException:
    import uvloop

    async def connect() -> BaseException:
        try:
            await asyncpg.connect(url)
        except Exception as exc:
            return exc
        raise AssertionError("connected")

    return uvloop.run(connect())


@pytest.fixture
async def bug_client(settings: Any, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with three routes that fail the way bugs do, on real components."""
    app = _app(settings, pool)

    async def concurrent_use() -> None:
        # one connection used by two queries at once: asyncpg's InterfaceError
        async with pool.acquire() as conn:
            await asyncio.gather(conn.fetchval("SELECT pg_sleep(0.05)"), conn.fetchval("SELECT 1"))

    async def out_of_range() -> None:
        # a value the schema check missed: asyncpg's DataError (an InterfaceError subclass)
        await pool.fetchval("SELECT $1::bigint", 2**63)

    def our_own_oserror() -> None:  # a sync route (FastAPI runs it in a thread)
        Path("/nonexistent/opsmantik/static.js").read_bytes()

    for path, fn in (("/bug/concurrent", concurrent_use), ("/bug/range", out_of_range), ("/bug/file", our_own_oserror)):
        app.add_api_route(path, fn, methods=["GET"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def test_bug_shaped_errors_are_clear_500s_not_outages(
    bug_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    expected = {
        "/bug/concurrent": "InterfaceError",
        "/bug/range": "DataError",
        "/bug/file": "FileNotFoundError",
    }
    for path, exc_type in expected.items():
        with caplog.at_level(logging.ERROR, logger="opsmantik.errors"):
            caplog.clear()
            resp = await bug_client.get(path)
        assert resp.status_code == 500, (path, resp.status_code, resp.text)
        assert resp.headers["x-opsmantik-error-code"] == "internal_error"
        assert resp.json()["error"] == "internal_error"
        assert "retry-after" not in resp.headers
        assert resp.headers["x-request-id"]
        record = next(r for r in caplog.records if r.name == "opsmantik.errors")
        assert record.levelno == logging.ERROR
        assert record.exc_type == exc_type  # type: ignore[attr-defined]
        assert "test_gateway_errors.py" in record.stack  # type: ignore[attr-defined]
        # the message (which may quote request data) is not logged
        assert "9223372036854775808" not in caplog.text


async def test_an_unreachable_database_is_a_retryable_503(settings: Any, make_token: Any) -> None:
    token = await make_token(None, None, platform_admin=True)
    gone = await create_pool(f"postgresql://nobody@127.0.0.1:{free_port()}/none", min_size=0, max_size=2)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(settings, gone)), base_url="http://t") as c:
            resp = await c.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    finally:
        await close_pool(gone)
    assert resp.status_code == 503, resp.text
    assert resp.headers["x-opsmantik-error-code"] == "database_unavailable"
    assert resp.headers["retry-after"]


async def test_connection_loss_classification_on_real_driver_errors(pg_server: str, db_url: str) -> None:
    """The classes the gateway treats as loss, produced by a real server and driver."""
    admin = await asyncpg.connect(pg_server)
    conn = await asyncpg.connect(db_url)
    try:
        pid = conn.get_server_pid()
        sleeper = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
        await asyncio.sleep(0)  # the query is sent before the backend is terminated
        active = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'"
        while not await admin.fetchval(active, pid):
            await asyncio.sleep(0.01)
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(Exception) as killed:
            await sleeper
        assert is_connection_loss(killed.value), repr(killed.value)
        with pytest.raises(asyncpg.InterfaceError) as closed:
            await conn.fetchval("SELECT 1")
        assert is_connection_loss(closed.value), repr(closed.value)
    finally:
        await conn.close()
        await admin.close()
    with pytest.raises(OSError) as refused:
        await asyncpg.connect(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    assert is_connection_loss(refused.value)
    # the same under uvloop (what `opsmantik serve` runs), for TCP and a unix socket that is gone
    for url in (f"postgresql://nobody@127.0.0.1:{free_port()}/none", "postgresql://nobody@/none?host=/nonexistent"):
        assert is_connection_loss(await asyncio.to_thread(_connect_error_under_uvloop, url)), url
    # and the bug classes are not
    conn = await asyncpg.connect(db_url)
    try:
        with pytest.raises(asyncpg.exceptions.DataError) as data:
            await conn.fetchval("SELECT $1::bigint", 2**63)
        assert not is_connection_loss(data.value)
        with pytest.raises(asyncpg.InterfaceError) as args:
            await conn.fetchval("SELECT $1::int", 1, 2)
        assert not is_connection_loss(args.value)
        with pytest.raises(asyncpg.PostgresError) as nul:
            await conn.fetchval("SELECT $1::text", "a\x00b")
        assert not is_connection_loss(nul.value)
    finally:
        await conn.close()
    assert not is_connection_loss(FileNotFoundError(2, "no such file"))


async def test_too_many_connections_is_a_503_with_its_own_code(
    pg_server: str, db_url: str, settings: Any, make_token: Any, tmp_path: Path
) -> None:
    """A role capped at its connection limit: the server refuses with SQLSTATE 53300. The
    gateway answers 503 database_busy; the CLI says so in one line."""
    token = await make_token(None, None, platform_admin=True)
    role = f"capped_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        from tests.conftest import _with_user

        capped = await create_pool(_with_user(db_url, role), min_size=0, max_size=2)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=_app(settings, capped)), base_url="http://t"
            ) as c:
                resp = await c.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        finally:
            await close_pool(capped)
        from tests.integration.test_cli import run

        cli = await asyncio.to_thread(run, _with_user(db_url, role), tmp_path, "site", "list")
        assert cli.returncode == 1
        assert cli.stderr.strip().splitlines() == [
            "opsmantik: error: the database has no free connection (max_connections reached): retry shortly, "
            "or raise max_connections / OPSMANTIK_DB_RESERVED_CONNECTIONS (docs/reliability.md, connection budget)"
        ]
    finally:
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
    assert resp.status_code == 503, resp.text
    assert resp.headers["x-opsmantik-error-code"] == "database_busy"
    assert resp.headers["retry-after"]
