"""Admission on /api/sync with real actors: the rate limit keyed on (site, client address)
and charged per event, the per-site ceiling, the client address from trusted proxies only,
and server-to-server requests (no Origin) that must carry `eid`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream.config import Settings
from tests.ingest_support import ORIGIN, event, post

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateway(settings: Settings, pool: asyncpg.Pool, stack: dict[str, Any]) -> AsyncIterator[Callable[..., Any]]:
    """``gateway(**setting_overrides)`` -> an app in-process with the test's actors;
    ``seen_from(app, ip)`` gives a client that app sees coming from ``ip``."""
    from gateway.app import create_app
    from gateway.context import AppContext

    apps: list[Any] = []

    def make(**overrides: Any) -> Any:
        app = create_app(AppContext(settings=settings.with_overrides(**overrides), pool=pool, ray_enabled=True))
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.state.ctx.partitions.close()


@asynccontextmanager
async def seen_from(app: Any, ip: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def _limit(pool: asyncpg.Pool, site: dict[str, Any], per_min: int) -> None:
    await pool.execute(
        "UPDATE site_plans SET rate_limit_per_min = $2 WHERE site_id = $1", uuid.UUID(site["site_id"]), per_min
    )


async def test_rate_limit_is_per_client_address_and_charged_per_event(
    gateway: Any, make_site: Any, pool: asyncpg.Pool
) -> None:
    site = await make_site(origins=[ORIGIN])
    await _limit(pool, site, 3)
    app = gateway()
    async with seen_from(app, "203.0.113.7") as a, seen_from(app, "198.51.100.9") as b:
        answers = [await post(a, event(site)) for _ in range(4)]
        assert [r.status_code for r in answers] == [202, 202, 202, 429]
        limited = answers[-1]
        assert limited.headers["x-opsmantik-ratelimit"] == "1"
        assert int(limited.headers["retry-after"]) >= 1
        assert "x-opsmantik-quota-exceeded" not in limited.headers
        assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == 3  # no ledger row for it
        # a new User-Agent is not a new client
        again = await post(a, event(site), headers={"User-Agent": "Mozilla/5.0 (iPhone) Mobile Safari"})
        assert again.status_code == 429
        # another address has its own bucket, and a batch costs one token per event
        assert (await post(b, {"events": [event(site), event(site)]})).status_code == 202
        assert (await post(b, {"events": [event(site), event(site)]})).status_code == 429
        assert (await post(b, event(site))).status_code == 202
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == 6


async def test_ipv6_clients_share_their_64(gateway: Any, make_site: Any, pool: asyncpg.Pool) -> None:
    site = await make_site(origins=[ORIGIN])
    await _limit(pool, site, 2)
    app = gateway()
    async with seen_from(app, "2001:db8:1:2::1") as a, seen_from(app, "2001:db8:1:2:ffff::9") as same64:
        assert (await post(a, event(site))).status_code == 202
        assert (await post(same64, event(site))).status_code == 202
        assert (await post(same64, event(site))).status_code == 429


async def test_site_ceiling_holds_whatever_the_clients(gateway: Any, make_site: Any, pool: asyncpg.Pool) -> None:
    site = await make_site(origins=[ORIGIN])
    await _limit(pool, site, 2)
    app = gateway(site_rate_limit_per_min=3)
    async with (
        seen_from(app, "203.0.113.1") as a,
        seen_from(app, "203.0.113.2") as b,
        seen_from(app, "203.0.113.3") as c,
    ):
        assert (await post(a, event(site))).status_code == 202
        assert (await post(b, event(site))).status_code == 202
        assert (await post(b, event(site))).status_code == 202
        # the site had 3 events this minute: a third address, with tokens of its own, waits too
        refused = await post(c, event(site))
        assert refused.status_code == 429 and refused.headers["x-opsmantik-ratelimit"] == "1"
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == 3


async def test_forwarded_for_is_read_only_behind_trusted_proxies(
    gateway: Any, make_site: Any, pool: asyncpg.Pool
) -> None:
    site = await make_site(origins=[ORIGIN])
    # the client writes the left-most entries; the trusted proxy appends the real peer
    spoofed = {"X-Forwarded-For": "1.2.3.4, 198.51.100.23"}
    behind_proxy = gateway(trusted_proxies="10.0.0.0/8")
    async with seen_from(behind_proxy, "10.0.0.5") as proxied, seen_from(gateway(), "10.0.0.5") as direct:
        sid_proxied = str(uuid.uuid4())
        assert (await post(proxied, event(site, sid=sid_proxied), headers=spoofed)).status_code == 202
        sid_direct = str(uuid.uuid4())
        assert (await post(direct, event(site, sid=sid_direct), headers=spoofed)).status_code == 202
    ips = {
        str(r["id"]): str(r["ip_address"])
        for r in await pool.fetch("SELECT id, host(ip_address) AS ip_address FROM sessions")
    }
    # behind the trusted proxy: the right-most untrusted address (truncated to /24 when stored)
    assert ips[sid_proxied] == "198.51.100.0"
    # without trusted proxies the header is ignored: the peer is the client
    assert ips[sid_direct] == "10.0.0.0"


async def test_server_to_server_requests_need_the_ingest_key_and_an_eid(
    gateway: Any, make_site: Any, pool: asyncpg.Pool
) -> None:
    import hashlib

    from opsmantik_stream.queries import Q

    site = await make_site(origins=[ORIGIN])
    key = "opsm_ik_" + uuid.uuid4().hex
    await pool.execute(Q.ingest.set_ingest_key, uuid.UUID(site["site_id"]), hashlib.sha256(key.encode()).hexdigest())
    async with seen_from(gateway(), "203.0.113.50") as client:
        no_key = await post(client, event(site), origin=None)
        assert no_key.status_code == 403 and no_key.headers["x-opsmantik-error-code"] == "origin_required"
        no_eid = await post(client, event(site, eid=None), origin=None, headers={"X-OpsMantik-Ingest-Key": key})
        assert no_eid.status_code == 422
        assert no_eid.headers["x-opsmantik-error-code"] == "validation_error:eid"
        batch = {"events": [event(site), event(site, eid="")]}
        refused = await post(client, batch, origin=None, headers={"X-OpsMantik-Ingest-Key": key})
        assert refused.headers["x-opsmantik-error-code"] == "validation_error:events.1.eid"
        ok = await post(client, event(site), origin=None, headers={"X-OpsMantik-Ingest-Key": key})
        assert ok.status_code == 202
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == 1
