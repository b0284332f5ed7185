"""Consent: the signed ``POST /api/consent`` endpoint, the consent history, and the rule that
withdrawing ``marketing`` voids a session's pending conversions and keeps new ones out —
through the endpoint, through ingest, and against a sale confirmed at the same moment."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.ingest_support import event, post
from tests.integration._leads_support import auth, make_session, signed_headers

pytestmark = pytest.mark.integration


def _body(site: dict[str, Any], kind: str, value: str, scopes: list[str], **extra: Any) -> bytes:
    data = {"site_id": site["public_id"], "identifier_type": kind, "identifier_value": value, "scopes": scopes}
    return json.dumps({**data, **extra}).encode()


async def _consent(client: httpx.AsyncClient, site: dict[str, Any], body: bytes, **kw: Any) -> httpx.Response:
    return await client.post("/api/consent", content=body, headers=signed_headers(site, body, **kw))


async def _queue_row(
    pool: asyncpg.Pool, site: dict[str, Any], session: dict[str, Any] | None, status: str = "QUEUED"
) -> uuid.UUID:
    claimed = status == "PROCESSING"
    return uuid.UUID(
        str(
            await pool.fetchval(
                """INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, session_id,
                       order_id, gclid, conversion_time, value_minor, currency, status, claimed_by, claimed_at,
                       uploaded_at)
                   VALUES ($1, 'google_ads', 'sale', gen_random_uuid(), $2, 'om_' || md5(random()::text), 'g',
                           now(), 100, 'TRY', $3, $4, $5, $6)
                   RETURNING id""",
                uuid.UUID(site["site_id"]),
                uuid.UUID(session["id"]) if session else None,
                status,
                "uploader-1" if claimed else None,
                dt.datetime.now(dt.UTC) if claimed else None,
                dt.datetime.now(dt.UTC) if status == "COMPLETED" else None,
            )
        )
    )


async def _status(pool: asyncpg.Pool, row: uuid.UUID) -> tuple[str, str | None]:
    r = await pool.fetchrow("SELECT status, error_code FROM offline_conversion_queue WHERE id = $1", row)
    return r["status"], r["error_code"]


async def test_consent_endpoint_is_signed_like_call_events(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any
) -> None:
    site, other = await make_site(), await make_site()
    session = await make_session(pool, site["site_id"], fingerprint="fp-1")
    body = _body(site, "session_id", session["id"], ["analytics"])
    good = signed_headers(site, body)
    attempts = [
        {**good, "X-Ops-Signature": "0" * 64},
        {**good, "X-Ops-Ts": str(int(time.time()) - 301)},
        signed_headers(site, body, ts=int(time.time()) - 301),
        signed_headers(site, body, ts=int(time.time()) + 120),
        signed_headers(site, body, secret=other["secret"]),
        {**signed_headers(other, body), "X-Ops-Site-Id": other["public_id"]},  # body names another site
        {k: v for k, v in good.items() if k != "X-Ops-Signature"},
        {**good, "X-Ops-Site-Id": "f" * 32},
        {**good, "X-Ops-Site-Id": "not-a-site"},
    ]
    bodies = set()
    for headers in attempts:
        r = await client.post("/api/consent", content=body, headers=headers)
        assert r.status_code == 401, headers
        bodies.add(r.content)
    assert len(bodies) == 1  # one body for every failure
    assert await pool.fetchval("SELECT consent_scopes FROM sessions") == ["analytics", "marketing"]
    assert await pool.fetchval("SELECT count(*) FROM consent_changes") == 0

    # the next secret works too (rotation)
    next_secret = "n" * 64
    await pool.execute(
        "UPDATE private.site_secrets SET next_secret = $2 WHERE site_id = $1", uuid.UUID(site["site_id"]), next_secret
    )
    r = await _consent(client, site, body, secret=next_secret)
    assert r.status_code == 200, r.text
    assert r.json()["scopes"] == ["analytics"]


async def test_consent_updates_sessions_and_records_history(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any
) -> None:
    site, other = await make_site(), await make_site()
    old = await make_session(
        pool, site["site_id"], fingerprint="fp-7", created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    )
    new = await make_session(pool, site["site_id"], fingerprint="fp-7")
    bystander = await make_session(pool, site["site_id"], fingerprint="fp-8")
    foreign = await make_session(pool, other["site_id"], fingerprint="fp-7")
    decided = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    r = await _consent(client, site, _body(site, "fingerprint", "fp-7", ["Analytics"], consent_at=decided.isoformat()))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "ok": True,
        "matched_sessions": 2,
        "updated_sessions": 2,
        "scopes": ["analytics"],
        "consent_at": decided.isoformat(),
    }
    scopes = {str(r["id"]): r["consent_scopes"] for r in await pool.fetch("SELECT id, consent_scopes FROM sessions")}
    assert scopes[old["id"]] == scopes[new["id"]] == ["analytics"]
    assert scopes[bystander["id"]] == scopes[foreign["id"]] == ["analytics", "marketing"]
    history = await pool.fetch("SELECT * FROM consent_changes ORDER BY id")
    assert {str(h["session_id"]) for h in history} == {old["id"], new["id"]}
    assert {(tuple(h["previous_scopes"]), tuple(h["scopes"]), h["source"]) for h in history} == {
        (("analytics", "marketing"), ("analytics",), "api")
    }
    assert history[0]["consent_at"] == decided

    # an older decision (a delayed or replayed request) changes nothing and says what is recorded
    earlier = decided - dt.timedelta(hours=1)
    body = _body(site, "session_id", new["id"], ["analytics", "marketing"], consent_at=earlier.isoformat())
    r = await _consent(client, site, body)
    assert r.status_code == 200
    assert (r.json()["updated_sessions"], r.json()["scopes"]) == (0, ["analytics"])
    # the same decision again is idempotent: no new history row
    r = await _consent(client, site, _body(site, "fingerprint", "fp-7", ["analytics"], consent_at=decided.isoformat()))
    assert r.json()["scopes"] == ["analytics"]
    assert await pool.fetchval("SELECT count(*) FROM consent_changes") == 2
    # no session of that fingerprint: nothing recorded, nothing failed
    r = await _consent(client, site, _body(site, "fingerprint", "fp-none", ["analytics"]))
    assert r.status_code == 200 and r.json()["matched_sessions"] == 0

    before = await pool.fetch("SELECT id, consent_scopes, consent_updated_at FROM sessions ORDER BY id")
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    # a body that does not fit the schema is 422 validation_error, as on every signed and
    # operator route (docs/reliability.md)
    for bad, status, code in (
        (_body(site, "fingerprint", "fp-7", ["analytics", "ads"]), 400, "invalid_scope"),
        (_body(site, "fingerprint", "fp-7", [], consent_at=future), 400, "invalid_consent_at"),
        (_body(site, "phone", "+905321234567", []), 422, "validation_error"),
        (_body(site, "fingerprint", "fp-7", [], extra_field=1), 422, "validation_error"),
        (b"{", 400, "invalid_json"),
    ):
        r = await _consent(client, site, bad)
        assert (r.status_code, r.json()["error"]) == (status, code), (bad, r.text)
    assert await pool.fetch("SELECT id, consent_scopes, consent_updated_at FROM sessions ORDER BY id") == before


async def test_withdrawing_marketing_voids_pending_conversions(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    session = await make_session(pool, site["site_id"], fingerprint="fp-w")
    other = await make_session(pool, site["site_id"], fingerprint="fp-w2")
    queued = await _queue_row(pool, site, session, "QUEUED")
    blocked = await _queue_row(pool, site, session, "BLOCKED")
    done = await _queue_row(pool, site, session, "COMPLETED")
    failed = await _queue_row(pool, site, session, "FAILED")
    unrelated = await _queue_row(pool, site, other, "QUEUED")
    second = await make_session(pool, site["site_id"], fingerprint="fp-w")
    in_flight = await _queue_row(pool, site, second, "PROCESSING")

    r = await _consent(client, site, _body(site, "fingerprint", "fp-w", ["analytics"]))
    assert r.status_code == 200 and r.json()["updated_sessions"] == 2
    assert await _status(pool, queued) == ("FAILED", "consent_withdrawn")
    assert await _status(pool, blocked) == ("FAILED", "consent_withdrawn")
    assert await _status(pool, in_flight) == ("FAILED", "consent_withdrawn")
    assert await _status(pool, done) == ("COMPLETED", None)
    assert await _status(pool, failed) == ("FAILED", None)
    assert await _status(pool, unrelated) == ("QUEUED", None)
    audit = await pool.fetch("SELECT resource_id, payload FROM audit_log WHERE action = 'conversion.void'")
    assert {a["resource_id"] for a in audit} == {str(queued), str(blocked), str(in_flight)}
    assert {a["payload"]["reason"] for a in audit} == {"consent_withdrawn"}
    assert {a["payload"]["previous_status"] for a in audit} == {"QUEUED", "BLOCKED", "PROCESSING"}

    # the uploader that held the in-flight row finds nothing to finish (guarded transition)
    finished = await pool.execute(
        "UPDATE offline_conversion_queue SET status = 'COMPLETED', uploaded_at = now() "
        "WHERE id = $1 AND status = 'PROCESSING' AND claimed_by = 'uploader-1'",
        in_flight,
    )
    assert finished == "UPDATE 0"
    # nothing new is enqueued: a sale confirmed now is not queued and the answer says why
    token = await make_token(site["public_id"], "operator")
    conv = await client.post(
        "/api/conversations", json={"site": site["public_id"], "primary_session_id": session["id"]}, headers=auth(token)
    )
    sale = await client.post(
        "/api/sales",
        json={
            "site": site["public_id"],
            "occurred_at": "2026-03-05T14:30:00+00:00",
            "amount_minor": 900,
            "conversation_id": conv.json()["conversation"]["id"],
        },
        headers=auth(token),
    )
    r = await client.post(f"/api/sales/{sale.json()['sale']['id']}/confirm", headers=auth(token))
    assert (r.json()["enqueued"], r.json()["reason"]) == (False, "no_marketing_consent")
    # a voided row is final: neither a requeue nor a later consent brings it back
    await pool.execute("UPDATE offline_conversion_queue SET status = 'QUEUED' WHERE id = $1", queued)
    assert await _status(pool, queued) == ("FAILED", "consent_withdrawn")
    r = await _consent(client, site, _body(site, "fingerprint", "fp-w", ["analytics", "marketing"]))
    assert r.json()["scopes"] == ["analytics", "marketing"]
    assert await _status(pool, queued) == ("FAILED", "consent_withdrawn")
    # a row inserted without marketing consent on its session is refused by the schema
    await pool.execute("UPDATE sessions SET consent_scopes = '{analytics}' WHERE id = $1", uuid.UUID(other["id"]))
    assert await _status(pool, unrelated) == ("FAILED", "consent_withdrawn")
    before = await pool.fetchval("SELECT count(*) FROM offline_conversion_queue")
    await pool.execute(
        "INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, session_id, order_id, "
        "gclid, conversion_time, value_minor, currency) "
        "VALUES ($1, 'google_ads', 'sale', gen_random_uuid(), $2, 'om_x', 'g', now(), 1, 'TRY')",
        uuid.UUID(site["site_id"]),
        uuid.UUID(other["id"]),
    )
    assert await pool.fetchval("SELECT count(*) FROM offline_conversion_queue") == before


async def _wait_for_lock(pool: asyncpg.Pool, pid: int) -> None:
    """Until backend ``pid`` waits on a lock (no sleeping on a timer: polls the server's view)."""
    for _ in range(600):
        waiting = await pool.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid)
        if waiting:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the second transaction never waited for the first")


_INSERT = (
    "INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, session_id, order_id, "
    "gclid, conversion_time, value_minor, currency) "
    "VALUES ($1, 'google_ads', 'sale', gen_random_uuid(), $2, 'om_race', 'g', now(), 1, 'TRY') RETURNING id"
)


async def test_a_conversion_racing_a_withdrawal_never_stays_pending(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    site_id = uuid.UUID(site["site_id"])
    # 1. the withdrawal commits while the enqueue waits: the enqueue sees it and inserts nothing
    session = await make_session(pool, site["site_id"])
    async with pool.acquire() as withdraw, pool.acquire() as enqueue:
        tx = withdraw.transaction()
        await tx.start()
        await withdraw.execute(
            "UPDATE sessions SET consent_scopes = '{analytics}' WHERE id = $1", uuid.UUID(session["id"])
        )
        pending = asyncio.ensure_future(enqueue.fetchval(_INSERT, site_id, uuid.UUID(session["id"])))
        await _wait_for_lock(pool, enqueue.get_server_pid())
        await tx.commit()
        assert await pending is None
    assert await pool.fetchval("SELECT count(*) FROM offline_conversion_queue") == 0

    # 2. the enqueue commits while the withdrawal waits: the withdrawal then voids the new row
    session = await make_session(pool, site["site_id"])
    async with pool.acquire() as withdraw, pool.acquire() as enqueue:
        tx = enqueue.transaction()
        await tx.start()
        row = await enqueue.fetchval(_INSERT, site_id, uuid.UUID(session["id"]))
        assert row is not None
        update = asyncio.ensure_future(
            withdraw.execute(
                "UPDATE sessions SET consent_scopes = '{analytics}' WHERE id = $1", uuid.UUID(session["id"])
            )
        )
        await _wait_for_lock(pool, withdraw.get_server_pid())
        await tx.commit()
        await update
    assert await _status(pool, row) == ("FAILED", "consent_withdrawn")


async def test_consent_changes_through_ingest(
    stack_client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any
) -> None:
    """The tracker's path: an event whose scopes drop marketing withdraws it (the trigger voids
    the session's pending conversion), and a system/consent event raising the scopes records
    the new scopes."""
    site = await make_site(origins=["https://shop.example.com"])
    sid = str(uuid.uuid4())
    r = await post(stack_client, event(site, sid=sid))
    assert r.status_code == 202, r.text
    row = await _queue_row(pool, site, {"id": sid})
    r = await post(stack_client, event(site, sid=sid, ec="system", ea="consent", consent=["analytics"]))
    assert r.status_code == 202, r.text
    assert await pool.fetchval("SELECT consent_scopes FROM sessions WHERE id = $1", uuid.UUID(sid)) == ["analytics"]
    assert await _status(pool, row) == ("FAILED", "consent_withdrawn")
    history = await pool.fetchrow("SELECT * FROM consent_changes WHERE session_id = $1", uuid.UUID(sid))
    assert (history["previous_scopes"], history["scopes"], history["source"]) == (
        ["analytics", "marketing"],
        ["analytics"],
        "ingest",
    )
    r = await post(stack_client, event(site, sid=sid, ec="system", ea="consent", consent=["analytics", "marketing"]))
    assert r.status_code == 202
    assert await pool.fetchval("SELECT consent_scopes FROM sessions WHERE id = $1", uuid.UUID(sid)) == [
        "analytics",
        "marketing",
    ]


async def test_tracker_withdrawal_of_analytics_is_recorded(
    stack_client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any
) -> None:
    """Needs the ingest side of the consent contract (gateway/routes/ingest.py and the
    partition store): a system/consent event passes the consent gate without analytics and
    sets the session's scopes to exactly its own."""
    site = await make_site(origins=["https://shop.example.com"])
    sid = str(uuid.uuid4())
    assert (await post(stack_client, event(site, sid=sid))).status_code == 202
    row = await _queue_row(pool, site, {"id": sid})
    r = await post(stack_client, event(site, sid=sid, ec="system", ea="consent", consent=[]))
    assert r.status_code in (200, 202), r.text
    assert await pool.fetchval("SELECT consent_scopes FROM sessions WHERE id = $1", uuid.UUID(sid)) == []
    assert await _status(pool, row) == ("FAILED", "consent_withdrawn")
    # from now on nothing of that session is stored: a plain event without analytics is refused
    r = await post(stack_client, event(site, sid=sid, consent=[]))
    assert r.status_code == 204


async def test_a_plain_event_cannot_raise_consent(
    stack_client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any
) -> None:
    """Needs the ingest side of the consent contract: events other than system/consent only
    narrow a session's scopes (stored ∩ event), so a crafted body cannot grant marketing."""
    site = await make_site(origins=["https://shop.example.com"])
    sid = str(uuid.uuid4())
    assert (await post(stack_client, event(site, sid=sid, consent=["analytics"]))).status_code == 202
    r = await post(stack_client, event(site, sid=sid, consent=["analytics", "marketing"]))
    assert r.status_code == 202
    assert await pool.fetchval("SELECT consent_scopes FROM sessions WHERE id = $1", uuid.UUID(sid)) == ["analytics"]
