"""The visitor's click sessions (``session_clicks``, migration 0019): the Ads Assisted rule
asks them whether another session of the fingerprint on the site had a click id. They hold
exactly the sessions with a click id and a fingerprint, through ingest, a click id that
comes later, an erase, and however many monthly partitions the look-back covers."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest

from opsmantik_stream.enums import ActorType
from opsmantik_stream.ingest.store import IngestStore
from opsmantik_stream.privacy.erase import erase_subject
from opsmantik_stream.privacy.subject import normalize_identifier
from tests.integration.test_ingest_store import Clock, wire

pytestmark = pytest.mark.integration

GOOGLE = "https://www.google.com/"


async def mirrored(pool: asyncpg.Pool) -> set[tuple[Any, ...]]:
    """The rows of session_clicks, after checking they are exactly the sessions that have a
    click id and a fingerprint."""
    held = {
        tuple(r) for r in await pool.fetch("SELECT site_id, fingerprint, session_id, session_month FROM session_clicks")
    }
    want = {
        tuple(r)
        for r in await pool.fetch(
            """SELECT site_id, fingerprint, id, created_month FROM sessions
               WHERE fingerprint IS NOT NULL AND (gclid IS NOT NULL OR wbraid IS NOT NULL OR gbraid IS NOT NULL)"""
        )
    }
    assert held == want
    return held


async def event_attribution(pool: asyncpg.Pool, eid: str) -> str:
    value = await pool.fetchval(
        "SELECT metadata ->> 'attribution_source' FROM events WHERE metadata ->> 'eid' = $1", eid
    )
    assert isinstance(value, str)
    return value


async def test_a_later_event_of_a_visitor_who_clicked_in_another_session_is_ads_assisted(
    pool: asyncpg.Pool, make_site: Any
) -> None:
    site, other_site = await make_site(), await make_site()
    now = dt.datetime.now(dt.UTC)
    store = IngestStore(pool)
    clicked, later = str(uuid.uuid4()), str(uuid.uuid4())
    await store.ingest([wire(site, now, sid=clicked, url="https://shop.example.com/?gclid=G-1", meta={"fp": "fp-a"})])
    # the same fingerprint on another site clicked too: never counts for this site
    await store.ingest([wire(other_site, now, url="https://shop.example.com/?wbraid=W-1", meta={"fp": "fp-b"})])
    # another session of fp-a starts without a Google referrer, then comes from Google: the
    # session exists by then, so only the visitor's click sessions can tell
    await store.ingest([wire(site, now, sid=later, eid="first", meta={"fp": "fp-a"})])
    await store.ingest([wire(site, now, sid=later, eid="from-google", referrer=GOOGLE, meta={"fp": "fp-a"})])
    # a visitor without a click session on this site (fp-b clicked on the other one)
    await store.ingest([wire(site, now, eid="b-first", meta={"fp": "fp-b"})])
    await store.ingest([wire(site, now, eid="b-google", referrer=GOOGLE, meta={"fp": "fp-b"})])

    assert await event_attribution(pool, "first") == "Organic"
    assert await event_attribution(pool, "from-google") == "Ads Assisted"
    assert await event_attribution(pool, "b-google") == "Organic"
    held = await mirrored(pool)
    assert sorted((str(r[0]), r[1]) for r in held) == sorted(
        [(site["site_id"], "fp-a"), (other_site["site_id"], "fp-b")]
    )
    assert next(str(r[2]) for r in held if r[1] == "fp-a") == clicked


async def test_a_session_that_gets_its_click_id_later_becomes_a_click_session(
    pool: asyncpg.Pool, make_site: Any
) -> None:
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    store = IngestStore(pool)
    sid = str(uuid.uuid4())
    await store.ingest([wire(site, now, sid=sid, meta={"fp": "fp-c"})])
    assert await mirrored(pool) == set()
    # the click id comes with a later event of the same session, in a batch with another event
    await store.ingest(
        [
            wire(site, now, sid=sid, url="https://shop.example.com/?gbraid=GB-1", meta={"fp": "fp-c"}),
            wire(site, now, sid=sid, meta={"fp": "fp-c"}),
        ]
    )
    assert [str(r[2]) for r in await mirrored(pool)] == [sid]
    # more events of a click session change nothing
    await store.ingest([wire(site, now, sid=sid, url="https://shop.example.com/?gclid=G-2", meta={"fp": "fp-c"})])
    assert len(await mirrored(pool)) == 1
    # a click session without a fingerprint is none of a visitor's
    await store.ingest([wire(site, now, url="https://shop.example.com/?gclid=G-3", meta={})])
    assert len(await mirrored(pool)) == 1


async def test_an_erase_removes_the_visitors_click_sessions(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    store = IngestStore(pool)
    later = str(uuid.uuid4())
    await store.ingest([wire(site, now, url="https://shop.example.com/?gclid=G-4", meta={"fp": "fp-d"})])
    await store.ingest([wire(site, now, url="https://shop.example.com/?gclid=G-5", meta={"fp": "fp-keep"})])
    await store.ingest([wire(site, now, sid=later, meta={"fp": "fp-d"})])
    assert len(await mirrored(pool)) == 2

    subject = normalize_identifier(site["site_id"], "fingerprint", "fp-d")
    result = await erase_subject(pool, subject, actor_type=ActorType.CLI, actor_id=None)
    assert result["counts"]["sessions"] == 2
    assert [r[1] for r in await mirrored(pool)] == ["fp-keep"]
    # the erased session's next event fills the fingerprint again; with no click session of
    # the visitor left, Google brings it as Organic
    await store.ingest([wire(site, now, sid=later, eid="after", referrer=GOOGLE, meta={"fp": "fp-d"})])
    assert await event_attribution(pool, "after") == "Organic"
    assert [r[1] for r in await mirrored(pool)] == ["fp-keep"]


async def test_the_look_back_finds_a_click_in_any_month_it_covers(pool: asyncpg.Pool, make_site: Any) -> None:
    # half a year of monthly partitions: the click session five months back still counts,
    # one six months back no longer does
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    month = now.date().replace(day=1)
    for back in range(1, 7):
        await pool.execute(
            "SELECT ensure_month_partitions((date_trunc('month', $1::date) - make_interval(months => $2))::date)",
            month,
            back,
        )
    store = IngestStore(pool)
    for back, fp in ((5, "fp-5"), (6, "fp-6")):
        year, number = divmod(month.year * 12 + month.month - 1 - back, 12)
        then = dt.datetime(year, number + 1, 15, 12, tzinfo=dt.UTC)
        old = IngestStore(pool, clock=Clock(then))
        await old.ingest([wire(site, then, url="https://shop.example.com/?gclid=G-old", meta={"fp": fp})])
        sid = str(uuid.uuid4())
        await store.ingest([wire(site, now, sid=sid, meta={"fp": fp})])
        await store.ingest([wire(site, now, sid=sid, eid=f"google-{back}", referrer=GOOGLE, meta={"fp": fp})])
    months = {r[1]: r[3] for r in await mirrored(pool)}
    assert sorted(months) == ["fp-5", "fp-6"]
    assert await event_attribution(pool, "google-5") == "Ads Assisted"
    assert await event_attribution(pool, "google-6") == "Organic"
