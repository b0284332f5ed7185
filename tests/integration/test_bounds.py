"""Issue 18: the gateway's bounded structures hold their bound on a real stack.

- the site cache and the origin verdicts, fed far more distinct keys than their bound;
- the micro-batcher: with the partition stalled (the site's usage row locked, so its batch
  waits inside PostgreSQL), events waiting never exceed ``max_queued``, calls in flight never
  exceed ``max_inflight`` (nor the channel's pending calls), every other request is refused
  at once with 503 ``partition_busy``, and once the partition moves on exactly the accepted
  events are stored;
- ``/metrics`` shows every bounded structure of the gateway and of each partition.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from gateway import sync
from gateway.handles import RoutingCache
from gateway.partitions import PartitionClient
from opsmantik_stream.config import Settings
from tests.conftest import _make_app
from tests.ingest_support import ORIGIN, event, post

pytestmark = pytest.mark.integration


async def test_site_cache_and_origin_verdicts_hold_their_bound(
    settings: Settings, pool: asyncpg.Pool, make_site: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync, "_MAX_SITES", 20)
    monkeypatch.setattr(sync, "_MAX_ORIGINS", 50)
    runtime = sync.SyncRuntime(settings, pool, PartitionClient(settings, RoutingCache("none"), enabled=False))
    site = await make_site(domain="shop.example.com")
    # 500 made-up site ids (each one database look-up), 25 times the bound
    for _ in range(500):
        assert await runtime.site(uuid.uuid4().hex) is None
        assert len(runtime._sites) <= 20
    info = await runtime.site(site["public_id"])
    assert info is not None and info.site_id == str(site["site_id"])
    # 5,000 origins, 100 times the bound: the verdicts stay right and the memo bounded
    for i in range(5000):
        origin = f"https://x{i}.shop.example.com" if i % 2 else f"https://evil{i}.example.net"
        assert runtime.origin_ok(info, origin.encode()) is bool(i % 2)
        assert len(runtime._origins) <= 50
    # an Origin longer than any real one is judged, never remembered
    before = dict(runtime._origins)
    huge = ("https://" + "a" * 400 + ".shop.example.com").encode()
    assert runtime.origin_ok(info, huge) is True
    assert runtime._origins == before
    entries = runtime.bounded()
    assert entries["gateway_sites"] == (len(runtime._sites), 20)
    assert entries["gateway_origin_verdicts"] == (50, 50)


async def test_batcher_queue_and_calls_in_flight_hold_their_bound_while_the_partition_stalls(
    settings: Settings, pool: asyncpg.Pool, stack: dict[str, Any], make_site: Any
) -> None:
    # batch_min_interval_ms=0: the first event leaves alone at once, however soon after the
    # warm-up call (a small call waiting out the interval would leave with 5)
    limits = settings.with_overrides(
        partition_max_queued_events=20,
        partition_max_inflight=1,
        batch_max_events=5,
        partition_call_timeout_s=60,
        batch_min_interval_ms=0,
    )
    app = _make_app(limits, pool, ray_enabled=True)
    ctx = app.state.ctx
    site = await make_site(domain="shop.example.com")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        first = await post(client, event(site))
        assert first.status_code == 202, first.text  # the month's usage row exists now
        owner = (await ctx.routing.table()).owner_of(str(site["site_id"]))
        batcher = ctx.partitions.batchers[owner]
        async with pool.acquire() as conn, conn.transaction():
            # the partition's next batch of this site waits for this lock inside PostgreSQL
            await conn.execute("SELECT 1 FROM site_usage_monthly WHERE site_id = $1 FOR UPDATE", site["site_id"])
            tasks = [asyncio.create_task(post(client, event(site))) for _ in range(200)]
            # 1 event in the stalled call, 20 waiting: the other 179 are refused at once
            while sum(t.done() for t in tasks) < 179:
                assert batcher.queued <= 20 and batcher.inflight <= 1
                await asyncio.sleep(0.02)
            assert batcher.queued == 20 and batcher.inflight == 1
            channel_pending = ctx.partitions.bounded().get(f"channel_pending_calls:{owner}", (0, 1))[0]
            assert channel_pending <= 1
            refused = [t.result() for t in tasks if t.done()]
            assert all(r.status_code == 503 for r in refused)
            assert {r.headers["x-opsmantik-error-code"] for r in refused} == {"partition_busy"}
            assert all(r.headers["retry-after"] for r in refused)
        answers = await asyncio.gather(*tasks)
    accepted = [r for r in answers if r.status_code == 202]
    assert len(accepted) == 21
    assert len(answers) - len(accepted) == 179
    ledger = await pool.fetchval("SELECT count(*) FROM ingest_idempotency WHERE site_id = $1", site["site_id"])
    assert ledger == 22  # the first event and the 21 accepted: nothing refused was written
    assert batcher.queued == 0 and batcher.inflight == 0
    await ctx.partitions.close()


async def test_metrics_show_every_bounded_structure_of_gateway_and_partitions(
    settings: Settings, pool: asyncpg.Pool, stack: dict[str, Any], make_site: Any
) -> None:
    app = _make_app(settings, pool, ray_enabled=True)
    site = await make_site(domain="shop.example.com")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        r = await post(client, event(site, u=f"{ORIGIN}/landing?gclid=Cj0Kbound"), origin=ORIGIN)
        assert r.status_code == 202, r.text
        text = (await client.get("/metrics")).text
    await app.state.ctx.partitions.close()
    found = re.findall(r'^opsmantik_bounded_entries\{process="([^"]+)",structure="([^"]+)"\} (\S+)$', text, re.M)
    by_process: dict[str, dict[str, float]] = {}
    for process, structure, value in found:
        by_process.setdefault(process, {})[structure] = float(value)
    gateway = by_process["gateway"]
    for name in ("gateway_sites", "gateway_origin_verdicts", "gateway_client_buckets", "gateway_site_buckets"):
        assert gateway[name] >= 1
    assert any(k.startswith("batcher_queued_events:") for k in gateway)
    assert 'opsmantik_bounded_limit{process="gateway",structure="gateway_sites"} 100000.0' in text
    partitions = {p: v for p, v in by_process.items() if p != "gateway"}
    assert set(partitions) == set(stack["actors"])
    # the partition that stored the event parsed its landing page (a memo entry)
    assert sum(v["attribution.url_params"] for v in partitions.values()) >= 1
    # and keeps the month of the session it wrote (a session hint, learned after COMMIT)
    assert sum(v.get("store.session_hints", 0) for v in partitions.values()) == 1
    for name in stack["actors"]:
        assert re.search(rf'^opsmantik_process_resident_bytes\{{process="{name}"\}} [1-9]', text, re.M)
