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


async def test_metrics_report_queue_and_breakers(client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    for i, status in enumerate(["QUEUED", "QUEUED", "FAILED"]):
        await pool.execute(
            "INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, order_id, "
            "gclid, conversion_time, value_minor, currency, status) "
            "VALUES ($1, 'google_ads', 'sale', $2, $3, 'g', now(), 100, 'TRY', $4)",
            site["site_id"],
            uuid.uuid4(),
            f"order-{i}",
            status,
        )
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
