"""Erase and export of a data subject (``/api/privacy/*``): anonymise everything of the site
tied to the subject and nothing else, answer per-table counts, repeat safely, audit without
the identifier; export everything as one streamed JSON document under row-level security."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.integration._leads_support import auth
from tests.integration._privacy_support import (
    EMAIL,
    FBCLID,
    FINGERPRINT,
    GCLID,
    IP,
    PHONE_E164,
    PHONE_RAW,
    Footprint,
    seed_subject,
    site_dump,
)

pytestmark = pytest.mark.integration

PERSONAL = (FINGERPRINT, GCLID, EMAIL, IP, "5321234567", FBCLID)


async def _erase(client: httpx.AsyncClient, token: str, site: dict[str, Any], kind: str, value: str) -> httpx.Response:
    body = {"site": site["public_id"], "identifier_type": kind, "identifier_value": value}
    return await client.post("/api/privacy/erase", json=body, headers=auth(token))


async def _subject_text(pool: asyncpg.Pool, fp: Footprint) -> str:
    """Every row of the subject's footprint as text."""
    sessions = [uuid.UUID(s) for s in fp.sessions]
    rows = [
        *(await pool.fetch("SELECT to_jsonb(s) j FROM sessions s WHERE id = ANY($1::uuid[])", sessions)),
        *(await pool.fetch("SELECT to_jsonb(e) j FROM events e WHERE session_id = ANY($1::uuid[])", sessions)),
        *(
            await pool.fetch(
                "SELECT to_jsonb(c) j FROM calls c WHERE id = ANY($1::uuid[])",
                [uuid.UUID(fp.call_event), uuid.UUID(fp.intent)],
            )
        ),
        *(await pool.fetch("SELECT to_jsonb(a) j FROM call_actions a WHERE call_id = $1", uuid.UUID(fp.call_event))),
        *(await pool.fetch("SELECT to_jsonb(c) j FROM conversations c WHERE id = $1", uuid.UUID(fp.conversation))),
        *(await pool.fetch("SELECT to_jsonb(s) j FROM sales s WHERE id = $1", uuid.UUID(fp.sale))),
        *(
            await pool.fetch(
                "SELECT to_jsonb(q) j FROM offline_conversion_queue q WHERE id = ANY($1::uuid[])",
                [uuid.UUID(fp.queued), uuid.UUID(fp.uploaded)],
            )
        ),
        *(await pool.fetch("SELECT to_jsonb(d) j FROM dead_letters d WHERE id = $1", fp.dead_letter)),
    ]
    return json.dumps([r["j"] for r in rows], default=str)


async def test_erase_by_fingerprint_anonymises_the_subject_only(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site, other_site = await make_site(), await make_site()
    fp = await seed_subject(pool, site)
    await seed_subject(pool, other_site)  # the same person's identifiers on another site
    owner = await make_token(site["public_id"], "owner")
    text = await _subject_text(pool, fp)
    assert all(v in text for v in PERSONAL), "the seed must hold every value the erase removes"
    other_before = await site_dump(pool, other_site["site_id"])
    bystander_before = await pool.fetchrow("SELECT * FROM sessions WHERE id = $1", uuid.UUID(fp.other_session))

    r = await _erase(client, owner, site, "fingerprint", FINGERPRINT)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["counts"] == {
        "sessions": 2,
        "events": 1,
        "calls": 2,
        "call_actions": 1,
        "conversations": 1,
        "sales": 1,
        "offline_conversion_queue": 2,
        "offline_conversion_queue_voided": 1,
        "dead_letters": 1,
    }
    assert result["total"] == 11 and len(result["subject_hash"]) == 64

    text = await _subject_text(pool, fp)
    leftovers = [v for v in PERSONAL if v in text]
    assert not leftovers, f"personal data left after erase: {leftovers}"
    # anonymised, not deleted: the rows and what billing and uploads need are still there
    main = await pool.fetchrow("SELECT * FROM sessions WHERE id = $1", uuid.UUID(fp.sessions[0]))
    assert main["anonymized_at"] is not None and main["entry_page"] == "https://shop.example.com/"
    assert (main["fingerprint"], main["ip_address"], main["gclid"], main["city"]) == (None, None, None, None)
    assert main["utm_source"] == "google" and main["consent_scopes"] == ["analytics", "marketing"]
    event = await pool.fetchrow("SELECT * FROM events WHERE session_id = $1", uuid.UUID(fp.sessions[0]))
    assert event["url"] == "https://shop.example.com/contact" and event["event_label"] is None
    assert event["metadata"] == {"lead_score": 50}
    call = await pool.fetchrow("SELECT * FROM calls WHERE id = $1", uuid.UUID(fp.call_event))
    assert (call["phone_number"], call["matched_fingerprint"], call["click_id"], call["note"]) == (None,) * 4
    assert call["intent_target"] == "tel:redacted" and call["status"] == "confirmed"
    queued = await pool.fetchrow("SELECT * FROM offline_conversion_queue WHERE id = $1", uuid.UUID(fp.queued))
    assert (queued["status"], queued["error_code"], queued["gclid"], queued["phone_sha256"]) == (
        "FAILED",
        "erased",
        None,
        None,
    )
    uploaded = await pool.fetchrow("SELECT * FROM offline_conversion_queue WHERE id = $1", uuid.UUID(fp.uploaded))
    assert uploaded["status"] == "COMPLETED" and uploaded["gclid"] is None and uploaded["order_id"]
    dead = await pool.fetchrow("SELECT * FROM dead_letters WHERE id = $1", fp.dead_letter)
    assert dead["payload"]["redacted"] is True and dead["payload"]["reason"] == "erased"
    assert dead["status"] == "DISCARDED" and dead["redacted_at"] is not None
    # an anonymised row never becomes pending again (an operator's requeue changes nothing)
    await pool.execute("UPDATE offline_conversion_queue SET status = 'QUEUED' WHERE id = $1", uuid.UUID(fp.queued))
    assert await pool.fetchval("SELECT status FROM offline_conversion_queue WHERE id = $1", uuid.UUID(fp.queued)) == (
        "FAILED"
    )

    # nothing else changed: another visitor of the site, the same person on another site
    assert await pool.fetchrow("SELECT * FROM sessions WHERE id = $1", uuid.UUID(fp.other_session)) == bystander_before
    assert await site_dump(pool, other_site["site_id"]) == other_before

    # audited with counts and the keyed hash; the identifier appears nowhere in the audit log
    audit = await pool.fetchrow("SELECT * FROM audit_log WHERE action = 'privacy.erase'")
    assert audit["resource_id"] == result["subject_hash"] and audit["payload"]["counts"] == result["counts"]
    void = await pool.fetch("SELECT payload FROM audit_log WHERE action = 'conversion.void'")
    assert [v["payload"]["reason"] for v in void] == ["erased"]
    audit_text = json.dumps([dict(r) for r in await pool.fetch("SELECT * FROM audit_log")], default=str)
    assert not [v for v in (*PERSONAL, PHONE_RAW, PHONE_E164) if v in audit_text]

    # repeat: nothing left to change, every count 0, the same subject hash
    again = await _erase(client, owner, site, "fingerprint", FINGERPRINT)
    assert again.status_code == 200
    assert set(again.json()["counts"].values()) == {0} and again.json()["subject_hash"] == result["subject_hash"]


@pytest.mark.parametrize(
    ("kind", "value", "sessions"),
    [
        ("phone", "+90 (532) 123-45-67", 1),
        ("email", EMAIL.upper(), 1),
        ("session_id", None, 1),
    ],
)
async def test_erase_by_phone_email_or_session(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    make_site: Any,
    make_token: Any,
    kind: str,
    value: str | None,
    sessions: int,
) -> None:
    site = await make_site()
    fp = await seed_subject(pool, site)
    admin = await make_token(site["public_id"], "admin")
    r = await _erase(client, admin, site, kind, value or fp.sessions[0])
    assert r.status_code == 200, r.text
    counts = r.json()["counts"]
    # each identifier reaches the session the call event / the e-mail / the id points at,
    # and through it the calls, conversation, sale, conversions and dead letter
    assert counts["sessions"] == sessions
    assert counts["calls"] == 2 and counts["conversations"] == 1 and counts["sales"] == 1
    assert counts["offline_conversion_queue_voided"] == 1 and counts["dead_letters"] == 1
    main = await pool.fetchrow("SELECT * FROM sessions WHERE id = $1", uuid.UUID(fp.sessions[0]))
    assert main["fingerprint"] is None and main["anonymized_at"] is not None
    # the subject's older session was not named by this identifier and keeps its data
    older = await pool.fetchrow("SELECT * FROM sessions WHERE id = $1", uuid.UUID(fp.sessions[1]))
    assert older["fingerprint"] == FINGERPRINT
    again = await _erase(client, admin, site, kind, value or fp.sessions[0])
    assert set(again.json()["counts"].values()) == {0}


async def test_erase_and_export_need_privacy_rights_on_the_site(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site, other_site = await make_site(), await make_site()
    fp = await seed_subject(pool, site)
    before = await site_dump(pool, site["site_id"])
    stranger = await make_token(other_site["public_id"], "owner")
    for role in ("operator", "analyst", "billing"):
        token = await make_token(site["public_id"], role)
        r = await _erase(client, token, site, "fingerprint", FINGERPRINT)
        assert r.status_code == 403, (role, r.text)
    r = await _erase(client, stranger, site, "fingerprint", FINGERPRINT)
    assert r.status_code == 403
    params = {"site": site["public_id"], "identifier_type": "fingerprint", "identifier_value": FINGERPRINT}
    r = await client.get("/api/privacy/export", params=params, headers=auth(stranger))
    assert r.status_code == 403
    r = await client.get("/api/privacy/export", params=params)
    assert r.status_code == 401
    owner = await make_token(site["public_id"], "owner")
    for bad, code in (
        ({"identifier_type": "ip", "identifier_value": "x"}, "invalid_identifier_type"),
        ({"identifier_type": "phone", "identifier_value": "call me"}, "invalid_identifier"),
        ({"identifier_type": "email", "identifier_value": "not-an-address"}, "invalid_identifier"),
        ({"identifier_type": "fingerprint", "identifier_value": "x" * 400}, "invalid_identifier"),
        ({"identifier_type": "fingerprint", "identifier_value": "   "}, "invalid_identifier"),
    ):
        r = await client.post("/api/privacy/erase", json={"site": site["public_id"], **bad}, headers=auth(owner))
        assert r.status_code == 400 and r.json()["error"] == code, (bad, r.text)
    r = await client.post("/api/privacy/erase", content=b"{not json", headers=auth(owner))
    assert r.status_code == 400
    # a body without its required fields does not fit the schema: 422, as on every route
    r = await client.post("/api/privacy/erase", json={"site": site["public_id"]}, headers=auth(owner))
    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    assert await site_dump(pool, site["site_id"]) == before
    assert fp.sessions


async def test_export_streams_everything_held_for_the_subject(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    fp = await seed_subject(pool, site)
    main = uuid.UUID(fp.sessions[0])
    # more events than one page holds, so the document is built from several pages
    await pool.execute(
        """INSERT INTO events (session_id, session_month, site_id, url, event_category, event_action)
           SELECT $1, created_month, site_id, 'https://shop.example.com/p/' || g, 'interaction', 'view'
           FROM sessions, generate_series(1, 1234) AS g WHERE id = $1""",
        main,
    )
    await pool.execute("UPDATE sessions SET consent_scopes = '{analytics}' WHERE id = $1", main)
    owner = await make_token(site["public_id"], "owner")
    params = {"site": site["public_id"], "identifier_type": "fingerprint", "identifier_value": FINGERPRINT}
    async with client.stream("GET", "/api/privacy/export", params=params, headers=auth(owner)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        chunks = [c async for c in r.aiter_bytes()]
    doc = json.loads(b"".join(chunks))
    assert doc["subject"]["identifier_type"] == "fingerprint" and len(doc["subject"]["subject_hash"]) == 64
    assert sorted(s["id"] for s in doc["sessions"]) == sorted(fp.sessions)
    assert len(doc["events"]) == 1235 and len({e["id"] for e in doc["events"]}) == 1235
    assert {c["id"] for c in doc["calls"]} == {fp.call_event, fp.intent}
    assert [c["id"] for c in doc["conversations"]] == [fp.conversation]
    assert [s["id"] for s in doc["sales"]] == [fp.sale] and doc["sales"][0]["notes"] == f"invoice to {EMAIL}"
    # the marketing withdrawal above is in the consent history, and voided the pending row
    assert [(h["previous_scopes"], h["scopes"], h["source"]) for h in doc["consent_history"]] == [
        (["analytics", "marketing"], ["analytics"], "ingest")
    ]
    queue = {q["id"]: q for q in doc["offline_conversion_queue"]}
    assert set(queue) == {fp.queued, fp.uploaded} and queue[fp.queued]["error_code"] == "consent_withdrawn"
    assert [d["id"] for d in doc["dead_letters"]] == [fp.dead_letter]
    assert len(doc["call_actions"]) == 1
    assert doc["sessions"][0]["ip_address"] in (IP, None)
    sections = ("sessions", "events", "consent_history", "calls", "call_actions", "conversations", "sales")
    total = sum(len(doc[k]) for k in (*sections, "offline_conversion_queue", "dead_letters"))
    assert doc["meta"]["total_records"] == total and doc["meta"]["exported_at"]
    audit = await pool.fetchrow("SELECT * FROM audit_log WHERE action = 'privacy.export'")
    assert audit["payload"]["counts"]["events"] == 1235 and audit["resource_id"] == doc["subject"]["subject_hash"]
    assert FINGERPRINT not in json.dumps(audit["payload"])

    # nothing held: an empty document, still audited
    params["identifier_value"] = "fp-nobody"
    r = await client.get("/api/privacy/export", params=params, headers=auth(owner))
    empty = r.json()
    assert empty["meta"]["total_records"] == 0 and empty["sessions"] == [] and empty["events"] == []
