"""A SitePartition actor killed while batches are in flight: every request that got a 2xx is
in PostgreSQL exactly once; the others got 503 and are stored (exactly once) when retried."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
import ray

from gateway.app import create_app
from gateway.context import AppContext
from tests.ingest_support import ORIGIN, event, post

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.with_overrides(uploaders=0, partitions=1)


async def test_kill_partition_with_requests_in_flight(
    settings: Any, pool: asyncpg.Pool, stack: dict[str, Any], make_site: Any
) -> None:
    site = await make_site(origins=[ORIGIN])
    app = create_app(AppContext(settings=settings, pool=pool, ray_enabled=True))
    ctx = app.state.ctx
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        sid = str(uuid.uuid4())
        assert (await post(client, event(site, sid=sid))).status_code == 202
        name, handle = await ctx.routing.owner(site["site_id"])
        batcher = ctx.partitions.batchers[name]

        # Single requests and 10-event batches, 40 at a time, until the kill has failed one:
        # a fixed number of requests could all be answered before the kill lands on a busy
        # machine (ray.kill returns before the process is gone). The cap only bounds the test.
        bodies: list[Any] = []
        first: list[httpx.Response | None] = []
        failed_one = asyncio.Event()
        cap = 3000

        def next_body() -> int | None:
            if failed_one.is_set() or len(bodies) >= cap:
                return None
            i = len(bodies)
            if i % 11 == 10:
                bodies.append({"events": [event(site, sid=sid, u=f"{ORIGIN}/batch/{i}/{j}") for j in range(10)]})
            else:
                bodies.append(event(site, sid=sid, u=f"{ORIGIN}/single/{i}"))
            first.append(None)
            return i

        async def sender() -> None:
            while (i := next_body()) is not None:
                r = await post(client, bodies[i])
                first[i] = r
                if r.status_code >= 300:
                    failed_one.set()

        load = [asyncio.create_task(sender()) for _ in range(40)]
        # kill the actor the moment a batch is on its way to it (no sleeping)
        for _ in range(3):
            batcher.call_started.clear()
            await batcher.call_started.wait()
        ray.kill(handle, no_restart=False)
        await asyncio.gather(*load)
        eids = [e["eid"] for b in bodies for e in (b["events"] if "events" in b else [b])]

        answered = [r for r in first if r is not None]
        assert len(answered) == len(bodies)
        acked = [b for b, r in zip(bodies, first, strict=True) if r is not None and r.status_code < 300]
        failed = [b for b, r in zip(bodies, first, strict=True) if r is not None and r.status_code >= 300]
        assert all(r.status_code in (200, 202, 503) for r in answered), {r.status_code for r in answered}
        assert all(r.headers.get("retry-after") for r in answered if r.status_code == 503)
        print(f"acknowledged {len(acked)} requests, {len(failed)} got 503 and are retried")
        assert failed, "the kill should have failed the batches in flight"

        # every acknowledged event is durable, once, before any retry
        acked_eids = [e["eid"] for b in acked for e in (b["events"] if "events" in b else [b])]
        stored = await pool.fetch("SELECT metadata->>'eid' AS eid, count(*) AS n FROM events GROUP BY 1")
        stored_n = {row["eid"]: row["n"] for row in stored}
        assert all(stored_n.get(eid) == 1 for eid in acked_eids)

        # the client retries what was not acknowledged (same eid): stored exactly once
        for body in failed:
            for _attempt in range(100):
                r = await post(client, body)
                if r.status_code < 300:
                    break
                assert r.status_code == 503
                await asyncio.sleep(0.1)  # the client's back-off while the actor restarts
            else:
                pytest.fail("the restarted partition never accepted the retry")

    n = len(eids) + 1
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == n
    assert await pool.fetchval("SELECT count(DISTINCT metadata->>'eid') FROM events") == n
    assert await pool.fetchval("SELECT count(*) FROM events") == n
    assert await pool.fetchval("SELECT event_count FROM site_usage_monthly") == n
    assert await pool.fetchval("SELECT event_count FROM sessions") == n
    # the actor came back (same name) with fresh caches
    assert await handle.ping.remote() == "ok"
