"""POST /api/call-event through the gateway and the site's partition actor (real Ray)."""

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

from gateway.limits import KeyedLimit
from opsmantik_stream import tenancy
from tests.integration._leads_support import call_body, make_event, make_session, signed_headers

pytestmark = pytest.mark.integration


async def _calls(pool: asyncpg.Pool, site: dict[str, Any]) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM calls WHERE site_id = $1", uuid.UUID(site["site_id"]))


def _ctx(client: httpx.AsyncClient) -> Any:
    return client._transport.app.state.ctx  # type: ignore[attr-defined]


async def test_match_score_replay_and_concurrent_copies(
    stack_client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any
) -> None:
    site = await make_site()
    session = await make_session(pool, site["site_id"], fingerprint="fp-1")
    await make_event(pool, site["site_id"], session, "conversion", score=30)
    await make_event(pool, site["site_id"], session, "interaction", score=10)
    await make_event(pool, site["site_id"], session, "interaction", score=0)

    event_id = str(uuid.uuid4())
    body = call_body(site, "fp-1", event_id=event_id)
    resp = await stack_client.post("/api/call-event", content=body, headers=signed_headers(site, body))
    assert resp.status_code == 200, resp.text
    first = resp.json()
    assert first["status"] == "matched"
    assert first["session_id"] == session["id"]
    # min(100, 20*1 + 5*2 + 30)
    assert first["lead_score"] == 60

    # the same event id re-signed later (new ts, new signature) is a replay
    again = await stack_client.post(
        "/api/call-event", content=body, headers=signed_headers(site, body, ts=int(time.time()) - 5)
    )
    assert again.status_code == 200
    assert again.json()["status"] == "noop"
    assert again.json()["call_id"] == first["call_id"]

    rows = await _calls(pool, site)
    assert len(rows) == 1
    row = rows[0]
    assert row["source"] == "call_event" and row["status"] == "intent"
    assert row["intent_action"] == "phone" and row["intent_target"] == "tel:+905551112233"
    assert row["click_id"] == "gclid-TEST-1" and row["click_id_type"] == "gclid"
    assert row["score_breakdown"]["raw_score"] == 60

    # five concurrent identical signed requests without an event id: one call
    body2 = call_body(site, "fp-1", phone_number="https://wa.me/905550000000")
    headers = signed_headers(site, body2)
    answers = await asyncio.gather(
        *[stack_client.post("/api/call-event", content=body2, headers=headers) for _ in range(5)]
    )
    assert [a.status_code for a in answers] == [200] * 5
    ids = {a.json()["call_id"] for a in answers}
    assert len(ids) == 1
    assert sorted(a.json()["status"] for a in answers).count("matched") <= 1
    rows = await _calls(pool, site)
    assert len(rows) == 2
    wa = next(r for r in rows if str(r["id"]) in ids)
    assert wa["intent_action"] == "whatsapp" and wa["intent_target"] == "wa:+905550000000"


async def test_matching_never_crosses_sites_and_consent_is_required(
    stack_client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any
) -> None:
    site_a, site_b = await make_site(), await make_site()
    # the fingerprint is only known on site B
    await make_session(pool, site_b["site_id"], fingerprint="shared-fp")
    body = call_body(site_a, "shared-fp", event_id=str(uuid.uuid4()))
    resp = await stack_client.post("/api/call-event", content=body, headers=signed_headers(site_a, body))
    assert resp.status_code == 204
    assert await _calls(pool, site_a) == []
    assert await _calls(pool, site_b) == []

    # both sites know it: A's call matches A's session, never B's newer one
    a_session = await make_session(
        pool,
        site_a["site_id"],
        fingerprint="shared-fp",
        created_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5),
    )
    resp = await stack_client.post("/api/call-event", content=body, headers=signed_headers(site_a, body))
    assert resp.status_code == 200
    assert resp.json()["session_id"] == a_session["id"]

    # a session without analytics consent: 204 and nothing stored
    await make_session(pool, site_b["site_id"], fingerprint="no-consent", consent=())
    body_b = call_body(site_b, "no-consent")
    resp = await stack_client.post("/api/call-event", content=body_b, headers=signed_headers(site_b, body_b))
    assert resp.status_code == 204
    assert await _calls(pool, site_b) == []

    # a session active longer ago than the window does not match
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=45)
    await make_session(pool, site_b["site_id"], fingerprint="stale-fp", created_at=old)
    body_s = call_body(site_b, "stale-fp")
    resp = await stack_client.post("/api/call-event", content=body_s, headers=signed_headers(site_b, body_s))
    assert resp.status_code == 204

    # a session that began well after the call is matched but marked suspicious
    future = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    await make_session(pool, site_b["site_id"], fingerprint="late-fp", created_at=future)
    body_l = call_body(site_b, "late-fp")
    resp = await stack_client.post("/api/call-event", content=body_l, headers=signed_headers(site_b, body_l))
    assert resp.status_code == 200
    assert resp.json()["call_status"] == "suspicious"


async def test_auth_failures_share_one_401_and_store_nothing(
    stack_client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any
) -> None:
    site, other = await make_site(), await make_site()
    await make_session(pool, site["site_id"], fingerprint="fp")
    fixed_now = int(time.time())
    _ctx(stack_client).clock = lambda: float(fixed_now)
    body = call_body(site, "fp")

    def with_headers(**over: str) -> dict[str, str]:
        return {**signed_headers(site, body, ts=fixed_now), **over}

    bad_requests = [
        with_headers(**{"X-Ops-Signature": "0" * 64}),  # wrong signature
        signed_headers(site, body, ts=fixed_now - 301),  # one second too old
        signed_headers(site, body, ts=fixed_now + 61),  # one second too far ahead
        signed_headers(site, body, secret="not-the-secret", ts=fixed_now),
        with_headers(**{"X-Ops-Site-Id": other["public_id"]}),  # header names another site
        with_headers(**{"X-Ops-Site-Id": "f" * 32}),  # unknown site
        with_headers(**{"X-Ops-Ts": "yesterday"}),
        {"Content-Type": "application/json"},  # no headers at all
    ]
    answers = [await stack_client.post("/api/call-event", content=body, headers=h) for h in bad_requests]
    assert [a.status_code for a in answers] == [401] * len(bad_requests)
    assert len({a.content for a in answers}) == 1
    # a body naming another site than the signing one: same 401
    foreign = call_body(other, "fp")
    resp = await stack_client.post("/api/call-event", content=foreign, headers=signed_headers(site, foreign))
    assert resp.status_code == 401 and resp.content == answers[0].content
    assert await _calls(pool, site) == []

    # the window edges are inclusive
    for ts in (fixed_now - 300, fixed_now + 60):
        b = call_body(site, "fp", event_id=str(uuid.uuid4()))
        resp = await stack_client.post("/api/call-event", content=b, headers=signed_headers(site, b, ts=ts))
        assert resp.status_code == 200, (ts, resp.text)
    assert len(await _calls(pool, site)) == 2


async def test_next_secret_rotation_body_rules_and_rate_limits(
    stack_client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any
) -> None:
    site = await make_site()
    await make_session(pool, site["site_id"], fingerprint="fp")
    body = call_body(site, "fp", event_id=str(uuid.uuid4()))
    resp = await stack_client.post(
        "/api/call-event", content=body, headers=signed_headers(site, body, secret=site["secret"])
    )
    assert resp.status_code == 200

    # after a rotation the new current secret and the former one (now next) both pass
    async with pool.acquire() as conn:
        rotated = await tenancy.rotate_secret(conn, site["public_id"])
    assert rotated["next_secret"] == site["secret"]
    for secret in (rotated["secret"], rotated["next_secret"]):
        b = call_body(site, "fp", event_id=str(uuid.uuid4()))
        resp = await stack_client.post("/api/call-event", content=b, headers=signed_headers(site, b, secret=secret))
        assert resp.status_code == 200
    before = len(await _calls(pool, site))
    site = {**site, "secret": rotated["secret"]}

    # strict body: unknown keys, broken JSON, oversize
    bad = json.dumps({"site_id": site["public_id"], "fingerprint": "fp", "consent": ["analytics"]}).encode()
    resp = await stack_client.post("/api/call-event", content=bad, headers=signed_headers(site, bad))
    assert resp.status_code == 422 and resp.json()["error"] == "validation_error"
    broken = b'{"site_id": '
    resp = await stack_client.post("/api/call-event", content=broken, headers=signed_headers(site, broken))
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_json"
    huge = call_body(site, "fp", url="https://x.example/" + "a" * (64 * 1024))
    resp = await stack_client.post("/api/call-event", content=huge, headers=signed_headers(site, huge))
    assert resp.status_code == 413
    assert len(await _calls(pool, site)) == before

    # per-fingerprint limit (a tiny bucket injected for the test)
    _ctx(stack_client).route_limits["call_event_fingerprint_limit"] = KeyedLimit(2)
    codes = []
    for _ in range(3):
        b = call_body(site, "fp", event_id=str(uuid.uuid4()))
        codes.append(await stack_client.post("/api/call-event", content=b, headers=signed_headers(site, b)))
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert codes[2].headers["Retry-After"] and codes[2].json()["error"] == "rate_limited"
    # a replay is answered before the limiter (same call, not a 429)
    replay = codes[0].request
    resp = await stack_client.post("/api/call-event", content=replay.content, headers=dict(replay.headers))
    assert resp.status_code == 200 and resp.json()["status"] == "noop"


async def test_without_actors_answers_503(client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    await make_session(pool, site["site_id"], fingerprint="fp")
    body = call_body(site, "fp")
    resp = await client.post("/api/call-event", content=body, headers=signed_headers(site, body))
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    assert await _calls(pool, site) == []
