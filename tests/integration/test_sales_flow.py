"""Conversations and sales: create/link/resolve, upsert by external ref, confirm with the
enqueue in the same transaction, bad input changes nothing, role checks."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream.leads.enqueue import order_id_for
from tests.integration._leads_support import auth, make_intent, make_session

pytestmark = pytest.mark.integration

OCCURRED = "2026-03-05T14:30:00+00:00"


async def _count(pool: asyncpg.Pool, table: str, site_id: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table} WHERE site_id = $1", uuid.UUID(site_id)))


async def _sale(client: httpx.AsyncClient, token: str, site: dict[str, Any], **body: Any) -> httpx.Response:
    return await client.post(
        "/api/sales", json={"site": site["public_id"], "occurred_at": OCCURRED, **body}, headers=auth(token)
    )


async def test_conversation_sale_confirm_and_queue(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site, other = await make_site(), await make_site()
    token = await make_token(site["public_id"], "operator")
    session = await make_session(pool, site["site_id"], gclid=None, gbraid="gb-42")
    call_id = await make_intent(pool, site["site_id"], session)

    # conversation with the call as primary: snapshot carries the session's click ids and UTM
    resp = await client.post(
        "/api/conversations",
        json={"site": site["public_id"], "primary_call_id": call_id},
        headers=auth(token),
    )
    assert resp.status_code == 201, resp.text
    conv = resp.json()["conversation"]
    assert conv["status"] == "OPEN"
    assert conv["primary_source"]["gbraid"] == "gb-42" and conv["primary_source"]["utm_source"] == "google"
    assert conv["primary_source"]["session_id"] == session["id"]
    again = await client.post(
        "/api/conversations",
        json={"site": site["public_id"], "primary_call_id": call_id},
        headers=auth(token),
    )
    assert again.status_code == 200 and again.json()["conversation"]["id"] == conv["id"]
    for body in ({}, {"primary_call_id": call_id, "primary_session_id": session["id"]}):
        bad = await client.post("/api/conversations", json={"site": site["public_id"], **body}, headers=auth(token))
        assert bad.status_code == 400 and bad.json()["error"] == "exactly_one_primary"

    # links: same site ok, duplicate 200, other site's entity 400 ENTITY_SITE_MISMATCH
    link = f"/api/conversations/{conv['id']}/links"
    resp = await client.post(link, json={"entity_type": "session", "entity_id": session["id"]}, headers=auth(token))
    assert resp.status_code == 201
    resp = await client.post(link, json={"entity_type": "session", "entity_id": session["id"]}, headers=auth(token))
    assert resp.status_code == 200 and resp.json()["created"] is False
    foreign_call = await make_intent(pool, other["site_id"], await make_session(pool, other["site_id"]))
    links_before = await _count(pool, "conversation_links", site["site_id"])
    resp = await client.post(link, json={"entity_type": "call", "entity_id": foreign_call}, headers=auth(token))
    assert resp.status_code == 400 and resp.json()["error"] == "ENTITY_SITE_MISMATCH"
    resp = await client.post(link, json={"entity_type": "intent", "entity_id": call_id}, headers=auth(token))
    assert resp.status_code == 400
    assert await _count(pool, "conversation_links", site["site_id"]) == links_before

    # sales: bad input is a 4xx and nothing is stored
    # (schema errors are 422 and name the field; rule errors 400)
    bad_sales: list[tuple[dict[str, Any], int, str]] = [
        ({"amount_minor": -1}, 422, "validation_error:amount_minor"),
        ({"amount_minor": 100, "occurred_at": "next tuesday"}, 400, "invalid_occurred_at"),
        ({"amount_minor": "lots"}, 422, "validation_error:amount_minor"),
        ({"amount_minor": 100, "currency": "euro"}, 422, "validation_error:currency"),
        ({"amount_minor": 100, "surprise": 1}, 422, "validation_error:surprise"),
    ]
    for body, status, code in bad_sales:
        resp = await _sale(client, token, site, **body)
        assert resp.status_code == status and resp.headers["x-opsmantik-error-code"] == code, (body, resp.text)
    other_conv = await make_token(other["public_id"], "owner")
    oc = await client.post(
        "/api/conversations",
        json={"site": other["public_id"], "primary_call_id": foreign_call},
        headers=auth(other_conv),
    )
    resp = await _sale(client, token, site, amount_minor=100, conversation_id=oc.json()["conversation"]["id"])
    assert resp.status_code == 400 and resp.json()["error"] == "ENTITY_SITE_MISMATCH"
    assert await _count(pool, "sales", site["site_id"]) == 0

    # create, then upsert by external reference
    resp = await _sale(
        client,
        token,
        site,
        amount_minor=100_00,
        currency="USD",
        external_ref="crm-1",
        conversation_id=conv["id"],
    )
    assert resp.status_code == 201
    sale = resp.json()["sale"]
    assert sale["status"] == "DRAFT"
    resp = await _sale(client, token, site, amount_minor=250_00, currency="USD", external_ref="crm-1")
    assert resp.status_code == 200 and resp.json()["sale"]["id"] == sale["id"]
    assert resp.json()["sale"]["amount_minor"] == 250_00
    assert resp.json()["sale"]["conversation_id"] == conv["id"]  # kept

    confirm = f"/api/sales/{sale['id']}/confirm"
    resp = await client.post(confirm, headers=auth(token))
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["enqueued"] is True and data["reason"] is None and data["sale"]["status"] == "CONFIRMED"
    assert data["order_id"] == order_id_for(site["site_id"], "sale", sale["id"])
    resp = await client.post(confirm, headers=auth(token))
    assert resp.status_code == 409 and resp.json()["error"] == "ALREADY_CONFIRMED_OR_CANCELED"
    [row] = await pool.fetch("SELECT * FROM offline_conversion_queue WHERE site_id = $1", uuid.UUID(site["site_id"]))
    assert (row["status"], row["gbraid"], row["gclid"], row["value_minor"], row["currency"]) == (
        "QUEUED",
        "gb-42",
        None,
        250_00,
        "USD",
    )
    assert row["conversion_time"] == dt.datetime.fromisoformat(OCCURRED)
    assert row["order_id"] == data["order_id"] and row["source_kind"] == "sale"

    # a confirmed sale cannot be rewritten through the upsert
    resp = await _sale(client, token, site, amount_minor=1, currency="USD", external_ref="crm-1")
    assert resp.status_code == 409 and resp.json()["error"] == "sale_not_draft"
    assert await pool.fetchval("SELECT amount_minor FROM sales WHERE id = $1", uuid.UUID(sale["id"])) == 250_00

    listed = await client.get(f"/api/sales?site={site['public_id']}&status=CONFIRMED", headers=auth(token))
    assert [s["id"] for s in listed.json()["sales"]] == [sale["id"]]
    listed = await client.get(f"/api/sales?site={site['public_id']}&status=DRAFT", headers=auth(token))
    assert listed.json()["sales"] == []

    # resolve: WON with the sale; the same again is a no-op; another status is 409
    resolve = f"/api/conversations/{conv['id']}/resolve"
    resp = await client.post(resolve, json={"status": "WON", "sale_id": sale["id"]}, headers=auth(token))
    assert resp.status_code == 200 and resp.json()["conversation"]["status"] == "WON"
    resp = await client.post(resolve, json={"status": "WON"}, headers=auth(token))
    assert resp.status_code == 200 and resp.json()["changed"] is False
    resp = await client.post(resolve, json={"status": "LOST"}, headers=auth(token))
    assert resp.status_code == 409
    resp = await client.post(resolve, json={"status": "MAYBE"}, headers=auth(token))
    assert resp.status_code == 400
    audits = await pool.fetch("SELECT action FROM audit_log WHERE site_id = $1 ORDER BY id", uuid.UUID(site["site_id"]))
    assert {
        "conversation.create",
        "conversation.link",
        "sale.create",
        "sale.update",
        "sale.confirm",
        "conversation.resolve",
    } <= {a["action"] for a in audits}


async def test_concurrent_confirms_enqueue_once_and_reasons(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    token = await make_token(site["public_id"], "admin")
    session = await make_session(pool, site["site_id"])
    conv = await client.post(
        "/api/conversations",
        json={"site": site["public_id"], "primary_session_id": session["id"]},
        headers=auth(token),
    )
    conv_id = conv.json()["conversation"]["id"]
    sale = (await _sale(client, token, site, amount_minor=999, conversation_id=conv_id)).json()["sale"]
    answers = await asyncio.gather(
        *[client.post(f"/api/sales/{sale['id']}/confirm", headers=auth(token)) for _ in range(2)]
    )
    assert sorted(a.status_code for a in answers) == [200, 409]
    assert await _count(pool, "offline_conversion_queue", site["site_id"]) == 1

    # a second sale of the same session is its own conversion with its own order id (issue 13)
    sale2 = (await _sale(client, token, site, amount_minor=500, conversation_id=conv_id)).json()["sale"]
    resp = await client.post(f"/api/sales/{sale2['id']}/confirm", headers=auth(token))
    assert resp.json()["enqueued"] is True, resp.text
    assert resp.json()["order_id"] == order_id_for(site["site_id"], "sale", sale2["id"])
    assert await _count(pool, "offline_conversion_queue", site["site_id"]) == 2

    # no marketing consent -> confirmed, not enqueued, and the answer says why
    analytics_only = await make_session(pool, site["site_id"], consent=("analytics",))
    conv2 = await client.post(
        "/api/conversations",
        json={"site": site["public_id"], "primary_session_id": analytics_only["id"]},
        headers=auth(token),
    )
    sale3 = (
        await _sale(client, token, site, amount_minor=700, conversation_id=conv2.json()["conversation"]["id"])
    ).json()["sale"]
    resp = await client.post(f"/api/sales/{sale3['id']}/confirm", headers=auth(token))
    assert resp.status_code == 200
    assert resp.json()["sale"]["status"] == "CONFIRMED"
    assert (resp.json()["enqueued"], resp.json()["reason"]) == (False, "no_marketing_consent")

    sale4 = (await _sale(client, token, site, amount_minor=700)).json()["sale"]
    resp = await client.post(f"/api/sales/{sale4['id']}/confirm", headers=auth(token))
    assert (resp.json()["enqueued"], resp.json()["reason"]) == (False, "no_conversation")
    assert await _count(pool, "offline_conversion_queue", site["site_id"]) == 2


ROLES = ["owner", "admin", "operator", "analyst", "billing"]


async def test_roles_on_sales_routes(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site, other = await make_site(), await make_site()
    tokens = {role: await make_token(site["public_id"], role) for role in ROLES}
    tokens["platform_admin"] = await make_token(None, None, platform_admin=True)
    tokens["other_site"] = await make_token(other["public_id"], "owner")
    owner = tokens["owner"]
    can_write = {"owner", "admin", "operator", "platform_admin"}
    can_read = can_write | {"analyst", "billing"}
    for who, token in tokens.items():
        write_site = 201 if who in can_write else 403
        write_row = 200 if who in can_write else (404 if who == "other_site" else 403)
        session = await make_session(pool, site["site_id"])
        resp = await client.post(
            "/api/conversations",
            json={"site": site["public_id"], "primary_session_id": session["id"]},
            headers=auth(token),
        )
        assert resp.status_code == write_site, (who, resp.text)
        conv = await client.post(
            "/api/conversations",
            json={"site": site["public_id"], "primary_session_id": session["id"]},
            headers=auth(owner),
        )
        conv_id = conv.json()["conversation"]["id"]
        call_id = await make_intent(pool, site["site_id"], session)
        resp = await client.post(
            f"/api/conversations/{conv_id}/links",
            json={"entity_type": "call", "entity_id": call_id},
            headers=auth(token),
        )
        assert resp.status_code == (201 if who in can_write else write_row), who
        resp = await _sale(client, token, site, amount_minor=100)
        assert resp.status_code == write_site, who
        sale = (await _sale(client, owner, site, amount_minor=100, conversation_id=conv_id)).json()["sale"]
        resp = await client.post(f"/api/sales/{sale['id']}/confirm", headers=auth(token))
        assert resp.status_code == write_row, who
        resp = await client.post(f"/api/conversations/{conv_id}/resolve", json={"status": "LOST"}, headers=auth(token))
        assert resp.status_code == write_row, who
        resp = await client.get(f"/api/sales?site={site['public_id']}", headers=auth(token))
        assert resp.status_code == (200 if who in can_read else 403), who
    assert (await client.get(f"/api/sales?site={site['public_id']}")).status_code == 401
    assert (await client.post("/api/sales", json={})).status_code == 401
    assert (await client.post("/api/conversations", json={})).status_code == 401
    assert (await client.post(f"/api/sales/{uuid.uuid4()}/confirm")).status_code == 401
    assert (await client.post(f"/api/sales/{uuid.uuid4()}/confirm", headers=auth(owner))).status_code == 404
    assert (
        await client.post(f"/api/conversations/{uuid.uuid4()}/resolve", json={"status": "WON"}, headers=auth(owner))
    ).status_code == 404
