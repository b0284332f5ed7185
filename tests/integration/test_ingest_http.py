"""``POST /api/sync`` through HTTP on a real stack (gateway in-process, Ray partitions,
PostgreSQL): acknowledged means stored exactly once; every refusal stores nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream.ingest.billing import seconds_to_next_month
from tests.ingest_support import ORIGIN, counts, event, post

pytestmark = pytest.mark.integration


async def test_accept_then_duplicate_stores_once(
    stack_client: httpx.AsyncClient, make_site: Any, pool: asyncpg.Pool
) -> None:
    site = await make_site(origins=[ORIGIN])
    body = event(
        site,
        u=f"{ORIGIN}/landing?gclid=TeSt-GCLID-123&utm_source=google&utm_medium=cpc&utm_campaign=spring",
        sm="1999-01-01",  # a client month is never trusted
        meta={"fp": "fp-a", "lan": "tr-TR", "sw": 390, "sh": 844, "city": "Istanbul"},
    )
    r = await post(stack_client, body)
    assert r.status_code == 202, r.text
    first = r.json()
    assert first["ok"] is True and first["status"] == "accepted" and len(first["ingest_id"]) == 64
    assert r.headers["x-opsmantik-quota-remaining"] == "99999"
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "Origin" in r.headers["vary"]

    again = await post(stack_client, body)
    assert again.status_code == 200
    assert again.json() == {"ok": True, "status": "duplicate", "ingest_id": first["ingest_id"]}
    assert again.headers["x-opsmantik-dedup"] == "1"

    c = await counts(pool)
    assert c["ingest_idempotency"] == 1 and c["events"] == 1 and c["sessions"] == 1
    assert await pool.fetchval("SELECT event_count FROM site_usage_monthly") == 1
    session = await pool.fetchrow("SELECT * FROM sessions")
    now = dt.datetime.now(dt.UTC)
    assert session["id"] == uuid.UUID(body["sid"])
    assert session["created_month"] == now.date().replace(day=1)
    assert session["gclid"] == "TeSt-GCLID-123"
    assert session["attribution_source"] == "First Click (Paid)"
    assert (session["traffic_source"], session["traffic_medium"]) == ("Google Ads", "cpc")
    assert (session["utm_source"], session["utm_campaign"]) == ("google", "spring")
    assert (session["browser_language"], session["screen_width"], session["city"]) == (
        "tr-TR",
        390,
        "Istanbul",
    )
    assert session["device_type"] == "desktop" and session["browser"] == "Chrome"
    assert str(session["ip_address"]).endswith(".0")  # stored truncated
    assert session["consent_scopes"] == ["analytics", "marketing"]
    ledger = await pool.fetchrow("SELECT * FROM ingest_idempotency")
    assert ledger["idempotency_key"] == hashlib.sha256(f"{site['site_id']}|eid|{body['eid']}".encode()).hexdigest()
    assert (ledger["billable"], ledger["billing_state"], ledger["billing_reason"]) == (
        True,
        "ACCEPTED",
        "interaction_view",
    )
    ev = await pool.fetchrow("SELECT * FROM events")
    assert ev["metadata"]["lead_score"] == 10
    assert ev["metadata"]["attribution_source"] == "First Click (Paid)"


async def test_twenty_identical_requests_in_parallel(
    stack_client: httpx.AsyncClient, make_site: Any, pool: asyncpg.Pool
) -> None:
    site = await make_site(origins=[ORIGIN])
    body = event(site, ec="conversion", ea="phone_call", el="tel:+905321234567")
    answers = await asyncio.gather(*(post(stack_client, body) for _ in range(20)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 19 + [202]
    assert all(r.headers.get("x-opsmantik-dedup") == "1" for r in answers if r.status_code == 200)
    assert len({r.json()["ingest_id"] for r in answers}) == 1
    c = await counts(pool)
    assert (c["ingest_idempotency"], c["events"], c["calls"]) == (1, 1, 1)
    assert await pool.fetchval("SELECT event_count FROM site_usage_monthly") == 1
    assert await pool.fetchval("SELECT intent_phone_clicks FROM calls") == 1


async def test_batch_with_mixed_outcomes(stack_client: httpx.AsyncClient, make_site: Any, pool: asyncpg.Pool) -> None:
    site = await make_site(origins=[ORIGIN], monthly_limit=3)
    sid = str(uuid.uuid4())
    a = event(site, sid=sid)
    assert (await post(stack_client, a)).status_code == 202
    b = event(site, sid=sid, u=f"{ORIGIN}/b")
    c = event(site, sid=sid, u=f"{ORIGIN}/c")
    d = event(site, sid=sid, u=f"{ORIGIN}/d")
    no_consent = event(site, sid=sid, consent=["marketing"])
    heartbeat = event(site, sid=sid, ec="system", ea="heartbeat", el="session_active", meta={"active_sec": 42})
    batch = {"events": [a, b, b, c, d, no_consent, heartbeat]}
    r = await post(stack_client, batch)
    assert r.status_code == 202, r.text
    got = [item["status"] for item in r.json()["results"]]
    assert got == [
        "duplicate",
        "accepted",
        "duplicate",
        "accepted",
        "rejected_quota",
        "consent_missing",
        "accepted",
    ]
    assert r.headers["x-opsmantik-quota-exceeded"] == "1"
    rejected = r.json()["results"][4]
    assert 0 < rejected["retry_after"] <= 32 * 86400

    rows = await pool.fetch("SELECT billable, billing_state, billing_reason FROM ingest_idempotency")
    states = sorted((x["billable"], x["billing_state"], x["billing_reason"]) for x in rows)
    assert states == sorted(
        [
            (True, "ACCEPTED", "interaction_view"),
            (True, "ACCEPTED", "interaction_view"),
            (True, "ACCEPTED", "interaction_view"),
            (False, "REJECTED_QUOTA", "rejected_quota"),
            (False, "NOT_BILLABLE", "system"),
        ]
    )
    usage = await pool.fetchrow("SELECT * FROM site_usage_monthly")
    assert (usage["event_count"], usage["overage_count"], usage["rejected_count"]) == (3, 0, 1)
    # heartbeats update the session, never add an event row; the refused event adds nothing
    assert await pool.fetchval("SELECT count(*) FROM events") == 3
    session = await pool.fetchrow("SELECT event_count, total_active_seconds FROM sessions")
    assert (session["event_count"], session["total_active_seconds"]) == (3, 42)


async def test_every_refusal_changes_nothing(
    stack_client: httpx.AsyncClient, make_site: Any, pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    site = await make_site(origins=[ORIGIN])
    other = await make_site(origins=["https://other.example.com"])
    before = await counts(pool)
    good = event(site)

    r = await post(stack_client, b"{" + b" " * (256 * 1024) + b"}")
    assert (r.status_code, r.headers["x-opsmantik-error-code"]) == (413, "payload_too_large")
    r = await post(stack_client, b'{"s": "x", "u": ')
    assert (r.status_code, r.json()["error"]) == (400, "invalid_json")
    r = await post(stack_client, {**good, "el": "x" * 600})
    assert (r.status_code, r.headers["x-opsmantik-error-code"]) == (422, "validation_error:el")
    r = await post(stack_client, {"events": [good, {**good, "meta": {"sw": "wide"}}]})
    assert (r.status_code, r.headers["x-opsmantik-error-code"]) == (422, "validation_error:events.1.meta.sw")
    r = await post(stack_client, [good])
    assert r.status_code == 422
    # nesting deeper than any field we read: a 400, never a 500 (unauthenticated input)
    deep = b'{"s":"' + site["public_id"].encode() + b'","u":"https://a/","meta":{"x":' + b"[" * 60_000
    r = await post(stack_client, deep + b"]" * 60_000 + b"}}")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_json")
    # an id that cannot be a site's public id is refused without a look-up
    r = await post(stack_client, {**good, "s": "../../etc"})
    assert (r.status_code, r.json()["error"]) == (400, "site_not_found")
    r = await post(stack_client, {**good, "s": "0" * 32})
    assert (r.status_code, r.json()["error"]) == (400, "site_not_found")
    r = await post(stack_client, {"events": [good, event(other)]})
    assert (r.status_code, r.json()["error"]) == (400, "batch_mixed_sites")
    r = await post(stack_client, good, origin="https://evil.example.net")
    assert (r.status_code, r.json()["error"]) == (403, "origin_not_allowed")
    r = await post(stack_client, good, origin="https://other.example.com")
    assert r.status_code == 403
    r = await post(stack_client, good, origin=None)
    assert (r.status_code, r.json()["error"]) == (403, "origin_required")
    r = await post(stack_client, good, origin=None, headers={"X-OpsMantik-Ingest-Key": "wrong"})
    assert r.status_code == 403
    r = await post(stack_client, {**good, "consent": ["marketing"]})
    assert r.status_code == 204 and r.headers["x-opsmantik-consent-missing"] == "analytics"
    r = await post(stack_client, {**good, "consent": None})
    assert r.status_code == 204
    r = await post(stack_client, {"events": [{**good, "consent": []}, {**event(site), "consent": ["marketing"]}]})
    assert r.status_code == 204
    assert await counts(pool) == before

    # what is allowed: a subdomain of an allowed origin; no Origin with the site's ingest key
    r = await post(stack_client, event(site), origin="https://m.shop.example.com")
    assert r.status_code == 202
    # a server-to-server key made with `opsmantik site ingest-key rotate` (a site the gateway
    # has not cached yet, so the new key is seen at once)
    third = await make_site(origins=[ORIGIN])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "opsmantik_stream.cli",
        "site",
        "ingest-key",
        "rotate",
        third["public_id"],
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "OPSMANTIK_DATABASE_URL": db_url, "OPSMANTIK_DATA_DIR": str(tmp_path / "data")},
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    key = json.loads(out)["ingest_key"]
    stored = await pool.fetchval("SELECT ingest_key_sha256 FROM sites WHERE public_id = $1", third["public_id"])
    assert stored == hashlib.sha256(key.encode()).hexdigest()
    r = await post(stack_client, event(third), origin=None, headers={"X-OpsMantik-Ingest-Key": key})
    assert r.status_code == 202, r.text


async def test_preflight(client: httpx.AsyncClient, make_site: Any) -> None:
    # no partition involved: the gateway alone answers preflights
    site = await make_site(origins=[ORIGIN])
    r = await client.options("/api/sync", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    r = await client.options(f"/api/sync?s={site['public_id']}", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = await client.options(f"/api/sync?s={site['public_id']}", headers={"Origin": ORIGIN})
    assert r.status_code == 204 and r.headers["access-control-allow-credentials"] == "true"


async def test_quota_boundary_hard_and_soft(
    stack_client: httpx.AsyncClient, make_site: Any, pool: asyncpg.Pool
) -> None:
    hard = await make_site(origins=[ORIGIN], monthly_limit=4)
    answers = [await post(stack_client, event(hard, u=f"{ORIGIN}/p{i}")) for i in range(5)]
    assert [r.status_code for r in answers] == [202, 202, 202, 202, 429]
    assert [r.headers.get("x-opsmantik-quota-remaining") for r in answers] == ["3", "2", "1", "0", "0"]
    refused = answers[-1]
    assert refused.json()["status"] == "rejected_quota"
    assert refused.headers["x-opsmantik-quota-exceeded"] == "1"
    assert "x-opsmantik-ratelimit" not in refused.headers
    retry_after = int(refused.headers["retry-after"])
    assert abs(retry_after - seconds_to_next_month(dt.datetime.now(dt.UTC))) <= 5
    # non-billable events always pass
    beat = await post(stack_client, event(hard, ec="system", ea="heartbeat"))
    assert beat.status_code == 202
    # the refused event is recorded once: sending it again is a duplicate, still not billed
    assert (await post(stack_client, {**event(hard), "eid": None, "u": f"{ORIGIN}/p4"})).status_code in (
        200,
        429,
    )
    hard_id = uuid.UUID(hard["site_id"])
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency WHERE site_id = $1 AND billable", hard_id) == 4
    assert await pool.fetchval("SELECT event_count FROM site_usage_monthly WHERE site_id = $1", hard_id) == 4

    soft = await make_site(origins=[ORIGIN], monthly_limit=2, soft_limit=True)
    answers = [await post(stack_client, event(soft, u=f"{ORIGIN}/s{i}")) for i in range(5)]
    assert [r.status_code for r in answers] == [202, 202, 202, 202, 429]
    assert [r.headers.get("x-opsmantik-overage") for r in answers[:4]] == [None, None, "true", "true"]
    soft_id = uuid.UUID(soft["site_id"])
    usage = await pool.fetchrow("SELECT * FROM site_usage_monthly WHERE site_id = $1", soft_id)
    assert (usage["event_count"], usage["overage_count"], usage["rejected_count"]) == (4, 2, 1)
    states = await pool.fetch(
        "SELECT billing_state, count(*) AS n FROM ingest_idempotency WHERE site_id = $1 GROUP BY 1", soft_id
    )
    assert {x["billing_state"]: x["n"] for x in states} == {"ACCEPTED": 2, "OVERAGE": 2, "REJECTED_QUOTA": 1}


async def test_cross_site_fingerprint_never_gives_ads_assisted(
    stack_client: httpx.AsyncClient, make_site: Any, pool: asyncpg.Pool
) -> None:
    site_a = await make_site(origins=[ORIGIN])
    site_b = await make_site(origins=[ORIGIN])
    fp = {"fp": "shared-fp"}
    google = "https://www.google.com/"
    # the visitor came through an ad on site B
    r = await post(stack_client, event(site_b, u=f"{ORIGIN}/?gclid=B-CLICK-0001", meta=fp))
    assert r.status_code == 202
    # later, from Google search, on site A: site B's click must not count
    r = await post(stack_client, event(site_a, r=google, meta=fp))
    assert r.status_code == 202
    # ...but on site B itself it does
    r = await post(stack_client, event(site_b, r=google, meta=fp))
    assert r.status_code == 202
    rows = await pool.fetch(
        "SELECT site_id, attribution_source, traffic_source, is_returning FROM sessions"
        " WHERE gclid IS NULL ORDER BY created_at"
    )
    by_site = {str(x["site_id"]): x for x in rows}
    assert by_site[site_a["site_id"]]["attribution_source"] == "Organic"
    assert by_site[site_a["site_id"]]["traffic_source"] == "SEO"
    assert by_site[site_a["site_id"]]["is_returning"] is False
    assert by_site[site_b["site_id"]]["attribution_source"] == "Ads Assisted"
    assert by_site[site_b["site_id"]]["is_returning"] is True
    scores = await pool.fetch(
        "SELECT site_id, (metadata->>'lead_score')::int AS score FROM events WHERE metadata->>'referrer' = $1",
        google,
    )
    assert {str(x["site_id"]): x["score"] for x in scores} == {
        site_a["site_id"]: 15,  # interaction 10 + Google referrer 5
        site_b["site_id"]: 40,  # + Ads Assisted 25
    }


async def test_one_intent_per_session(stack_client: httpx.AsyncClient, make_site: Any, pool: asyncpg.Pool) -> None:
    site = await make_site(origins=[ORIGIN])
    sid = str(uuid.uuid4())
    url = f"{ORIGIN}/contact?wbraid=WB-1234567890"
    phone = event(site, sid=sid, u=url, ec="conversion", ea="phone_call", el="tel:0532 123 45 67")
    wa = event(site, sid=sid, u=url, ec="conversion", ea="whatsapp", el="https://wa.me/905321234567?text=hi")
    assert (await post(stack_client, phone)).status_code == 202
    assert (await post(stack_client, {"events": [wa, {**phone, "eid": str(uuid.uuid4())}]})).status_code == 202
    call = await pool.fetchrow("SELECT * FROM calls")
    assert call["intent_stamp"] == f"session:{sid}"
    assert (call["status"], call["source"]) == ("intent", "click")
    assert (call["intent_phone_clicks"], call["intent_whatsapp_clicks"]) == (2, 1)
    assert (call["intent_action"], call["intent_target"]) == ("phone", "tel:+905321234567")
    assert (call["click_id"], call["click_id_type"]) == ("WB-1234567890", "wbraid")
    assert call["lead_score"] == 50
    # a sealed intent keeps its status; a gclid later beats the wbraid
    await pool.execute("UPDATE calls SET status = 'confirmed'")
    later = event(
        site,
        sid=sid,
        u=f"{ORIGIN}/?gclid=G-999999999",
        ec="conversion",
        ea="whatsapp",
        el="https://chat.whatsapp.com/AbC",
    )
    assert (await post(stack_client, later)).status_code == 202
    call = await pool.fetchrow("SELECT * FROM calls")
    assert await pool.fetchval("SELECT count(*) FROM calls") == 1
    assert call["status"] == "confirmed"
    assert (call["intent_whatsapp_clicks"], call["intent_target"]) == (2, "wa:chat/AbC")
    assert (call["click_id"], call["click_id_type"]) == ("G-999999999", "gclid")


async def test_later_events_fill_but_never_clear_session_fields(
    stack_client: httpx.AsyncClient, make_site: Any, pool: asyncpg.Pool
) -> None:
    site = await make_site(origins=[ORIGIN])
    sid = str(uuid.uuid4())
    first = event(site, sid=sid, u=f"{ORIGIN}/?utm_source=news&utm_medium=email", r="https://mail.example.org/")
    first["meta"] = {"fp": "fp-1", "city": "Ankara"}
    assert (await post(stack_client, first)).status_code == 202
    second = event(site, sid=sid, u=f"{ORIGIN}/pricing", r="")
    second["meta"] = {"sw": 1440, "scroll_pct": 70}
    assert (await post(stack_client, second)).status_code == 202
    s = await pool.fetchrow("SELECT * FROM sessions")
    assert (s["utm_source"], s["utm_medium"], s["city"], s["fingerprint"]) == (
        "news",
        "email",
        "Ankara",
        "fp-1",
    )
    assert s["referrer_host"] == "mail.example.org"
    assert s["screen_width"] == 1440 and s["max_scroll_percentage"] == 70
    assert s["entry_page"] == f"{ORIGIN}/?utm_source=news&utm_medium=email"
    assert s["exit_page"] == f"{ORIGIN}/pricing"
    assert s["event_count"] == 2


@pytest.fixture
def settings(settings: Any) -> Any:
    # ingest needs partitions only; fewer actors start faster
    return settings.with_overrides(uploaders=0)


async def test_a_consent_event_passes_the_gate_and_plain_events_cannot_raise_consent(
    stack_client: httpx.AsyncClient, make_site: Any, pool: asyncpg.Pool
) -> None:
    site = await make_site(origins=[ORIGIN])
    sid = str(uuid.uuid4())
    r = await post(stack_client, event(site, sid=sid, consent=["analytics"]))
    assert r.status_code == 202
    r = await post(stack_client, event(site, sid=sid, consent=["analytics", "marketing"]))
    assert r.status_code == 202
    stored = await pool.fetchval("SELECT consent_scopes FROM sessions WHERE id = $1", uuid.UUID(sid))
    assert list(stored) == ["analytics"]
    # the tracker's consent call: a withdrawal of everything is still recorded
    withdraw = event(site, sid=sid, ec="system", ea="consent", consent=[])
    r = await post(stack_client, withdraw)
    assert r.status_code == 202, r.text
    assert list(await pool.fetchval("SELECT consent_scopes FROM sessions WHERE id = $1", uuid.UUID(sid))) == []
    # without consent nothing else passes (and a consent event never creates a session on its own)
    assert (await post(stack_client, event(site, sid=sid, consent=[]))).status_code == 204
    lonely = str(uuid.uuid4())
    assert (await post(stack_client, event(site, sid=lonely, ec="system", ea="consent", consent=[]))).status_code == 202
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE id = $1", uuid.UUID(lonely)) == 0


async def test_form_capture_keeps_only_the_hashes(
    stack_client: httpx.AsyncClient, make_site: Any, pool: asyncpg.Pool
) -> None:
    """A form that opted in (``data-om-capture``) sends ``meta.om_email`` / ``om_phone`` with
    its form-submit: the event keeps their SHA-256 (``capture.form_identifiers``), never the
    values; without marketing consent, or on an event that is not a form, nothing is kept."""
    from opsmantik_stream.capture import form_identifiers
    from opsmantik_stream.enums import IntentAction

    site = await make_site(origins=[ORIGIN])
    plain = {"om_email": "  Jane.Doe@Gmail.com ", "om_phone": "+90 532 123 45 67"}
    form = event(site, ec="conversion", ea="form_submit", el="quote", meta={"fp": "fp-f", **plain})
    no_consent = event(
        site, ec="conversion", ea="form_submit", el="quote", consent=["analytics"], meta={"fp": "fp-g", **plain}
    )
    view = event(site, meta={"fp": "fp-h", **plain})
    for body in (form, no_consent, view):
        r = await post(stack_client, body)
        assert r.status_code == 202, r.text
    found = await pool.fetch("SELECT metadata->>'eid' AS eid, metadata::text AS m FROM events")
    rows = {r["eid"]: json.loads(r["m"]) for r in found}
    want = form_identifiers(IntentAction.FORM, plain["om_email"], plain["om_phone"])
    assert set(want) == {"email_sha256", "phone_sha256"}
    assert {k: rows[form["eid"]].get(k) for k in want} == want
    for other in (no_consent, view):
        assert not set(want) & set(rows[other["eid"]]), rows[other["eid"]]
    # the values as sent are nowhere in the database
    stored = await pool.fetchval(
        "SELECT string_agg(x, ' ') FROM (SELECT metadata::text AS x FROM events "
        "UNION ALL SELECT row_to_json(s)::text FROM sessions s UNION ALL SELECT payload::text FROM dead_letters) t"
    )
    assert "jane" not in stored.lower() and "123 45 67" not in stored and "5321234567" not in stored
