"""Operator actions on calls (seal/junk/cancel/restore/undo), their audit trail, the
seal-with-value enqueue, the auto-approve job, and role checks on the call routes."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream.db import api_transaction
from opsmantik_stream.jobs import run_job
from opsmantik_stream.leads.enqueue import order_id_for
from tests.integration._leads_support import auth, make_intent, make_session

pytestmark = pytest.mark.integration


async def _act(client: httpx.AsyncClient, token: str, call_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/api/calls/{call_id}/actions", json=body, headers=auth(token))


async def _queue(pool: asyncpg.Pool, source_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM offline_conversion_queue WHERE source_id = $1", uuid.UUID(source_id))


async def test_every_action_and_undo_is_logged_and_audited(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    token = await make_token(site["public_id"], "operator", email="op@example.com")
    user_id = await pool.fetchval("SELECT id::text FROM users WHERE email = 'op@example.com'")
    session = await make_session(pool, site["site_id"], fingerprint="fp")
    call_id = await make_intent(pool, site["site_id"], session)

    listed = await client.get(f"/api/sites/{site['public_id']}/intents?status=intent", headers=auth(token))
    assert listed.status_code == 200
    assert [c["id"] for c in listed.json()["intents"]] == [call_id]

    sealed = await _act(client, token, call_id, action="seal", value_minor=150_000, currency="TRY", score=80)
    assert sealed.status_code == 200, sealed.text
    data = sealed.json()
    assert data["call"]["status"] == "confirmed" and data["call"]["lead_score"] == 80
    assert data["conversion"]["enqueued"] is True
    order_id = order_id_for(site["site_id"], "call", call_id)
    assert data["conversion"]["order_id"] == order_id
    [row] = await _queue(pool, call_id)
    confirmed_at = await pool.fetchval("SELECT confirmed_at FROM calls WHERE id = $1", uuid.UUID(call_id))
    assert (row["status"], row["gclid"], row["value_minor"], row["currency"]) == (
        "QUEUED",
        "gclid-TEST-1",
        150_000,
        "TRY",
    )
    assert row["conversion_time"] == confirmed_at and row["order_id"] == order_id
    assert row["session_id"] == uuid.UUID(session["id"]) and row["destination"] == "data_manager"

    # a sealed call cannot be sealed again (guarded transition) and nothing changes
    again = await _act(client, token, call_id, action="seal", value_minor=1)
    assert again.status_code == 409 and again.json()["error"] == "invalid_transition"

    undo = await _act(client, token, call_id, action="undo")
    assert undo.status_code == 200
    assert undo.json()["call"]["status"] == "intent" and undo.json()["call"]["value_minor"] is None
    assert undo.json()["conversion_voided"] is True
    [row] = await _queue(pool, call_id)
    assert (row["status"], row["error_code"]) == ("FAILED", "VOIDED")
    second_undo = await _act(client, token, call_id, action="undo")
    assert second_undo.status_code == 409 and second_undo.json()["error"] == "last_action_is_undo"

    # sealing again (a retry of the same conversion) keeps the same order id and one row
    resealed = await _act(client, token, call_id, action="seal", value_minor=120_000)
    assert resealed.json()["conversion"]["order_id"] == order_id
    [row] = await _queue(pool, call_id)
    assert (row["status"], row["value_minor"], row["order_id"]) == ("QUEUED", 120_000, order_id)

    for action, expected in [
        ("junk", "junk"),
        ("restore", "intent"),
        ("cancel", "cancelled"),
        ("undo", "intent"),
    ]:
        resp = await _act(client, token, call_id, action=action)
        assert resp.status_code == 200, (action, resp.text)
        assert resp.json()["call"]["status"] == expected
    bad = await _act(client, token, call_id, action="restore")  # already an intent
    assert bad.status_code == 409
    unknown = await _act(client, token, call_id, action="explode")
    assert unknown.status_code == 400

    actions = await pool.fetch("SELECT * FROM call_actions WHERE call_id = $1 ORDER BY id", uuid.UUID(call_id))
    assert [a["action_type"] for a in actions] == [
        "seal",
        "undo",
        "seal",
        "junk",
        "restore",
        "cancel",
        "undo",
    ]
    assert all(a["actor_type"] == "user" and a["actor_id"] == user_id for a in actions)
    # every snapshot is the full row before the action
    assert [a["revert_snapshot"]["status"] for a in actions] == [a["previous_status"] for a in actions]
    assert actions[1]["revert_snapshot"]["value_minor"] == 150_000
    assert "intent_target" in actions[0]["revert_snapshot"]
    audits = await pool.fetch(
        "SELECT action, actor_id, payload FROM audit_log WHERE resource_id = $1 ORDER BY id", call_id
    )
    assert [a["action"] for a in audits] == [f"call.{a['action_type']}" for a in actions]
    assert all(a["actor_id"] == user_id for a in audits)
    assert all("+90" not in str(a["payload"]) for a in audits)  # ids only, no phone numbers

    # the API role cannot touch identity or ingest columns, even by hand
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with api_transaction(pool, user_id) as conn:
            await conn.execute("UPDATE calls SET intent_target = 'tel:+1' WHERE id = $1", uuid.UUID(call_id))


async def test_seal_enqueue_reasons(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site(currency="EUR")
    token = await make_token(site["public_id"], "owner")

    no_marketing = await make_session(pool, site["site_id"], consent=("analytics",))
    call = await make_intent(pool, site["site_id"], no_marketing)
    resp = await _act(client, token, call, action="seal", value_minor=5000)
    assert resp.status_code == 200
    assert resp.json()["conversion"] == {
        "enqueued": False,
        "reason": "no_marketing_consent",
        "conversion_id": None,
        "order_id": None,
        "click_id_type": None,
    }
    assert resp.json()["call"]["currency"] == "EUR"  # the site's currency by default
    assert await _queue(pool, call) == []

    no_click = await make_session(pool, site["site_id"], gclid=None)
    call = await make_intent(pool, site["site_id"], no_click)
    resp = await _act(client, token, call, action="seal", value_minor=5000)
    assert resp.json()["conversion"]["reason"] == "no_click_id"

    call = await make_intent(pool, site["site_id"], await make_session(pool, site["site_id"]))
    resp = await _act(client, token, call, action="seal")  # no value: sealed, nothing to upload
    assert resp.json()["call"]["status"] == "confirmed"
    assert resp.json()["conversion"]["reason"] == "zero_value"

    wb = await make_session(pool, site["site_id"], gclid=None, wbraid="wb-1", gbraid="gb-1")
    call = await make_intent(pool, site["site_id"], wb)
    resp = await _act(client, token, call, action="seal", value_minor=900)
    assert resp.json()["conversion"]["click_id_type"] == "wbraid"
    [row] = await _queue(pool, call)
    assert (row["gclid"], row["wbraid"], row["gbraid"]) == (None, "wb-1", None)

    # one pending conversion per (site, session): a second call of the same session waits
    other = await pool.fetchval(
        """INSERT INTO calls (site_id, source, status, matched_session_id, matched_session_month)
           VALUES ($1, 'call_event', 'intent', $2, $3) RETURNING id::text""",
        uuid.UUID(site["site_id"]),
        uuid.UUID(wb["id"]),
        wb["created_month"],
    )
    resp = await _act(client, token, other, action="seal", value_minor=700)
    assert resp.json()["conversion"]["enqueued"] is False
    assert resp.json()["conversion"]["reason"] == "pending_conversion_for_session"


async def test_auto_approve_job(pool: asyncpg.Pool, make_site: Any, settings: Any) -> None:
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    old = now - dt.timedelta(hours=25)
    good = await make_intent(
        pool,
        site["site_id"],
        await make_session(pool, site["site_id"], created_at=old),
        created_at=old,
        score=20,
    )
    fresh = await make_intent(pool, site["site_id"], await make_session(pool, site["site_id"]), created_at=now)
    organic = await make_intent(
        pool,
        site["site_id"],
        await make_session(pool, site["site_id"], gclid=None, created_at=old),
        created_at=old,
    )
    short = await make_intent(
        pool,
        site["site_id"],
        await make_session(pool, site["site_id"], duration_s=5, created_at=old),
        created_at=old,
    )
    lonely = await make_intent(
        pool,
        site["site_id"],
        await make_session(pool, site["site_id"], event_count=1, created_at=old),
        created_at=old,
    )
    result = await run_job("auto_approve", pool, settings, now=now)
    assert result == {"approved": 1, "call_ids": [good]}
    row = await pool.fetchrow("SELECT status, lead_score, confirmed_by FROM calls WHERE id = $1", uuid.UUID(good))
    assert (row["status"], row["lead_score"], row["confirmed_by"]) == ("confirmed", 60, None)
    statuses = await pool.fetch(
        "SELECT status FROM calls WHERE id = ANY($1::uuid[])",
        [uuid.UUID(c) for c in (fresh, organic, short, lonely)],
    )
    assert {r["status"] for r in statuses} == {"intent"}
    action = await pool.fetchrow("SELECT * FROM call_actions WHERE call_id = $1", uuid.UUID(good))
    assert (action["action_type"], action["actor_type"], action["previous_status"]) == (
        "auto_approve",
        "system",
        "intent",
    )
    assert action["revert_snapshot"]["lead_score"] == 20
    assert await run_job("auto_approve", pool, settings, now=now) == {"approved": 0, "call_ids": []}


ROLES = ["owner", "admin", "operator", "analyst", "billing"]


async def test_roles_on_call_routes(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site, other = await make_site(), await make_site()
    tokens = {role: await make_token(site["public_id"], role) for role in ROLES}
    tokens["platform_admin"] = await make_token(None, None, platform_admin=True)
    tokens["other_site"] = await make_token(other["public_id"], "owner")
    can_read = {"owner", "admin", "operator", "analyst", "billing", "platform_admin"}
    can_operate = {"owner", "admin", "operator", "platform_admin"}
    for who, token in tokens.items():
        resp = await client.get(f"/api/sites/{site['public_id']}/intents", headers=auth(token))
        assert resp.status_code == (200 if who in can_read else 403), who
        call_id = await make_intent(pool, site["site_id"], await make_session(pool, site["site_id"]))
        resp = await _act(client, token, call_id, action="seal", value_minor=100)
        expected = 200 if who in can_operate else (404 if who == "other_site" else 403)
        assert resp.status_code == expected, (who, resp.text)
        resp = await client.get(f"/api/calls/{call_id}/actions", headers=auth(token))
        assert resp.status_code == (200 if who in can_read else 404), who
        status = await pool.fetchval("SELECT status FROM calls WHERE id = $1", uuid.UUID(call_id))
        assert status == ("confirmed" if who in can_operate else "intent"), who
    call_id = await make_intent(pool, site["site_id"], await make_session(pool, site["site_id"]))
    for path in (f"/api/sites/{site['public_id']}/intents", f"/api/calls/{call_id}/actions"):
        assert (await client.get(path)).status_code == 401
    assert (await client.post(f"/api/calls/{call_id}/actions", json={"action": "junk"})).status_code == 401
    bad = await client.get(f"/api/sites/{site['public_id']}/intents?status=won", headers=auth(tokens["owner"]))
    assert bad.status_code == 400
    bad = await client.get(f"/api/sites/{site['public_id']}/intents?from=yesterday", headers=auth(tokens["owner"]))
    assert bad.status_code == 400
