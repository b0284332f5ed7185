"""The partition's C row encoder (``_pgrows``, ``use_row_encoder``) on a real PostgreSQL:
PostgreSQL reads exactly the rows asyncpg's own codecs would send, whether the encoder is
given tuples or the ``BatchEvent`` structs themselves, refuses the same bad rows, and a batch
written through it is stored as through asyncpg."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from msgspec.structs import astuple

from opsmantik_stream.ingest import store as store_module
from opsmantik_stream.ingest._pgrows import encode_array
from opsmantik_stream.ingest.schema import MetaIn, WireEvent
from opsmantik_stream.ingest.store import BatchEvent, IngestStore, prepare, use_row_encoder
from opsmantik_stream.queries import Q

pytestmark = pytest.mark.integration

AS_TEXT = "SELECT $1::ingest_batch_event[]::text"


@pytest.fixture
async def conns(db_url: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """(a connection with asyncpg's codecs, one with the C encoder)"""
    plain = await asyncpg.connect(db_url)
    fast = await asyncpg.connect(db_url)
    try:
        assert await use_row_encoder(fast), "the C row encoder was not built or not accepted"
        yield plain, fast
    finally:
        await plain.close()
        await fast.close()


def _event(n: int, **kw: Any) -> WireEvent:
    values: dict[str, Any] = {
        "site_id": str(uuid.uuid4()),
        "received_ms": 1_764_000_000_000 + n,
        "url": f"https://shop.example.com/p/{n}",
        "eid": f"e-{n}",
        "sid": str(uuid.uuid4()),
        "ec": "interaction",
        "ea": "view",
        "el": "Home",
        "consent": ["analytics"],
        "meta": {"fp": f"fp-{n}"},
        "ip": "203.0.113.0",
        "ua": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148",
    }
    values.update(kw)
    values["meta"] = msgspec.convert(values["meta"], MetaIn)
    return WireEvent(**values)


def _rows() -> list[tuple[Any, ...]]:
    """Prepared rows of many shapes (``_structs``) as tuples."""
    return [astuple(row) for row in _structs()]


def _structs() -> list[BatchEvent]:
    """Prepared rows of many shapes: click ids and template keys, an intent, a form with
    numbers, non-ASCII text, a heartbeat, no user agent, and the store's own attributes."""
    events = [
        _event(1),
        _event(2, url="https://shop.example.com/?gclid=Cj0KQ&utm_source=google&utm_medium=cpc&utm_campaign=güz"),
        _event(3, ec="conversion", ea="phone_call", el="tel:0532 123 45 67", ev=1.5),
        _event(4, ec="system", ea="heartbeat", el="session_active", meta={"active_sec": 40, "duration_sec": 61}),
        _event(5, url="https://örnek.example.com/ürün?q=çay,şeker", referrer="https://google.com/?q=é", ua=None),
        _event(6, ea="scroll_depth", ev=95.0, meta={"fp": "fp-6", "scroll_pct": 95, "cta_hovers": 2}),
        _event(7, sid=None, meta={}, ip=None, consent=["analytics", "marketing"]),
    ]
    rows = []
    for i, ev in enumerate(events, 1):
        row = prepare(ev, i, dt.date(2026, 12, 6))
        row.hint = dt.date(2026, 11, 1) if i % 2 else None
        row.nth = i
        row.srank = -i if i == 3 else i
        rows.append(row)
    return rows


async def test_postgresql_reads_the_rows_asyncpg_would_send(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    plain, fast = conns
    rows = _rows()
    sent_plain = await plain.fetchval(AS_TEXT, rows)
    sent_fast = await fast.fetchval(AS_TEXT, rows)
    assert sent_fast == sent_plain
    # and it is not empty: every row, with non-ASCII text and NULLs, arrived
    assert sent_fast.count('"(') == len(rows) and "güz" in sent_fast and ",," in sent_fast
    # a uuid.UUID, an int where a float goes and extreme integers are sent as asyncpg sends them
    row = list(rows[0])
    names = list(BatchEvent.__struct_fields__)
    row[names.index("site")] = uuid.UUID(row[names.index("site")])
    row[names.index("ev")] = 3
    row[names.index("at_ms")] = -(2**63)
    row[names.index("sw")] = 2**31 - 1
    assert await fast.fetchval(AS_TEXT, [tuple(row)]) == await plain.fetchval(AS_TEXT, [tuple(row)])
    assert await fast.fetchval(AS_TEXT, []) == await plain.fetchval(AS_TEXT, []) == "{}"


async def test_structs_are_sent_as_their_tuples(conns: tuple[asyncpg.Connection, asyncpg.Connection]) -> None:
    plain, fast = conns
    structs = _structs()
    sent = await fast.fetchval(AS_TEXT, structs)
    assert sent == await plain.fetchval(AS_TEXT, [astuple(row) for row in structs])
    assert sent.count('"(') == len(structs)
    # one batch may hold both (the encoder decides row by row)
    mixed = [structs[0], astuple(structs[1])]
    assert await fast.fetchval(AS_TEXT, mixed) == await plain.fetchval(AS_TEXT, [astuple(r) for r in structs[:2]])


def test_the_encoder_reads_only_slots_of_exactly_the_given_type() -> None:
    fields = BatchEvent.__struct_fields__
    row = _structs()[0]
    kinds = {bool: 16, int: 20, float: 701, str: 25, dt.date: 1082, type(None): 25}
    oids = tuple(kinds[type(getattr(row, name))] for name in fields)
    assert encode_array([row], 1, oids, BatchEvent, fields) == encode_array([astuple(row)], 1, oids)
    with pytest.raises(TypeError, match="row 1: a BatchEvent or a tuple of 67 values expected"):
        encode_array([row, ("x",) * (len(fields) - 1)], 1, oids, BatchEvent, fields)
    with pytest.raises(TypeError, match="'nope' is not a slot of"):
        encode_array([row], 1, oids, BatchEvent, ("nope", *fields[1:]))
    with pytest.raises(TypeError, match="a tuple of 67 names"):
        encode_array([row], 1, oids, BatchEvent, fields[:-1])
    # a wrong value in a slot is refused as in a tuple, naming the row and the attribute
    row.i = "1"  # type: ignore[assignment]  # (msgspec does not check types on assignment)
    with pytest.raises(TypeError, match="row 0, attribute 1: an int expected"):
        encode_array([row], 1, oids, BatchEvent, fields)


@pytest.mark.parametrize(
    ("field", "value"),
    [("i", "1"), ("billable", 1), ("ver", 40_000), ("site", "not-a-uuid"), ("hint", "2026-12-01"), ("url", b"x")],
)
async def test_a_row_asyncpg_refuses_is_refused_and_nothing_is_sent(
    conns: tuple[asyncpg.Connection, asyncpg.Connection], field: str, value: Any
) -> None:
    plain, fast = conns
    row = list(_rows()[0])
    row[list(BatchEvent.__struct_fields__).index(field)] = value
    for conn in (plain, fast):
        with pytest.raises((asyncpg.DataError, ValueError, TypeError)):
            await conn.fetchval(AS_TEXT, [tuple(row)])
        # the connection is still usable: the bad row never reached the server
        assert await conn.fetchval("SELECT 1") == 1


async def test_a_batch_written_through_the_encoder_is_stored(db_url: str, make_site: Any) -> None:
    site = await make_site()
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1, init=use_row_encoder)
    assert pool is not None
    try:
        store = IngestStore(pool, encoded_rows=True)
        events = [_event(n, site_id=str(site["site_id"]), url=f"https://shop.example.com/ürün/{n}") for n in range(20)]
        results = await store.ingest(events)
        assert [r.status for r in results] == ["accepted"] * 20
        # the same events again are duplicates (the ledger has their keys as sent)
        assert [r.status for r in await store.ingest(events)] == ["duplicate"] * 20
        urls = await pool.fetch("SELECT url FROM events WHERE site_id = $1 ORDER BY created_at, url", site["site_id"])
        assert sorted(u["url"] for u in urls) == sorted(e.url for e in events)
        assert await pool.fetchval("SELECT count(*) FROM sessions WHERE site_id = $1", site["site_id"]) == 20
    finally:
        await pool.close()


def _random_value(rnd: random.Random, oid: int) -> Any:
    if rnd.random() < 0.3:
        return None
    if oid == 16:
        return rnd.random() < 0.5
    if oid == 21:
        return rnd.randint(-32768, 32767)
    if oid == 23:
        return rnd.randint(-(2**31), 2**31 - 1)
    if oid == 20:
        return rnd.randint(-(2**63), 2**63 - 1)
    if oid == 701:
        return rnd.choice([0.0, -0.0, 1e-300, -1e300, rnd.uniform(-1e6, 1e6), rnd.randint(-5, 5)])
    if oid == 1082:
        return dt.date(1, 1, 1) + dt.timedelta(days=rnd.randint(0, 3_650_000))
    if oid == 2950:
        u = uuid.UUID(int=rnd.getrandbits(128))
        return rnd.choice([u, str(u), u.hex, str(u).upper()])
    alphabet = "aZ09 ,(){}\"\\'-|é漢🙂\t\n"
    return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))


async def test_random_rows_read_as_asyncpgs(conns: tuple[asyncpg.Connection, asyncpg.Connection]) -> None:
    """Rows of random values of every attribute type the encoder writes (quotes, commas,
    braces, backslashes, emoji, extreme integers and dates, every UUID spelling asyncpg
    takes) read back in PostgreSQL exactly as asyncpg's rows do."""
    plain, fast = conns
    oids = [int(o) for o in (await plain.fetchrow(Q.ingest.batch_row_type))["attr_oids"]]
    rnd = random.Random(20261206)
    rows = [tuple(_random_value(rnd, oid) for oid in oids) for _ in range(300)]
    assert await fast.fetchval(AS_TEXT, rows) == await plain.fetchval(AS_TEXT, rows)


async def test_a_refused_encoder_gets_tuples(db_url: str, make_site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a connection of the process was refused the encoder (it keeps asyncpg's codecs,
    which take only tuples), a store told its rows are encoded sends tuples: nothing fails."""
    site = await make_site()
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)  # asyncpg's codecs
    assert pool is not None
    monkeypatch.setattr(store_module, "_ROWS_AS_TUPLES", True)
    try:
        store = IngestStore(pool, encoded_rows=True)
        events = [_event(n, site_id=str(site["site_id"])) for n in range(5)]
        assert [r.status for r in await store.ingest(events)] == ["accepted"] * 5
        assert await pool.fetchval("SELECT count(*) FROM events WHERE site_id = $1", site["site_id"]) == 5
    finally:
        await pool.close()
