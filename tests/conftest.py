"""Test infrastructure: one embedded PostgreSQL and one Ray per run, a fresh database per
test cloned from a migrated template, and helpers to build sites, tokens and stacks.

Fixtures (all real components; the only stand-in anywhere is the Google emulator):
- ``pg_server``     session: the embedded PostgreSQL (pgserver) in a temp folder
- ``template_db``   session: a migrated database used as ``CREATE DATABASE ... TEMPLATE``
- ``db_url``        a fresh database for this test (dropped afterwards)
- ``pool``          an asyncpg pool on ``db_url`` (the owner role)
- ``gateway_pool``  a pool as the gateway's narrow role (what ``client`` runs on)
- ``settings``      Settings pointing at ``db_url``, a temp data dir and a unique Ray namespace
- ``ray_session``   session: a local Ray on 127.0.0.1 (started on first use)
- ``stack``         the actors (Registry, partitions, uploaders, Maintenance) for this test
- ``app``/``client`` the gateway in-process (httpx ASGITransport); ``client`` has no stack,
                    use ``stack_client`` for routes that need actors
- ``live_server``   the gateway served by a real uvicorn on 127.0.0.1 (ephemeral port)
- ``make_site``     ``await make_site(**kw)`` -> site dict (with ``secret``)
- ``make_token``    ``await make_token(public_id, role)`` -> bearer token string
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
# the vault key's default home (~/.config/opsmantik) is a per-run folder here, for the tests
# and every process they start; removed when the run ends (it holds the run's vault key)
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="opsm-config-")
from opsmantik_stream.ray_runtime import prepare_ray_environment

prepare_ray_environment()
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], ignore_errors=True)

from opsmantik_stream.config import Settings, load_settings  # noqa: E402
from opsmantik_stream.db import (  # noqa: E402
    OWNER_ROLE,
    EmbeddedPostgres,
    bootstrap_roles,
    close_pool,
    create_pool,
    gateway_database_url,
)
from opsmantik_stream.migrate import apply_migrations  # noqa: E402

TEMPLATE_DB = "opsm_template"


def _with_db(url: str, dbname: str) -> str:
    # pgserver URIs look like postgresql://postgres:@/postgres?host=/sock/dir
    head, _, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{dbname}" + (f"?{query}" if query else "")


def _with_user(url: str, user: str) -> str:
    from opsmantik_stream.db import url_with_user

    return url_with_user(url, user)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The server's admin URL. OPSMANTIK_TEST_DATABASE_URL points the suite at another server."""
    external = os.environ.get("OPSMANTIK_TEST_DATABASE_URL")
    if external:
        yield external
        return
    folder = Path(tempfile.mkdtemp(prefix="opsm-pg-"))
    embedded = EmbeddedPostgres(folder)
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()
        # pgserver stops the postmaster it started. After test_postgresql_restart the server
        # is a new postmaster that pgserver does not know, and it outlived the suite with its
        # folder deleted under it. A clean stop removes postmaster.pid: one left means a server.
        if embedded.pgdata.joinpath("postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                pg_ctl(embedded.pgdata, "-w", "-m", "fast", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def pg_ctl(pgdata: Path, *args: str, timeout: float = 60) -> None:
    """pgserver's ``pg_ctl`` on a test server's data folder, as the user that runs the server
    (pgserver runs it as ``pgserver`` when the tests run as root)."""
    import pgserver._commands as pgc

    run: Any = pgc.pg_ctl  # type: ignore[attr-defined]  # generated at import by pgserver
    run(list(args), pgdata=pgdata, user="pgserver" if os.geteuid() == 0 else None, timeout=timeout)


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> str:
    """Migrated as the owner role, the way a deployment runs (the superuser only creates the
    roles), so the suite proves nothing needs a superuser."""

    async def build() -> None:
        admin = await asyncpg.connect(pg_server)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
            await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        finally:
            await admin.close()
        await bootstrap_roles(_with_db(pg_server, TEMPLATE_DB))
        conn = await asyncpg.connect(_with_user(_with_db(pg_server, TEMPLATE_DB), OWNER_ROLE))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    return TEMPLATE_DB


def admin_sql(server_url: str, sql: str) -> None:
    """Run one statement on the server's admin database (CREATE / DROP DATABASE)."""

    async def run() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
def db_url(pg_server: str, template_db: str) -> Iterator[str]:
    """A fresh database cloned from the template; the URL logs in as the owner role."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin_sql(pg_server, f"CREATE DATABASE {name} TEMPLATE {template_db} OWNER {OWNER_ROLE}")
    try:
        yield _with_user(_with_db(pg_server, name), OWNER_ROLE)
    finally:
        admin_sql(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_url, min_size=1, max_size=10)
    try:
        yield p
    finally:
        await close_pool(p)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        environ={},
        database_url=db_url,
        data_dir=str(tmp_path / "data"),
        ray_namespace=f"test-{uuid.uuid4().hex[:12]}",
        partitions=2,
        uploaders=1,
        vault_key=_TEST_VAULT_KEY,
    )


_TEST_VAULT_KEY = "Q0PlE3vNqWlJ9tTgkgd6j3S7bYF1u6GQxI3m3Hq0n3w="


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    from opsmantik_stream.ray_runtime import init_ray, shutdown_ray

    init_ray(load_settings(environ={}, ray_num_cpus=8))
    try:
        yield
    finally:
        shutdown_ray()


@pytest.fixture
def stack(ray_session: None, settings: Settings, db_url: str) -> Iterator[dict[str, Any]]:
    """Start this test's actors in its own namespace; kill them afterwards."""
    from actors.runtime import start_stack, stop_stack

    table = start_stack(settings, db_url)
    try:
        yield table
    finally:
        stop_stack(settings.ray_namespace)


def _make_app(settings: Settings, pool: asyncpg.Pool, ray_enabled: bool) -> Any:
    from gateway.app import create_app
    from gateway.context import AppContext

    return create_app(AppContext(settings=settings, pool=pool, ray_enabled=ray_enabled))


@pytest.fixture
async def gateway_pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool as the gateway's narrow role (what ``opsmantik serve`` gives the gateway)."""
    p = await create_pool(gateway_database_url(db_url), min_size=0, max_size=10)
    try:
        yield p
    finally:
        await close_pool(p)


@pytest.fixture
async def client(settings: Settings, gateway_pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process, without actors (routes that only need PostgreSQL)."""
    app = _make_app(settings, gateway_pool, ray_enabled=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def stack_client(
    settings: Settings, gateway_pool: asyncpg.Pool, stack: dict[str, Any]
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process with this test's actors running."""
    app = _make_app(settings, gateway_pool, ray_enabled=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


@pytest.fixture
def live_server(settings: Settings, db_url: str, stack: dict[str, Any]) -> Iterator[str]:
    """A real uvicorn on 127.0.0.1 serving the gateway (with actors); yields its base URL."""

    from gateway.app import create_app
    from tests.serving import serve_in_thread

    app = create_app(settings=settings, db_url=db_url, ray_enabled=True)
    with serve_in_thread(app, lifespan="on") as base:
        yield base


@pytest.fixture
def make_site(pool: asyncpg.Pool) -> Callable[..., Awaitable[dict[str, Any]]]:
    from opsmantik_stream import tenancy

    async def make(**kw: Any) -> dict[str, Any]:
        kw.setdefault("name", "Test shop")
        kw.setdefault("domain", f"shop-{uuid.uuid4().hex[:8]}.example.com")
        async with pool.acquire() as conn:
            return await tenancy.create_site(conn, **kw)

    return make


@pytest.fixture
def make_token(pool: asyncpg.Pool) -> Callable[..., Awaitable[str]]:
    from opsmantik_stream import tenancy

    async def make(
        public_id: str | None,
        role: str | None = "owner",
        *,
        email: str | None = None,
        platform_admin: bool = False,
    ) -> str:
        async with pool.acquire() as conn:
            result = await tenancy.create_token(
                conn,
                email=email or f"user-{uuid.uuid4().hex[:8]}@example.com",
                public_id=public_id,
                role=role if public_id else None,
                platform_admin=platform_admin,
            )
        return str(result["token"])

    return make
