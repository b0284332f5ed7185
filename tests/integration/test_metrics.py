"""/metrics speaks Prometheus and reports the queue and breakers from PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _queue_row(pool: asyncpg.Pool, site: dict[str, Any], status: str = "QUEUED") -> None:
    await pool.execute(
        "INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, order_id, "
        "gclid, conversion_time, value_minor, currency, status) "
        "VALUES ($1, 'google_ads', 'sale', $2, $3, 'g', now(), 100, 'TRY', $4)",
        site["site_id"],
        uuid.uuid4(),
        f"order-{uuid.uuid4().hex}",
        status,
    )


async def test_metrics_report_queue_and_breakers(client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    for status in ["QUEUED", "QUEUED", "FAILED"]:
        await _queue_row(pool, site, status)
    await pool.execute(
        "INSERT INTO provider_health_state (site_id, destination, state) VALUES ($1, 'google_ads', 'OPEN')",
        site["site_id"],
    )
    await client.get("/health")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = _samples(r.text)
    assert samples[("opsmantik_queue_rows", (("status", "QUEUED"),))] == 2
    assert samples[("opsmantik_queue_rows", (("status", "FAILED"),))] == 1
    assert samples[("opsmantik_breakers", (("state", "OPEN"),))] == 1
    assert any(
        name == "opsmantik_http_request_duration_seconds_count" and dict(labels).get("route") == "/health"
        for name, labels in samples
    )


async def test_ops_page_and_summary(client: httpx.AsyncClient, make_site: Any, make_token: Any) -> None:
    page = await client.get("/ops")
    assert page.status_code == 200 and "/api/ops/summary" in page.text
    site = await make_site()
    owner = await make_token(site["public_id"], "owner")
    admin = await make_token(None, None, platform_admin=True)
    assert (await client.get("/api/ops/summary")).status_code == 401
    r = await client.get("/api/ops/summary", headers={"Authorization": f"Bearer {owner}"})
    assert r.status_code == 403  # one site's owner does not see every tenant's figures
    r = await client.get("/api/ops/summary", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200
    assert set(r.json()) == {"queue", "breakers", "ingest_last_minute", "dead_letters_pending", "actors", "alerts"}
    assert r.json()["alerts"] == {"by_kind": {}, "open": [], "last_run": None}


async def test_database_figures_are_cached_not_read_per_scrape(
    settings: Any, gateway_pool: asyncpg.Pool, pool: asyncpg.Pool, make_site: Any
) -> None:
    """Issue 14: scrapes within metrics_cache_s are served from one snapshot (no queue scan
    per scrape); the figures move once the snapshot is older (clock injected)."""
    from gateway.app import create_app
    from gateway.context import AppContext

    ctx = AppContext(settings=settings.with_overrides(metrics_cache_s=15.0), pool=gateway_pool, ray_enabled=False)
    now = [1000.0]
    ctx.monotonic = lambda: now[0]
    app = create_app(ctx)
    site = await make_site()
    await _queue_row(pool, site)
    queued = ("opsmantik_queue_rows", (("status", "QUEUED"),))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert _samples((await c.get("/metrics")).text)[queued] == 1
        await _queue_row(pool, site)
        now[0] += 14.0
        for _ in range(5):  # still the same snapshot: the new row is not counted yet
            assert _samples((await c.get("/metrics")).text)[queued] == 1
        now[0] += 1.0
        assert _samples((await c.get("/metrics")).text)[queued] == 2


async def test_metrics_bearer_and_own_port(settings: Any, db_url: str, pool: asyncpg.Pool, make_site: Any) -> None:
    from gateway.app import create_app
    from tests.serving import free_port, serve_in_thread

    token = "m-" + uuid.uuid4().hex
    port = free_port()
    cfg = settings.with_overrides(metrics_bearer_token=token, metrics_port=port)
    app = create_app(settings=cfg, db_url=db_url)
    with serve_in_thread(app, lifespan="on") as base:
        async with httpx.AsyncClient(timeout=30) as c:
            # the main port no longer serves metrics
            assert (await c.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"})).status_code == 404
            own = f"http://127.0.0.1:{port}/metrics"
            for headers in ({}, {"Authorization": "Bearer wrong-token-value"}, {"Authorization": f"Basic {token}"}):
                r = await c.get(own, headers=headers)
                assert r.status_code == 401 and r.headers["x-opsmantik-error-code"] == "unauthorized"
            r = await c.get(own, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and "opsmantik_queue_rows" in r.text
            assert (await c.get(f"http://127.0.0.1:{port}/health")).status_code == 404
    # and without a port of its own, the bearer guards the main port's /metrics
    app = create_app(settings=settings.with_overrides(metrics_bearer_token=token), db_url=db_url)
    with serve_in_thread(app, lifespan="on") as base:
        async with httpx.AsyncClient(timeout=30) as c:
            assert (await c.get(f"{base}/metrics")).status_code == 401
            assert (await c.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"})).status_code == 200
