"""Every route keys its rate limits on the same client (``gateway.limits.client_key``): the
peer address, or behind ``OPSMANTIK_TRUSTED_PROXIES`` the right-most untrusted
``X-Forwarded-For`` hop, as ``/api/sync`` does; a new User-Agent is not a new client
(issue 12: the call-event route keyed on address + User-Agent)."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.integration._leads_support import call_body, signed_headers

pytestmark = pytest.mark.integration


async def _codes(app: Any, site: dict[str, Any], headers: list[dict[str, str]]) -> list[int]:
    codes = []
    # httpx's ASGI transport connects from 127.0.0.1
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for extra in headers:
            body = call_body(site, "fp-client-key")
            resp = await c.post("/api/call-event", content=body, headers={**signed_headers(site, body), **extra})
            codes.append(resp.status_code)
    return codes


@pytest.mark.parametrize("trusted", ["", "127.0.0.1"])
async def test_call_event_clients_are_keyed_like_ingest(
    settings: Any, gateway_pool: asyncpg.Pool, make_site: Any, trusted: str
) -> None:
    from gateway.app import create_app
    from gateway.context import AppContext

    cfg = settings.with_overrides(trusted_proxies=trusted, call_event_rate_limit_per_min=2)
    # no actors: a request the limiter lets through reaches the partition client and answers
    # 503 partition_unavailable; one it stops answers 429 first
    app = create_app(AppContext(settings=cfg, pool=gateway_pool, ray_enabled=False))
    site = await make_site()
    ua = [{"User-Agent": f"agent-{i}"} for i in range(3)]
    # three User-Agents from one address: one client, the third is limited
    assert await _codes(app, site, ua) == [503, 503, 429]
    # a forwarded-for address is a new client only when the peer is a trusted proxy, and the
    # client is the right-most hop: the left-most entry is whatever the client wrote
    forwarded = [
        {"X-Forwarded-For": "198.51.100.7, 203.0.113.1"},
        {"X-Forwarded-For": "198.51.100.8, 203.0.113.1"},
        {"X-Forwarded-For": "203.0.113.2"},
        {"X-Forwarded-For": "203.0.113.2, 203.0.113.1"},
    ]
    codes = await _codes(app, site, forwarded)
    assert codes == ([503, 503, 503, 429] if trusted else [429, 429, 429, 429])
    # an IPv6 client is its /64
    v6 = [{"X-Forwarded-For": f"2001:db8:1:2::{i}"} for i in (1, 2, 3)]
    assert await _codes(app, site, v6) == ([503, 503, 429] if trusted else [429, 429, 429])
