"""Resizing a running stack (``scale_stack`` / ``opsmantik scale``): no acknowledged event lost
or duplicated, the old generation drains and stops, two writers of one site stay correct."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
import ray

from actors.runtime import get_actor, scale_stack
from gateway.app import create_app
from gateway.context import AppContext
from opsmantik_stream.ingest.schema import MetaIn, WireEvent
from opsmantik_stream.ingest.store import IngestStore
from tests.ingest_support import ORIGIN, event, post

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings: Any) -> Any:
    return settings.with_overrides(partitions=2, uploaders=1)


def _alive(name: str, ns: str) -> bool:
    try:
        get_actor(name, ns)
        return True
    except ValueError:
        return False


@pytest.mark.timeout(90)
async def test_scale_under_load_loses_and_duplicates_nothing(
    settings: Any, db_url: str, pool: asyncpg.Pool, stack: dict[str, Any], make_site: Any
) -> None:
    sites = [await make_site(origins=[ORIGIN]) for _ in range(6)]
    app = create_app(AppContext(settings=settings, pool=pool, ray_enabled=True))
    answers: list[tuple[str, int]] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:

        async def load(worker: int) -> None:
            i = 0
            while not stop.is_set():
                site = sites[(worker + i) % len(sites)]
                body = event(site, sid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{worker}-{i % 5}")))
                r = await post(client, body)
                answers.append((body["eid"], r.status_code))
                i += 1

        workers = [asyncio.create_task(load(w)) for w in range(8)]
        while len(answers) < 50:
            await asyncio.sleep(0.05)
        for partitions, uploaders in ((4, 2), (1, 1)):
            result = await asyncio.to_thread(scale_stack, settings, db_url, partitions, uploaders)
            new = result["routing"]
            assert len(new["actors"]) == partitions and len(new["uploaders"]) == uploaders
            # the old generation is gone, the new one answers
            for name in [*result["previous"]["actors"], *result["previous"]["uploaders"]]:
                assert not _alive(name, settings.ray_namespace), name
            assert all(_alive(n, settings.ray_namespace) for n in [*new["actors"], *new["uploaders"]])
            mark = len(answers)
            while len(answers) < mark + 50:
                await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*workers)

    codes = [c for _, c in answers]
    assert set(codes) <= {202}, {c: codes.count(c) for c in set(codes)}
    stored = await pool.fetch("SELECT metadata->>'eid' AS eid, count(*) AS n FROM events GROUP BY 1")
    n = {r["eid"]: r["n"] for r in stored}
    assert all(n.get(eid) == 1 for eid, _ in answers)
    assert len(n) == len(answers)
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == len(answers)
    assert await pool.fetchval("SELECT sum(event_count) FROM site_usage_monthly") == len(answers)
    routing = await pool.fetchval("SELECT value FROM runtime_state WHERE key = 'routing'")
    assert routing["version"] == 3 and len(routing["actors"]) == 1
    print(f"{len(answers)} events acknowledged across two resizes, none lost or duplicated")


def _wire(site: dict[str, Any], sid: str, now: dt.datetime, **kw: Any) -> WireEvent:
    values: dict[str, Any] = {
        "site_id": site["site_id"],
        "received_ms": int(now.timestamp() * 1000),
        "url": "https://shop.example.com/contact",
        "eid": str(uuid.uuid4()),
        "sid": sid,
        "ec": "conversion",
        "ea": "phone_call",
        "el": "tel:+905321234567",
        "consent": ["analytics"],
        "meta": MetaIn(fp=f"fp-{sid[:8]}"),
        "ip": "203.0.113.0",
        "ua": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
    }
    values.update(kw)
    return WireEvent(**values)


async def test_two_writers_of_one_site_during_a_switch(pool: asyncpg.Pool, make_site: Any) -> None:
    """The old and the new owner both write the same site's sessions for a moment (and a
    resent batch reaches both): every event once, one session row and one intent per session,
    usage equal to the ledger."""
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    old, new = IngestStore(pool), IngestStore(pool)
    sids = [str(uuid.uuid4()) for _ in range(4)]
    batches = [[_wire(site, sid, now) for sid in sids] for _ in range(10)]
    # every batch goes to both writers at once (a resend after "moved" racing the original)
    answers = await asyncio.gather(*(store.ingest(b) for b in batches for store in (old, new)))
    statuses = [r.status for batch in answers for r in batch]
    assert statuses.count("accepted") == 40 and statuses.count("duplicate") == 40
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == 40
    assert await pool.fetchval("SELECT count(*) FROM events") == 40
    rows = await pool.fetch("SELECT id, event_count FROM sessions ORDER BY id")
    assert sorted(str(r["id"]) for r in rows) == sorted(sids)
    assert all(r["event_count"] == 10 for r in rows)
    calls = await pool.fetch("SELECT matched_session_id, intent_phone_clicks FROM calls")
    assert len(calls) == 4 and all(c["intent_phone_clicks"] == 10 for c in calls)
    assert await pool.fetchval("SELECT event_count FROM site_usage_monthly") == 40


@pytest.mark.timeout(90)
async def test_uploader_budget_is_resplit_and_old_uploaders_drain(
    settings: Any, db_url: str, stack: dict[str, Any]
) -> None:
    result = await asyncio.to_thread(scale_stack, settings, db_url, 2, 3, retire_grace_s=0.1)
    names = result["routing"]["uploaders"]
    shares = []
    for name in names:
        await get_actor(name, settings.ray_namespace).run_once.remote()
        status = await get_actor(name, settings.ray_namespace).status.remote()
        shares.append(tuple(status["share"]))
    assert sorted(shares) == [(0, 3), (1, 3), (2, 3)]
    assert not result["uploaders_started"]  # this stack drives its uploaders with run_once
    # a node id for placement checks
    node = await get_actor(result["routing"]["actors"][0], settings.ray_namespace).node.remote()
    assert node in {n["NodeID"] for n in ray.nodes()}
    assert time.monotonic() > 0
