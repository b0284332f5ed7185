"""The partition's batch writer on a real PostgreSQL, without Ray: server-side months with
an injected clock, dead letters that never break a batch, nothing held between batches,
and an exact quota with two writers on one site."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

from opsmantik_stream.db import close_pool, create_pool
from opsmantik_stream.ingest.schema import MetaIn, WireEvent, WireResult
from opsmantik_stream.ingest.store import BatchEvent, CallExpired, IngestStore

pytestmark = pytest.mark.integration


def wire(site: dict[str, Any], at: dt.datetime, **kw: Any) -> WireEvent:
    values: dict[str, Any] = {
        "site_id": site["site_id"],
        "received_ms": int(at.timestamp() * 1000),
        "url": "https://shop.example.com/",
        "eid": str(uuid.uuid4()),
        "sid": str(uuid.uuid4()),
        "ec": "interaction",
        "ea": "view",
        "el": "Home",
        "consent": ["analytics"],
        "meta": {"fp": "fp-1"},
        "ip": "203.0.113.0",
        "ua": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
    }
    values.update(kw)
    values["meta"] = msgspec.convert(values["meta"], MetaIn)
    return WireEvent(**values)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


async def test_months_are_the_servers_and_a_session_spans_the_boundary(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site(monthly_limit=1)
    clock = Clock(dt.datetime(2026, 1, 31, 23, 59, 59, tzinfo=dt.UTC))
    store = IngestStore(pool, clock=clock)
    sid = str(uuid.uuid4())
    [r1] = await store.ingest([wire(site, clock.now, sid=sid)])
    clock.now = dt.datetime(2026, 2, 1, 0, 0, 5, tzinfo=dt.UTC)
    # the quota starts again in the new UTC month; the session stays January's
    [r2] = await store.ingest([wire(site, clock.now, sid=sid, url="https://shop.example.com/b")])
    [r3] = await store.ingest([wire(site, clock.now, sid=sid, url="https://shop.example.com/c")])
    assert [r1.status, r2.status, r3.status] == ["accepted", "accepted", "rejected_quota"]
    assert r3.retry_after_s == (dt.datetime(2026, 3, 1, tzinfo=dt.UTC) - clock.now).total_seconds()
    sessions = await pool.fetch("SELECT id, created_month, event_count FROM sessions")
    assert [(s["id"], s["created_month"], s["event_count"]) for s in sessions] == [
        (uuid.UUID(sid), dt.date(2026, 1, 1), 2)
    ]
    months = await pool.fetch("SELECT DISTINCT session_month FROM events")
    assert [m["session_month"] for m in months] == [dt.date(2026, 1, 1)]
    usage = await pool.fetch("SELECT year_month, event_count, rejected_count FROM site_usage_monthly ORDER BY 1")
    assert [tuple(u) for u in usage] == [("2026-01", 1, 0), ("2026-02", 1, 1)]
    ledger = await pool.fetch(
        "SELECT year_month, count(*) FROM ingest_idempotency WHERE billable GROUP BY 1 ORDER BY 1"
    )
    assert [tuple(x) for x in ledger] == [("2026-01", 1), ("2026-02", 1)]


async def test_event_ids_follow_receive_time_and_every_ledger_row_has_its_month(
    pool: asyncpg.Pool, make_site: Any
) -> None:
    site = await make_site()
    clock = Clock(dt.datetime(2026, 3, 31, 23, 0, tzinfo=dt.UTC))
    store = IngestStore(pool, clock=clock)
    start = dt.datetime(2026, 3, 31, 22, 0, tzinfo=dt.UTC)
    # three batches, received in this order; inside a batch the events are seconds apart
    for b in range(3):
        batch = [wire(site, start + dt.timedelta(minutes=b, seconds=k)) for k in range(4)]
        assert {r.status for r in await store.ingest(batch)} == {"accepted"}
    rows = await pool.fetch("SELECT id, created_at FROM events ORDER BY created_at")
    ids = [r["id"] for r in rows]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert ids == sorted(ids)  # time-ordered: the primary key grows at its right edge
    assert {i.version for i in ids} == {7}
    # a writer that leaves year_month out (dead letters, tools) gets the UTC month of created_at
    await pool.execute(
        "INSERT INTO ingest_idempotency (site_id, idempotency_key, created_at) VALUES ($1, 'k-1', $2)",
        site["site_id"],
        dt.datetime(2026, 4, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=3))),
    )
    months = await pool.fetch("SELECT DISTINCT year_month FROM ingest_idempotency ORDER BY 1")
    assert [m["year_month"] for m in months] == ["2026-03"]


async def test_a_batch_with_duplicates_counts_only_its_new_events_against_the_quota(
    pool: asyncpg.Pool, make_site: Any
) -> None:
    # the duplicates of a batch are told apart from its new events by the keys that went into
    # the ledger (migration 0020): only the new ones count, in arrival order
    site = await make_site(monthly_limit=3)
    store = IngestStore(pool)
    now = dt.datetime.now(dt.UTC)
    a, b, c, d, e = (wire(site, now, url=f"https://shop.example.com/{x}") for x in "abcde")
    first = await store.ingest([a, b])
    assert [r.status for r in first] == ["accepted", "accepted"]
    results = await store.ingest([a, c, b, d, e])
    assert [r.status for r in results] == ["duplicate", "accepted", "duplicate", "rejected_quota", "rejected_quota"]
    assert (results[0].ingest_id, results[2].ingest_id) == (first[0].ingest_id, first[1].ingest_id)
    assert results[1].quota_remaining == 0
    urls = await pool.fetch("SELECT url FROM events ORDER BY url")
    assert [u["url"] for u in urls] == [f"https://shop.example.com/{x}" for x in "abc"]
    usage = await pool.fetchrow("SELECT event_count, rejected_count FROM site_usage_monthly")
    assert (usage["event_count"], usage["rejected_count"]) == (3, 2)
    states = await pool.fetch("SELECT billing_state, count(*) AS n FROM ingest_idempotency GROUP BY 1")
    assert {x["billing_state"]: x["n"] for x in states} == {"ACCEPTED": 3, "REJECTED_QUOTA": 2}


async def test_a_duplicate_after_new_events_stores_each_new_event_once(pool: asyncpg.Pool, make_site: Any) -> None:
    # migration 0022: the keys go in with a plain insert first; a key already in the ledger
    # in the middle of the batch undoes the rows inserted before it, and the batch goes in
    # again through ON CONFLICT -- the new events stored and counted once, the duplicate not
    site = await make_site(monthly_limit=100)
    store = IngestStore(pool)
    now = dt.datetime.now(dt.UTC)
    a, b, c, d = (wire(site, now, url=f"https://shop.example.com/{x}") for x in "abcd")
    assert [r.status for r in await store.ingest([b])] == ["accepted"]
    results = await store.ingest([a, c, b, d])
    assert [r.status for r in results] == ["accepted", "accepted", "duplicate", "accepted"]
    # in one call of ingest_batch: not re-run event by event, nothing captured as a dead letter
    assert store.stats["split_batches"] == 0
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
    assert [r.quota_remaining for r in results] == [98, 97, None, 96]
    keys = await pool.fetch("SELECT idempotency_key, count(*) AS n FROM ingest_idempotency GROUP BY 1")
    assert sorted(k["n"] for k in keys) == [1, 1, 1, 1]
    urls = await pool.fetch("SELECT url FROM events ORDER BY url")
    assert [u["url"] for u in urls] == [f"https://shop.example.com/{x}" for x in "abcd"]
    usage = await pool.fetchrow("SELECT event_count FROM site_usage_monthly")
    assert usage["event_count"] == 4
    # and the next batch of new events goes in as usual
    e = wire(site, now, url="https://shop.example.com/e")
    assert [r.status for r in await store.ingest([e, a])] == ["accepted", "duplicate"]
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == 5


async def test_a_failing_event_goes_to_dead_letters_and_the_batch_commits(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    # a real database refusal for one row (as a bad value or a future constraint would cause)
    await pool.execute("ALTER TABLE events ADD CONSTRAINT test_no_poison CHECK (event_label IS DISTINCT FROM 'poison')")
    store = IngestStore(pool)
    now = dt.datetime.now(dt.UTC)
    sid = str(uuid.uuid4())
    poison = wire(site, now, sid=sid, el="poison")
    results = await store.ingest([wire(site, now, sid=sid), poison, wire(site, now, sid=sid, el="fine")])
    assert [r.status for r in results] == ["accepted", "accepted", "accepted"]
    assert [r.stored for r in results] == [None, "dead_letter", None]
    assert await pool.fetchval("SELECT count(*) FROM events") == 2
    dead = await pool.fetchrow("SELECT * FROM dead_letters")
    assert dead["source"] == "ingest" and dead["status"] == "PENDING"
    assert "test_no_poison" in dead["reason"] or "CheckViolation" in dead["reason"]
    assert dead["payload"]["el"] == "poison" and str(dead["site_id"]) == site["site_id"]
    ledger = await pool.fetchrow(
        "SELECT billable, billing_reason FROM ingest_idempotency WHERE idempotency_key = $1",
        results[1].ingest_id,
    )
    assert (ledger["billable"], ledger["billing_reason"]) == (False, "dead_letter")
    assert await pool.fetchval("SELECT event_count FROM site_usage_monthly") == 2
    # a re-send is recognised, not dead-lettered twice
    [again] = await store.ingest([poison])
    assert again.status == "duplicate"
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 1
    # the store keeps working afterwards
    [later] = await store.ingest([wire(site, now, sid=sid, el="after")])
    assert later.status == "accepted" and later.stored is None


async def test_a_restarted_partition_knows_everything_from_postgresql(pool: asyncpg.Pool, make_site: Any) -> None:
    # the store keeps no state between batches: a restarted actor (a new store) finds the
    # session, its click id and the visitor's history in PostgreSQL
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    sid = str(uuid.uuid4())
    first = IngestStore(pool)
    await first.ingest([wire(site, now, sid=sid, url="https://shop.example.com/?gclid=G-1234567890")])

    restarted = IngestStore(pool)  # as after an actor restart
    call = wire(site, now, sid=sid, ec="conversion", ea="phone_call", el="tel:05321234567", meta={})
    [r] = await restarted.ingest([call])
    assert r.status == "accepted"
    assert await pool.fetchval("SELECT count(*) FROM sessions") == 1
    assert await pool.fetchval("SELECT event_count FROM sessions") == 2
    # the intent takes the session's click id even though this event carried none
    row = await pool.fetchrow("SELECT click_id, click_id_type, matched_fingerprint FROM calls")
    assert tuple(row) == ("G-1234567890", "gclid", "fp-1")
    # a new session of the same fingerprint is a returning visit; Google + earlier click: Ads Assisted
    [r] = await restarted.ingest([wire(site, now, referrer="https://www.google.com/")])
    s = await pool.fetchrow("SELECT * FROM sessions WHERE gclid IS NULL")
    assert (s["is_returning"], s["previous_visit_count"], s["attribution_source"]) == (
        True,
        1,
        "Ads Assisted",
    )


async def test_quota_is_exact_with_concurrent_batches_and_two_writers(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site(monthly_limit=10)
    now = dt.datetime.now(dt.UTC)
    # two stores stand for the old and the new owner during a resize
    stores = [IngestStore(pool), IngestStore(pool)]
    batches = [[wire(site, now) for _ in range(5)] for _ in range(6)]
    answers = await asyncio.gather(*(stores[i % 2].ingest(b) for i, b in enumerate(batches)))
    statuses = [r.status for batch in answers for r in batch]
    assert statuses.count("accepted") == 10 and statuses.count("rejected_quota") == 20
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency WHERE billable") == 10
    usage = await pool.fetchrow("SELECT event_count, rejected_count FROM site_usage_monthly")
    assert tuple(usage) == (10, 20)
    assert await pool.fetchval("SELECT count(*) FROM events") == 10


async def test_a_session_id_used_by_another_site_is_never_shared(pool: asyncpg.Pool, make_site: Any) -> None:
    a = await make_site()
    b = await make_site()
    now = dt.datetime.now(dt.UTC)
    sid = str(uuid.uuid4())
    store = IngestStore(pool)
    await store.ingest([wire(a, now, sid=sid)])
    await store.ingest([wire(b, now, sid=sid)])
    await store.ingest([wire(b, now, sid=sid, url="https://shop.example.com/2")])
    rows = await pool.fetch("SELECT id, site_id, event_count FROM sessions ORDER BY created_at")
    assert len(rows) == 2
    assert {str(r["site_id"]) for r in rows} == {a["site_id"], b["site_id"]}
    assert rows[0]["id"] == uuid.UUID(sid) and rows[1]["id"] != uuid.UUID(sid)
    assert [r["event_count"] for r in rows] == [1, 2]
    events = await pool.fetch(
        "SELECT e.site_id, s.site_id AS session_site FROM events e JOIN sessions s ON s.id = e.session_id"
    )
    assert all(e["site_id"] == e["session_site"] for e in events)


async def test_one_session_id_for_two_sites_in_one_batch_fails_nobody(pool: asyncpg.Pool, make_site: Any) -> None:
    # A client reusing another site's session id must not cost the other events of the call
    # (and other sites on the partition) a 503: the batch re-runs event by event.
    a = await make_site()
    b = await make_site()
    c = await make_site()
    now = dt.datetime.now(dt.UTC)
    sid = str(uuid.uuid4())
    store = IngestStore(pool)
    results = await store.ingest([wire(a, now, sid=sid), wire(b, now, sid=sid), wire(c, now)])
    assert [r.status for r in results] == ["accepted", "accepted", "accepted"]
    assert all(r.stored != "dead_letter" for r in results)
    rows = await pool.fetch("SELECT id, site_id FROM sessions")
    assert len(rows) == 3
    assert len({r["id"] for r in rows}) == 3
    assert await pool.fetchval("SELECT count(*) FROM events") == 3
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_the_prepared_event_is_exactly_the_sql_type(pool: asyncpg.Pool) -> None:
    # the partition sends each BatchEvent as a row of the SQL type, field by position: a
    # field out of place would land in another attribute
    rows = await pool.fetch(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
           FROM pg_attribute a JOIN pg_type t ON t.typrelid = a.attrelid
           WHERE t.typname = 'ingest_batch_event' AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum"""
    )
    assert [r["attname"] for r in rows] == list(BatchEvent.__struct_fields__)
    types = {r["attname"]: r["type"] for r in rows}
    expected = {
        bool: "boolean",
        int: ("integer", "smallint", "bigint"),
        float: "double precision",
        str: ("text", "uuid"),
    }
    for field in msgspec.structs.fields(BatchEvent):
        hint = field.type
        args = [t for t in getattr(hint, "__args__", ()) if t is not type(None)]
        base = hint if isinstance(hint, type) else (args[0] if args else None)
        want = expected.get(base) if isinstance(base, type) else None
        if want is not None:
            assert types[field.name] in (want if isinstance(want, tuple) else (want,)), field.name


@pytest.mark.parametrize(
    ("limit", "soft", "multiplier", "states"),
    [
        (0, False, 2, "rrr"),
        (1, False, 2, "arr"),
        (3, False, 2, "aaarr"),
        (2, True, 2, "aaoorr"),
        (3, True, 1.5, "aaaorr"),
        (0, True, 2, "rr"),
    ],
)
async def test_quota_accepts_exactly_the_limit_then_overage_up_to_the_cap(
    pool: asyncpg.Pool, limit: int, soft: bool, multiplier: float, states: str
) -> None:
    got = "".join(
        [
            await pool.fetchval("SELECT ingest_quota($1, $2, $3, $4)::text", limit, soft, multiplier, used)
            for used in range(len(states))
        ]
    )
    assert got == states


async def test_quota_remaining_counts_down_in_one_batch(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site(monthly_limit=3)
    now = dt.datetime.now(dt.UTC)
    results = await IngestStore(pool).ingest([wire(site, now) for _ in range(5)])
    assert [(r.status, r.quota_remaining) for r in results] == [
        ("accepted", 2),
        ("accepted", 1),
        ("accepted", 0),
        ("rejected_quota", 0),
        ("rejected_quota", 0),
    ]


async def test_plain_events_never_raise_consent_and_a_consent_event_sets_it(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    store = IngestStore(pool)
    sid = str(uuid.uuid4())

    async def scopes() -> list[str]:
        return list(await pool.fetchval("SELECT consent_scopes FROM sessions WHERE id = $1", uuid.UUID(sid)))

    await store.ingest([wire(site, now, sid=sid, consent=["analytics"])])
    assert await scopes() == ["analytics"]
    # a plain event claiming more changes nothing
    await store.ingest([wire(site, now, sid=sid, consent=["analytics", "marketing"])])
    assert await scopes() == ["analytics"]
    # the tracker's consent call (a system/consent event) records the choice as it is
    grant = wire(site, now, sid=sid, ec="system", ea="consent", consent=["analytics", "marketing"])
    [r] = await store.ingest([grant])
    assert r.status == "accepted" and r.quota_remaining is None  # not billable
    assert await scopes() == ["analytics", "marketing"]
    # a later plain event may only narrow it
    await store.ingest([wire(site, now, sid=sid, consent=["analytics"])])
    assert await scopes() == ["analytics"]
    # in one batch, events apply in order: grant, then a narrowing event, then a grant again
    await store.ingest(
        [
            wire(site, now, sid=sid, ec="system", ea="consent", consent=["analytics", "marketing"]),
            wire(site, now, sid=sid, consent=["analytics"]),
            wire(site, now, sid=sid, ec="system", ea="consent", consent=["analytics", "marketing"]),
        ]
    )
    assert await scopes() == ["analytics", "marketing"]
    # a withdrawal is recorded too; the consent events are the session's consent history
    await store.ingest([wire(site, now, sid=sid, ec="system", ea="consent", consent=[])])
    assert await scopes() == []
    history = await pool.fetchval(
        "SELECT count(*) FROM events WHERE session_id = $1 AND event_category = 'system' AND event_action = 'consent'",
        uuid.UUID(sid),
    )
    assert history == 4
    assert await pool.fetchval("SELECT event_count FROM site_usage_monthly") == 4  # only the plain views


async def test_a_batch_past_its_deadline_is_not_written(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    store = IngestStore(pool)
    with pytest.raises(CallExpired):
        await store.ingest([wire(site, now)], deadline=time.monotonic() - 1)
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == 0
    [r] = await store.ingest([wire(site, now)], deadline=time.monotonic() + 30)
    assert r.status == "accepted"


async def test_a_visitor_with_thousands_of_sessions_costs_every_batch_a_bounded_look_up(
    pool: asyncpg.Pool, make_site: Any
) -> None:
    # Heartbeats (not billable) with one fingerprint and many session ids must not make later
    # batches of the site slower and slower: the look-up reads the visitor's 100 latest
    # sessions at most, and nothing about it is kept in the partition between batches.
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    store = IngestStore(pool)
    beats = [wire(site, now, ec="system", ea="heartbeat", meta={"fp": "fp-many"}) for _ in range(600)]
    for k in range(0, len(beats), 200):
        assert {r.status for r in await store.ingest(beats[k : k + 200])} == {"accepted"}
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE fingerprint = 'fp-many'") == 600
    [r] = await store.ingest([wire(site, now, meta={"fp": "fp-many"}, referrer="https://www.google.com/")])
    assert r.status == "accepted"
    visits = await pool.fetchval("SELECT previous_visit_count FROM sessions ORDER BY created_at DESC, id LIMIT 1")
    assert visits == 100
    assert await pool.fetchval("SELECT count(*) FROM events") == 1  # heartbeats only touch sessions


@pytest.mark.parametrize("hinted", [False, True], ids=["looked up", "hinted"])
@pytest.mark.parametrize("fillers", [2, 40], ids=["small batch, one probe per id", "large batch, one index scan"])
async def test_sessions_are_found_alike_in_small_and_large_batches(
    pool: asyncpg.Pool, make_site: Any, fillers: int, hinted: bool
) -> None:
    # ingest_batch() probes each session id of a batch under 32 events and looks all of them
    # up with one index scan from 32 events on (migration 0015): both must find the site's
    # sessions of this and last month and give an id another site holds a derived session.
    # The same store sends the sessions it wrote as hints (migration 0018); a new store per
    # batch (as after restarts) sends none, so every id is looked up.
    a = await make_site()
    b = await make_site()
    clock = Clock(dt.datetime(2026, 5, 31, 23, 0, tzinfo=dt.UTC))
    store = IngestStore(pool, clock=clock)
    prev, cur, taken = (str(uuid.uuid4()) for _ in range(3))
    await store.ingest([wire(a, clock.now, sid=prev)])  # last month, once the clock moves on
    clock.now = dt.datetime(2026, 6, 1, 0, 5, tzinfo=dt.UTC)
    await store.ingest([wire(a, clock.now, sid=cur), wire(b, clock.now, sid=taken)])
    fresh = [str(uuid.uuid4()) for _ in range(fillers)]

    for round_ in (1, 2):
        batch = [wire(a, clock.now, sid=s) for s in (prev, cur, taken, *fresh)]
        writer = store if hinted else IngestStore(pool, clock=clock)
        assert {r.status for r in await writer.ingest(batch)} == {"accepted"}
        rows = await pool.fetch("SELECT id, site_id, created_month, event_count FROM sessions")
        by_key = {(str(r["id"]), str(r["site_id"])): (r["created_month"], r["event_count"]) for r in rows}
        # the site's own sessions get the events, in the months they were created in
        assert by_key[(prev, a["site_id"])] == (dt.date(2026, 5, 1), 1 + round_)
        assert by_key[(cur, a["site_id"])] == (dt.date(2026, 6, 1), 1 + round_)
        assert all(by_key[(f, a["site_id"])] == (dt.date(2026, 6, 1), round_) for f in fresh)
        # the other site's session is left alone; this site's events for that id share one
        # session of its own under the derived id (found again in the second round)
        assert by_key[(taken, b["site_id"])] == (dt.date(2026, 6, 1), 1)
        derived = [v for (i, s), v in by_key.items() if s == a["site_id"] and i not in {prev, cur, *fresh}]
        assert derived == [(dt.date(2026, 6, 1), round_)]
        assert len(rows) == 4 + fillers
    stored = await pool.fetchval(
        """SELECT count(*) FROM events e
           JOIN sessions s ON s.id = e.session_id AND s.created_month = e.session_month AND s.site_id = e.site_id"""
    )
    assert stored == 3 + 2 * (3 + fillers)


@pytest.fixture
async def one_connection(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of one connection: the plans a test's batches use, and the statistics it reads,
    are that connection's."""
    own = await create_pool(db_url, min_size=1, max_size=1)
    try:
        yield own
    finally:
        await close_pool(own)


async def _counter(conn: asyncpg.Connection, query: str) -> int:
    """A statistics counter, with this backend's own counters sent first."""
    # a backend sends its table counters at most once a second; this makes it send them as
    # soon as this statement ends, before its answer (the read after it sees them)
    await conn.execute("SELECT pg_stat_force_next_flush()")
    async with conn.transaction():  # one snapshot of the statistics for the read
        return int(await conn.fetchval(query))


async def _sessions_seq_scans(conn: asyncpg.Connection) -> int:
    return await _counter(
        conn, "SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_user_tables WHERE relname LIKE 'sessions%'"
    )


async def test_a_connection_that_plans_on_a_small_month_still_finds_sessions_by_index(
    pool: asyncpg.Pool, one_connection: asyncpg.Pool, make_site: Any
) -> None:
    # ingest_batch() keeps one plan per statement for a connection's life. A connection that
    # first called it while the month's sessions were a few dozen rows, never analysed, got a
    # sequential scan of the month's sessions for the look-up of a large batch's session ids
    # and kept it until autovacuum analysed the table: every batch read the whole month
    # (migration 0017 rules that out).
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    sids = [str(uuid.uuid4()) for _ in range(64)]
    for k in range(0, 64, 8):  # the month's first sessions, a few small batches (not analysed yet)
        await IngestStore(pool).ingest([wire(site, now, sid=s) for s in sids[k : k + 8]])
    own = one_connection
    store = IngestStore(own)
    async with own.acquire() as conn:
        before = await _sessions_seq_scans(conn)
    for k in range(3):  # the first call makes the plans; the later ones use them
        batch = [wire(site, now, sid=s) for s in sids[k * 12 : k * 12 + 40]]
        assert {r.status for r in await store.ingest(batch)} == {"accepted"}
    async with own.acquire() as conn:
        after = await _sessions_seq_scans(conn)
    assert after - before == 0, "the month's sessions were read whole instead of by their ids"
    # the events went to the sessions that were there
    assert await pool.fetchval("SELECT count(*) FROM sessions") == 64
    assert await pool.fetchval("SELECT sum(event_count) FROM sessions") == 64 + 120


async def _pkey_reads(conn: asyncpg.Connection) -> int:
    """Index scans of the sessions' primary keys so far."""
    return await _counter(
        conn,
        "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes "
        "WHERE relname LIKE 'sessions%' AND indexrelname LIKE '%pkey'",
    )


async def test_a_session_the_partition_wrote_is_not_looked_up_again(
    pool: asyncpg.Pool, one_connection: asyncpg.Pool, make_site: Any
) -> None:
    # SPEC.md §3 step 4: a session is found in the partition's cache, else in PostgreSQL. The
    # store remembers the month of each session a committed batch wrote and sends it as a hint
    # (migration 0018): the session's next batch skips its look-up.
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    sids = [str(uuid.uuid4()) for _ in range(40)]
    own = one_connection
    remembering = IngestStore(own)
    await remembering.ingest([wire(site, now, sid=s) for s in sids])
    assert remembering.hint_report()[0] == 40

    async def reads(store: IngestStore) -> int:
        async with own.acquire() as conn:
            before = await _pkey_reads(conn)
        assert {r.status for r in await store.ingest([wire(site, now, sid=s) for s in sids])} == {"accepted"}
        async with own.acquire() as conn:
            return await _pkey_reads(conn) - before

    hinted = await reads(remembering)
    unhinted = await reads(IngestStore(own))  # a restarted partition: no hints, same sessions
    assert hinted < unhinted, (hinted, unhinted)
    rows = await pool.fetch("SELECT event_count, created_month FROM sessions")
    assert len(rows) == 40 and {(r["event_count"], r["created_month"]) for r in rows} == {(3, month_of(now))}


def month_of(at: dt.datetime) -> dt.date:
    return at.date().replace(day=1)


async def test_a_hinted_session_that_is_gone_is_created_again(pool: asyncpg.Pool, make_site: Any) -> None:
    # The hint of a session erased or past retention since the partition wrote it must not
    # bring back a row dated to its month's start: the batch fails unwritten and runs again
    # without hints, so the session is new again, as if never seen.
    site = await make_site()
    clock = Clock(dt.datetime(2026, 4, 10, 9, 0, tzinfo=dt.UTC))
    store = IngestStore(pool, clock=clock)
    sid, other = str(uuid.uuid4()), str(uuid.uuid4())
    await store.ingest([wire(site, clock.now, sid=sid), wire(site, clock.now, sid=other)])
    assert store.hint_report()[0] == 2
    await pool.execute("DELETE FROM sessions WHERE id = $1", uuid.UUID(sid))  # as erase and retention do

    later = clock.now = dt.datetime(2026, 4, 10, 9, 5, tzinfo=dt.UTC)
    results = await store.ingest([wire(site, later, sid=sid), wire(site, later, sid=other)])
    assert [r.status for r in results] == ["accepted", "accepted"]
    assert store.stats["retried_batches"] == 1
    gone = await pool.fetchrow("SELECT * FROM sessions WHERE id = $1", uuid.UUID(sid))
    # created anew by this batch: the server's time of it (not its month's start), a real
    # visit count (the fingerprint's other session), one event
    assert gone["created_at"] == later
    assert gone["previous_visit_count"] == 1 and gone["event_count"] == 1
    kept = await pool.fetchrow("SELECT * FROM sessions WHERE id = $1", uuid.UUID(other))
    assert kept["event_count"] == 2
    assert await pool.fetchval("SELECT min(previous_visit_count) FROM sessions") >= 0
    # the next batch is hinted again (learned from the retry) and needs no retry
    await store.ingest([wire(site, later, sid=sid)])
    assert store.stats["retried_batches"] == 1
    assert await pool.fetchval("SELECT event_count FROM sessions WHERE id = $1", uuid.UUID(sid)) == 2


async def test_ingest_batch_refuses_a_hint_for_a_session_that_is_not_there(pool: asyncpg.Pool, make_site: Any) -> None:
    # the check in ingest_batch() itself, whatever the partition sends: nothing is written
    from opsmantik_stream.ingest.store import prepare
    from opsmantik_stream.queries import Q

    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    row = prepare(wire(site, now), 1, now.date())
    row.hint = month_of(now)
    with pytest.raises(asyncpg.exceptions.SerializationError):
        await pool.fetchrow(
            Q.ingest.ingest_batch, now, [uuid.UUID(site["site_id"])], False, [msgspec.structs.astuple(row)]
        )
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == 0
    assert await pool.fetchval("SELECT count(*) FROM sessions") == 0


@pytest.mark.parametrize("hinted", [False, True], ids=["looked up", "hinted"])
async def test_a_session_with_several_events_in_one_batch_takes_them_in_order(
    pool: asyncpg.Pool, make_site: Any, hinted: bool
) -> None:
    # ingest_batch() applies the k-th written event of each session in its k-th upsert
    # (migration 0021: numbered by the partition's `nth` when every session id is there once,
    # else by ingest_batch itself); a duplicate among them writes nothing and moves no round.
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    store = IngestStore(pool)
    sid, other = str(uuid.uuid4()), str(uuid.uuid4())
    first = wire(site, now, sid=sid, url="https://shop.example.com/1")
    await store.ingest([first])
    writer = store if hinted else IngestStore(pool)
    pages = ["https://shop.example.com/2", "https://shop.example.com/3", "https://shop.example.com/4"]
    batch = [
        wire(site, now, sid=sid, url=pages[0]),
        wire(site, now, sid=other),
        first,  # sent again: a duplicate
        wire(site, now, sid=sid, url=pages[1]),
        wire(site, now, sid=sid, url=pages[2]),
    ]
    results = await writer.ingest(batch)
    assert [r.status for r in results] == ["accepted", "accepted", "duplicate", "accepted", "accepted"]
    assert writer.stats["retried_batches"] == 0
    row = await pool.fetchrow("SELECT event_count, entry_page, exit_page FROM sessions WHERE id = $1", uuid.UUID(sid))
    assert tuple(row) == (4, "https://shop.example.com/1", pages[2])
    assert await pool.fetchval("SELECT event_count FROM sessions WHERE id = $1", uuid.UUID(other)) == 1
    urls = await pool.fetch("SELECT url FROM events WHERE session_id = $1 ORDER BY url", uuid.UUID(sid))
    assert [r["url"] for r in urls] == ["https://shop.example.com/1", *pages]


async def test_ingest_batch_numbers_rounds_and_ranks_itself_without_the_partitions(
    pool: asyncpg.Pool, make_site: Any
) -> None:
    # A batch whose events carry no `nth` (or a wrong one) still gets each session's events
    # one round each: ingest_batch only trusts an `nth` of 1 for the first of its session id.
    # And without `srank` it ranks each site's billable events itself: the quota stays exact.
    from opsmantik_stream.ingest.store import prepare
    from opsmantik_stream.queries import Q

    site = await make_site(monthly_limit=4)
    now = dt.datetime.now(dt.UTC)
    sid = str(uuid.uuid4())
    statuses = []
    for nths in ([None, None, None], [1, 2, 7]):
        rows = [prepare(wire(site, now, sid=sid), k + 1, now.date()) for k in range(3)]
        for row, n in zip(rows, nths, strict=True):
            row.nth = n
        assert all(row.srank is None for row in rows)
        record = await pool.fetchrow(
            Q.ingest.ingest_batch, now, [uuid.UUID(site["site_id"])], False, [msgspec.structs.astuple(r) for r in rows]
        )
        statuses.append(record["status"])
    assert statuses == ["aaa", "arr"]
    assert await pool.fetchval("SELECT event_count FROM sessions WHERE id = $1", uuid.UUID(sid)) == 4
    assert await pool.fetchval("SELECT count(*) FROM events") == 4
    usage = await pool.fetchrow("SELECT event_count, rejected_count FROM site_usage_monthly")
    assert tuple(usage) == (4, 2)


async def test_the_store_ranks_each_sites_billable_events(pool: asyncpg.Pool, make_site: Any) -> None:
    # `srank` (migration 0021): the n-th billable event of its site in the batch, whatever
    # other sites and non-billable events come between; the quota of each site follows it
    a = await make_site(monthly_limit=2)
    b = await make_site(monthly_limit=3)
    now = dt.datetime.now(dt.UTC)
    sent: list[BatchEvent] = []

    class Recording(IngestStore):
        async def _batch(self, rows: list[BatchEvent], now: dt.datetime, deadline: float | None) -> list[WireResult]:
            out = await super()._batch(rows, now, deadline)
            sent.extend(rows)
            return out

    store = Recording(pool)
    scroll = {"ec": "interaction", "ea": "scroll_depth"}  # not billable
    batch = [wire(a, now), wire(b, now), wire(a, now, **scroll), wire(a, now), wire(b, now), wire(a, now)]
    results = await store.ingest(batch)
    assert [r.srank for r in sent] == [1, 1, None, 2, 2, 3]
    assert [r.status for r in results] == ["accepted", "accepted", "accepted", "accepted", "accepted", "rejected_quota"]
    assert [r.quota_remaining for r in results] == [1, 2, None, 0, 1, 0]


async def test_a_hint_older_than_last_month_is_not_used(pool: asyncpg.Pool, make_site: Any) -> None:
    # a session is looked for in this and last month only: two months on, the same session id
    # starts a new session, hinted or not
    site = await make_site()
    clock = Clock(dt.datetime(2026, 1, 20, 12, 0, tzinfo=dt.UTC))
    store = IngestStore(pool, clock=clock)
    sid = str(uuid.uuid4())
    await store.ingest([wire(site, clock.now, sid=sid)])
    clock.now = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
    [r] = await store.ingest([wire(site, clock.now, sid=sid)])
    assert r.status == "accepted" and store.stats["retried_batches"] == 0
    rows = await pool.fetch("SELECT created_month, event_count FROM sessions ORDER BY created_month")
    assert [tuple(x) for x in rows] == [(dt.date(2026, 1, 1), 1), (dt.date(2026, 3, 1), 1)]


async def test_session_hints_hold_their_bound(
    pool: asyncpg.Pool, make_site: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opsmantik_stream.ingest import store as store_module

    monkeypatch.setattr(store_module, "SESSION_HINT_MEMO_SIZE", 8)
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    store = IngestStore(pool)
    sids = [str(uuid.uuid4()) for _ in range(24)]
    for k in range(0, 24, 6):
        await store.ingest([wire(site, now, sid=s) for s in sids[k : k + 6]])
    assert store.hint_report() == (8, 8)
    # the most recently written are the ones kept
    assert {sid for _, sid in store._hints} == set(sids[-8:])


async def test_a_batch_reads_only_its_own_sites_usage(
    pool: asyncpg.Pool, one_connection: asyncpg.Pool, make_site: Any
) -> None:
    # the month's usage row of every site is read for update by key; a batch of one site must
    # not read the usage rows of the installation's other sites (one row per site per batch)
    sites = [await make_site() for _ in range(30)]
    now = dt.datetime.now(dt.UTC)
    store = IngestStore(pool)
    for site in sites:
        await store.ingest([wire(site, now)])

    async def usage_rows_read() -> int:
        async with pool.acquire() as conn:
            return await _counter(
                conn,
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
                "FROM pg_stat_user_tables WHERE relname = 'site_usage_monthly'",
            )

    # one connection for the batches: its counters are flushed on it after each
    own = one_connection
    writer = IngestStore(own)
    await writer.ingest([wire(sites[0], now)])  # plans made
    async with own.acquire() as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")
    before = await usage_rows_read()
    await writer.ingest([wire(sites[0], now) for _ in range(3)])
    async with own.acquire() as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")
    read = await usage_rows_read() - before
    assert read <= 6, f"a one-site batch read {read} usage rows"
