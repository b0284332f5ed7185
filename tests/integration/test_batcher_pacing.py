"""The micro-batcher's pacing on a real stack: a small partition call waits until
``batch_min_interval_ms`` passed since the partition's previous call left (so moderate load
travels in fewer, larger calls), while a call of ``batch_small_call_events`` or more leaves as
soon as a slot is free. Every event is still stored exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream.config import Settings
from tests.conftest import _make_app
from tests.ingest_support import event, post

pytestmark = pytest.mark.integration


async def test_small_calls_wait_out_the_interval_and_large_ones_leave_at_once(
    settings: Settings, pool: asyncpg.Pool, stack: dict[str, Any], make_site: Any
) -> None:
    # a whole second, so that no scheduling hiccup of a busy test machine can look like pacing
    paced = settings.with_overrides(batch_min_interval_ms=1000, batch_small_call_events=10)
    app = _make_app(paced, pool, ray_enabled=True)
    ctx = app.state.ctx
    site = await make_site(domain="shop.example.com")
    owner = (await ctx.routing.table()).owner_of(str(site["site_id"]))
    batcher = ctx.partitions.batcher(owner)
    loop = asyncio.get_running_loop()
    calls: list[tuple[float, int]] = []
    batcher._on_call = lambda size: calls.append((loop.time(), size))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        # an idle partition gets the first event at once
        first = await post(client, event(site))
        assert first.status_code == 202, first.text
        # three single events right after it: each alone would be a call; they wait and leave together
        small = await asyncio.gather(*(post(client, event(site)) for _ in range(3)))
        assert [r.status_code for r in small] == [202] * 3
        # twelve events in one request: a call worth its cost, it does not wait
        big = await post(client, {"events": [event(site) for _ in range(12)]})
        assert big.status_code == 202, big.text
    await ctx.partitions.close()
    assert [size for _, size in calls] == [1, 3, 12]
    (t_first, _), (t_small, _), (t_big, _) = calls
    # times are taken when each call's task runs, a scheduling delay after it left: 0.9 s, not 1
    assert t_small - t_first >= 0.9
    assert t_big - t_small < 0.9
    stored = await pool.fetchval("SELECT count(*) FROM events WHERE site_id = $1", site["site_id"])
    ledger = await pool.fetchval("SELECT count(*) FROM ingest_idempotency WHERE site_id = $1", site["site_id"])
    assert stored == ledger == 16


async def test_without_an_interval_a_small_call_leaves_as_soon_as_a_slot_is_free(
    settings: Settings, pool: asyncpg.Pool, stack: dict[str, Any], make_site: Any
) -> None:
    app = _make_app(settings.with_overrides(batch_min_interval_ms=0), pool, ray_enabled=True)
    ctx = app.state.ctx
    site = await make_site(domain="shop.example.com")
    owner = (await ctx.routing.table()).owner_of(str(site["site_id"]))
    batcher = ctx.partitions.batcher(owner)
    sizes: list[int] = []
    batcher._on_call = sizes.append
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        assert (await post(client, event(site))).status_code == 202
        # the same three events as above: the first finds the partition idle and leaves alone,
        # the other two wait only for that call
        small = await asyncio.gather(*(post(client, event(site)) for _ in range(3)))
        assert [r.status_code for r in small] == [202] * 3
    await ctx.partitions.close()
    assert sizes == [1, 1, 2]
