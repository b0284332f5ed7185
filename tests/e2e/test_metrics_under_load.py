"""Issue 17: the upload and ingest metrics appear in ``/metrics`` of a served stack under load.

A real uvicorn with the actors (two partitions, one uploader, real Ray and PostgreSQL) and the
Google emulator on its own uvicorn. Concurrent tracker batches go in; queued conversions go out
through an emulator outage (the breaker opens), then recover (probe, close). ``/metrics`` then
reports what happened, and the figures agree with each other and with the database: every
partition call observed once, every event decided, every request timed and answered, every
row's outcome, the breaker's transitions, the oldest due row while rows wait.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.runtime import get_actor
from opsmantik_stream.config import Settings
from tests.integration._uploader_support import Emu, add_rows, fast_settings, set_creds

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BATCHES = 6
EVENTS_PER_BATCH = 8
ROWS = 6


@pytest.fixture
def settings(settings: Settings, emulator_base: str) -> Settings:
    # one transient failure opens the breaker; it may probe again after 1 s
    # metrics_cache_s=0: each scrape reads the database figures (the test compares scrapes)
    fast = fast_settings(settings, emulator_base, partitions=2, uploaders=1, upload_breaker_fail_max=1)
    return fast.with_overrides(metrics_cache_s=0.0)


Samples = list[tuple[str, dict[str, str], float]]


async def _scrape(http: httpx.AsyncClient) -> Samples:
    r = await http.get("/metrics")
    assert r.status_code == 200
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(r.text) for s in f.samples]


def _sum(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def _has(samples: Samples, name: str) -> bool:
    return any(n == name for n, _, _ in samples)


def _batch(site: dict[str, Any]) -> dict[str, Any]:
    return {
        "events": [
            {
                "s": site["public_id"],
                "u": f"https://{site['domain']}/page/{i}",
                "sid": str(uuid.uuid4()),
                "eid": str(uuid.uuid4()),
                "ec": "page",
                "ea": "view",
                "consent": ["analytics"],
                "meta": {"fp": f"fp-{uuid.uuid4().hex[:8]}"},
            }
            for i in range(EVENTS_PER_BATCH)
        ]
    }


async def _until(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_new_metrics_appear_under_load(
    live_server: str,
    stack: dict[str, Any],
    settings: Settings,
    pool: asyncpg.Pool,
    make_site: Any,
    emulator_base: str,
) -> None:
    emu = Emu(emulator_base)
    await emu.reset()
    sites = [await make_site() for _ in range(2)]
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        # the gateway's own figures live in this process (earlier tests counted there too)
        before = await _scrape(http)
        # --- ingest: concurrent batches for two sites (both partitions get work) -------------
        answers = await asyncio.gather(
            *(
                http.post("/api/sync", json=_batch(site), headers={"Origin": f"https://{site['domain']}"})
                for site in sites
                for _ in range(BATCHES // 2)
            )
        )
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
        events = BATCHES * EVENTS_PER_BATCH

        # --- uploads: rows wait (due an hour ago) while the uploader is stopped ------------
        site = sites[0]
        await set_creds(pool, settings, site["site_id"])
        rows = await add_rows(pool, site["site_id"], [f"gclid-metrics-{i}" for i in range(ROWS)])
        await pool.execute(
            "UPDATE offline_conversion_queue SET next_retry_at = now() - interval '1 hour' WHERE id = ANY($1::uuid[])",
            [r["id"] for r in rows],
        )
        waiting = await _scrape(http)
        assert _sum(waiting, "opsmantik_upload_due_rows", destination="google_ads") == ROWS
        assert _sum(waiting, "opsmantik_upload_oldest_due_age_seconds", destination="google_ads") >= 3600
        assert _sum(waiting, "opsmantik_upload_due_rows", destination="data_manager") == 0
        assert _sum(waiting, "opsmantik_upload_oldest_due_age_seconds", destination="data_manager") == 0

        # Google is down: the first attempt fails transiently and opens the breaker
        await emu.config(outage=True)
        [uploader] = stack["uploaders"]
        handle = get_actor(uploader, settings.ray_namespace)
        await handle.start.remote()

        async def breaker_open() -> bool:
            state = await pool.fetchval(
                "SELECT state FROM provider_health_state WHERE site_id = $1 AND destination = 'google_ads'",
                site["site_id"],
            )
            return bool(state == "OPEN")

        await _until(breaker_open, "the breaker to open")
        await emu.config(outage=False)

        async def delivered() -> bool:
            n = await pool.fetchval(
                "SELECT count(*) FROM offline_conversion_queue WHERE id = ANY($1::uuid[]) AND status = 'COMPLETED'",
                [r["id"] for r in rows],
            )
            return bool(n == ROWS)

        await _until(delivered, "every row to be delivered after the outage")
        await handle.drain.remote()  # its figures are final now
        samples = await _scrape(http)
    await emu.aclose()

    # every actor of the routing table answered the scrape
    for name in [*stack["actors"], *stack["uploaders"]]:
        assert any(n == "opsmantik_actor_metrics_up" and lab["actor"] == name and v == 1 for n, lab, v in samples), name

    # ingest: every partition call timed and sized once, every event decided by a partition
    def grew(name: str) -> float:
        return _sum(samples, name) - _sum(before, name)

    calls = grew("opsmantik_ingest_batch_events_count")
    assert calls >= 2  # two sites, two partitions: at least one call each
    assert grew("opsmantik_partition_call_duration_seconds_count") == calls
    assert grew("opsmantik_ingest_batch_events_sum") == events
    assert (
        _sum(samples, "opsmantik_ingest_events_total", outcome="accepted")
        - _sum(before, "opsmantik_ingest_events_total", outcome="accepted")
        == events
    )
    assert _sum(samples, "opsmantik_partition_batches_total") == calls
    assert _sum(samples, "opsmantik_partition_events_total", outcome="accepted") == events
    partitions_with_calls = {
        lab["partition"] for n, lab, v in samples if n == "opsmantik_partition_batches_total" and v > 0
    }
    assert partitions_with_calls <= set(stack["actors"]) and partitions_with_calls
    # cache hit rates: the partitions' lru caches were used by these events (same User-Agent)
    partition_hits = sum(
        v
        for n, lab, v in samples
        if n == "opsmantik_cache_hits_total"
        and lab["process"] in stack["actors"]
        and lab["cache"].startswith("opsmantik_stream.ingest.")
    )
    assert partition_hits >= 1
    assert _has(samples, "opsmantik_cache_misses_total") and _has(samples, "opsmantik_cache_entries")
    # the gateway's site cache: one look-up per request, at least one load per site
    sites_cache = {"process": "gateway", "cache": "gateway.sync.sites"}
    site_hits = _sum(samples, "opsmantik_cache_hits_total", **sites_cache) - _sum(
        before, "opsmantik_cache_hits_total", **sites_cache
    )
    site_misses = _sum(samples, "opsmantik_cache_misses_total", **sites_cache) - _sum(
        before, "opsmantik_cache_misses_total", **sites_cache
    )
    assert site_misses >= len(sites) and site_hits + site_misses == BATCHES

    # uploads: the rows' outcomes, per uploader
    assert _sum(samples, "opsmantik_upload_rows_total", uploader=uploader, outcome="completed") == ROWS
    assert _sum(samples, "opsmantik_upload_rows_total", uploader=uploader, outcome="retry") >= 1
    # every request timed, answered and preceded by a bucket wait; the outage's answers are 503s
    requests = _sum(samples, "opsmantik_upload_responses_total", uploader=uploader)
    assert requests >= 2
    assert _sum(samples, "opsmantik_upload_request_duration_seconds_count", uploader=uploader) == requests
    assert _sum(samples, "opsmantik_upload_bucket_wait_seconds_count", uploader=uploader) == requests
    assert _sum(samples, "opsmantik_upload_responses_total", status="503") >= 1
    assert any(
        n == "opsmantik_upload_responses_total" and lab["status"] == "503" and lab["code"] not in ("", "none")
        for n, lab, _ in samples
    )
    assert _sum(samples, "opsmantik_upload_responses_total", status="200", code="none") >= 2  # chunks of 5
    # the breaker: opened by the outage, probed, closed by the probe's success
    for old, new in (("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED")):
        moved = _sum(samples, "opsmantik_upload_breaker_transitions_total", from_state=old, to_state=new)
        assert moved >= 1, (old, new)
    # nothing waits any more
    assert _sum(samples, "opsmantik_upload_due_rows", destination="google_ads") == 0
    assert _sum(samples, "opsmantik_upload_oldest_due_age_seconds", destination="google_ads") == 0
