"""Issue 13 "Beyond one upload per click", against a real PostgreSQL and the emulator on a real
uvicorn (uploads through the uploader's engine): repeat sales of one session, and
cancellations/restatements as adjustments. (The credentials test and enhanced conversions:
test_credentials_and_identifiers.py.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream.cli import main as cli_main
from opsmantik_stream.config import Settings
from opsmantik_stream.enums import ActorType
from opsmantik_stream.leads.enqueue import order_id_for
from opsmantik_stream.uploads import UploadEngine, delivery
from tests.integration._adjust_fixtures import client_fixture, engine_fixture, fast_fixture  # noqa: F401  (fixtures)
from tests.integration._adjust_support import (
    confirmed_sale,
    conversation_of,
    drain,
    emu_state,
    emulated,
    post,
    queue_rows,
    site_sending_to,
    use_destination,
)
from tests.integration._leads_support import auth, make_intent, make_session
from tests.integration._uploader_support import Emu, assert_ledger_complete

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- 3. repeat sales


@pytest.mark.parametrize("destination", ["google_ads", "data_manager"])
async def test_two_sales_of_one_session_are_both_delivered(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    fast: Settings,
    emu: Emu,
    engine: UploadEngine,
    destination: str,
) -> None:
    site = await make_site()
    await use_destination(pool, fast, site, destination)
    token = await make_token(site["public_id"], "operator")
    session = await make_session(pool, site["site_id"], gclid=f"gclid-{uuid.uuid4().hex[:10]}")
    conv_id = await conversation_of(client, token, site, session)
    first = await confirmed_sale(client, token, site, conv_id, 12000)
    second = await confirmed_sale(client, token, site, conv_id, 3450)
    assert first["enqueued"] is True and second["enqueued"] is True, (first, second)
    assert first["order_id"] != second["order_id"]
    assert second["order_id"] == order_id_for(site["site_id"], "sale", second["sale"]["id"])
    await drain(engine)
    got = {c["order_id"]: c for c in await emulated(emu)}
    assert set(got) == {first["order_id"], second["order_id"]}
    assert (got[first["order_id"]]["value"], got[second["order_id"]]["value"]) == (120.0, 34.5)
    statuses = await pool.fetch(
        "SELECT status FROM offline_conversion_queue WHERE site_id = $1", uuid.UUID(site["site_id"])
    )
    assert [r["status"] for r in statuses] == ["COMPLETED", "COMPLETED"]
    await assert_ledger_complete(pool)


# --------------------------------------------------------------------------- 2. cancel / restate


@pytest.mark.parametrize("destination", ["google_ads", "data_manager"])
async def test_cancel_and_restate_before_upload_change_the_queued_row(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    fast: Settings,
    emu: Emu,
    engine: UploadEngine,
    destination: str,
) -> None:
    site = await site_sending_to(make_site, emu, pool, fast, destination)
    token = await make_token(site["public_id"], "operator")
    conv_id = await conversation_of(client, token, site, await make_session(pool, site["site_id"]))
    kept = await confirmed_sale(client, token, site, conv_id, 12000)
    dropped = await confirmed_sale(client, token, site, conv_id, 5000)
    r = await post(client, token, f"/api/sales/{kept['sale']['id']}/restate", amount_minor=9000, currency="EUR")
    assert r.status_code == 200, r.text
    assert r.json()["conversion"]["outcome"] == "restated" and r.json()["sale"]["amount_minor"] == 9000
    r = await post(client, token, f"/api/sales/{dropped['sale']['id']}/cancel")
    assert r.status_code == 200 and r.json()["conversion"]["outcome"] == "voided", r.text
    assert r.json()["sale"]["status"] == "CANCELED"
    await drain(engine)
    [sent] = await emulated(emu)
    assert (sent["order_id"], sent["value"]) == (kept["order_id"], 90.0)
    [voided] = await queue_rows(pool, dropped["order_id"])
    assert (voided["status"], voided["error_code"]) == ("FAILED", "VOIDED")
    assert (await emu_state(emu))["adjustments"] == {}
    # bad input changes nothing
    for body in ({"amount_minor": -1}, {"amount_minor": 0}, {"amount_minor": 5, "currency": "eur"}, {}):
        r = await post(client, token, f"/api/sales/{kept['sale']['id']}/restate", **body)
        assert r.status_code in (400, 422), (body, r.text)
    r = await post(client, token, f"/api/sales/{dropped['sale']['id']}/restate", amount_minor=10)
    assert r.status_code == 409 and r.json()["error"] == "sale_not_confirmed"
    analyst = await make_token(site["public_id"], "analyst")
    assert (await post(client, analyst, f"/api/sales/{kept['sale']['id']}/cancel")).status_code == 403


@pytest.mark.parametrize("destination", ["google_ads", "data_manager"])
async def test_restate_then_cancel_after_upload_are_adjustments_delivered_once(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    fast: Settings,
    emu: Emu,
    engine: UploadEngine,
    destination: str,
) -> None:
    site = await site_sending_to(make_site, emu, pool, fast, destination)
    token = await make_token(site["public_id"], "operator")
    conv_id = await conversation_of(client, token, site, await make_session(pool, site["site_id"]))
    sale = await confirmed_sale(client, token, site, conv_id, 12000)
    order = sale["order_id"]
    await drain(engine)
    assert [r["status"] for r in await queue_rows(pool, order)] == ["COMPLETED"]

    r = await post(client, token, f"/api/sales/{sale['sale']['id']}/restate", amount_minor=8000)
    assert r.status_code == 200, r.text
    assert r.json()["conversion"]["outcome"] == "adjustment_queued"
    assert r.json()["conversion"]["adjustment_kind"] == "restatement"
    await drain(engine)
    state = await emu_state(emu)
    [record] = state["conversions"]
    assert record["value"] == 80.0 and state["adjustments"] == {order: 1}

    r = await post(client, token, f"/api/sales/{sale['sale']['id']}/cancel")
    assert r.status_code == 200 and r.json()["conversion"]["adjustment_kind"] == "retraction", r.text
    await drain(engine)
    state = await emu_state(emu)
    rows = await queue_rows(pool, order)
    assert [r["kind"] for r in rows] == ["conversion", "restatement", "retraction"]
    assert rows[1]["adjusted_at"] < rows[2]["adjusted_at"]
    if destination == "google_ads":
        assert [r["status"] for r in rows] == ["COMPLETED", "COMPLETED", "COMPLETED"]
        assert state["adjustments"] == {order: 2} and state["conversions"][0]["retracted"] is True
        assert [(a["type"], a["value"]) for a in state["adjustment_log"]] == [
            ("RESTATEMENT", 80.0),
            ("RETRACTION", None),
        ]
    else:
        # Data Manager cannot retract: a clear refused state with the reason, nothing sent
        assert [r["status"] for r in rows] == ["COMPLETED", "COMPLETED", "FAILED"]
        assert rows[2]["error_code"] == "RETRACTION_NOT_SUPPORTED"
        assert "cannot retract" in rows[2]["last_error"]
        assert state["adjustments"] == {order: 1} and state["order_id_counts"] == {order: 1}
    await assert_ledger_complete(pool)
    ledger = await pool.fetch(
        "SELECT row_count FROM provider_upload_attempts WHERE site_id = $1 AND phase = 'FINISHED' AND row_count > 0",
        uuid.UUID(site["site_id"]),
    )
    assert len(ledger) == 3  # the conversion, the restatement, the retraction: one attempt each
    r = await post(client, token, f"/api/sales/{sale['sale']['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"] == "sale_canceled"
    actions = await pool.fetch(
        "SELECT action FROM audit_log WHERE site_id = $1 AND action LIKE 'sale.%' ORDER BY id",
        uuid.UUID(site["site_id"]),
    )
    assert [a["action"] for a in actions][-2:] == ["sale.restate", "sale.cancel"]


async def test_undo_after_upload_retracts_the_call_conversion(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    fast: Settings,
    emu: Emu,
    engine: UploadEngine,
) -> None:
    site = await site_sending_to(make_site, emu, pool, fast, "google_ads")
    token = await make_token(site["public_id"], "operator")
    # the seal's conversion time is now: let the emulator accept an adjustment of it at once
    await emu.config(adjustment_min_age_s=0)
    call = await make_intent(pool, site["site_id"], await make_session(pool, site["site_id"]))
    r = await post(client, token, f"/api/calls/{call}/actions", action="seal", value_minor=5000, currency="EUR")
    assert r.status_code == 200 and r.json()["conversion"]["enqueued"] is True, r.text
    order = r.json()["conversion"]["order_id"]
    await drain(engine)
    r = await post(client, token, f"/api/calls/{call}/actions", action="undo")
    assert r.status_code == 200, r.text
    assert (r.json()["conversion_voided"], r.json()["conversion_retracted"]) == (False, True)
    await drain(engine)
    state = await emu_state(emu)
    assert [a["type"] for a in state["adjustment_log"]] == ["RETRACTION"]
    assert [(r["kind"], r["status"]) for r in await queue_rows(pool, order)] == [
        ("conversion", "COMPLETED"),
        ("retraction", "COMPLETED"),
    ]
    await assert_ledger_complete(pool)


async def test_emulator_adjustment_rules_and_their_handling(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    fast: Settings,
    emu: Emu,
    engine: UploadEngine,
) -> None:
    """Google's checks, reproduced: too recent (retried after 6 h, no attempt lost), unknown order
    id, adjustment before the conversion, a resent restatement (already applied: delivered)."""
    site = await site_sending_to(make_site, emu, pool, fast, "google_ads")
    token = await make_token(site["public_id"], "operator")
    conv_id = await conversation_of(client, token, site, await make_session(pool, site["site_id"]))
    body = {"site": site["public_id"], "occurred_at": "2026-01-01T00:00:00Z", "amount_minor": 100, "currency": "EUR"}
    r = await client.post("/api/sales", json={**body, "conversation_id": conv_id}, headers=auth(token))
    sale_id = r.json()["sale"]["id"]
    await client.post(f"/api/sales/{sale_id}/confirm", headers=auth(token))
    await drain(engine)
    # too recent: the emulator wants the conversion older than a day
    await emu.config(adjustment_min_age_s=10 * 365 * 86400.0)
    await post(client, token, f"/api/sales/{sale_id}/restate", amount_minor=300)
    await drain(engine)
    [_, restatement] = await pool.fetch(
        "SELECT status, error_code, next_retry_at - now() AS wait FROM offline_conversion_queue WHERE source_id = $1 "
        "ORDER BY created_at",
        uuid.UUID(sale_id),
    )
    assert (restatement["status"], restatement["error_code"]) == ("RETRY", "TOO_RECENT_CONVERSION")
    assert restatement["wait"].total_seconds() > 5 * 3600

    # the wire rules, straight at the emulator
    token_r = await emu.http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": "r", "client_id": "c", "client_secret": "s"},
    )
    bearer = {"authorization": f"Bearer {token_r.json()['access_token']}"}
    await emu.config(adjustment_min_age_s=0)
    action = "customers/1234567890/conversionActions/987654"
    order = await pool.fetchval(
        "SELECT order_id FROM sales s JOIN offline_conversion_queue q ON q.source_id = s.id WHERE s.id = $1 LIMIT 1",
        uuid.UUID(sale_id),
    )

    def adj(order_id: str, when: str, kind: str = "RESTATEMENT") -> dict[str, Any]:
        out: dict[str, Any] = {
            "conversionAction": action,
            "adjustmentType": kind,
            "orderId": order_id,
            "adjustmentDateTime": when,
        }
        if kind == "RESTATEMENT":
            out["restatementValue"] = {"adjustedValue": 4.0, "currencyCode": "EUR"}
        return out

    async def send(*adjs: dict[str, Any]) -> list[str | None]:
        r = await emu.http.post(
            "/v23/customers/1234567890:uploadConversionAdjustments",
            json={"conversionAdjustments": list(adjs), "partialFailure": True},
            headers=bearer,
        )
        assert r.status_code == 200, r.text
        codes: list[str | None] = [None] * len(adjs)
        for d in r.json().get("partialFailureError", {}).get("details", []):
            for e in d["errors"]:
                idx = e["location"]["fieldPathElements"][0]["index"]
                codes[idx] = next(iter(e["errorCode"].values()))
        return codes

    assert await send(
        adj("om_unknown", "2026-06-01 00:00:00+00:00"),
        adj(order, "2025-12-31 00:00:00+00:00"),
        adj(order, "2026-06-01 00:00:00+00:00"),
    ) == ["CONVERSION_NOT_FOUND", "ADJUSTMENT_PRECEDES_CONVERSION", None]
    assert await send(adj(order, "2026-06-01 00:00:00+00:00")) == ["RESTATEMENT_ALREADY_EXISTS"]
    assert await send(adj(order, "2026-05-01 00:00:00+00:00")) == ["MORE_RECENT_RESTATEMENT_FOUND"]
    assert await send(adj(order, "2026-07-01 00:00:00+00:00", "RETRACTION")) == [None]
    assert await send(adj(order, "2026-08-01 00:00:00+00:00", "RETRACTION")) == ["CONVERSION_ALREADY_RETRACTED"]
    assert [a["type"] for a in (await emu_state(emu))["adjustment_log"]] == ["RESTATEMENT", "RETRACTION"]


async def test_erasing_a_customer_removes_their_hashed_identifiers(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    fast: Settings,
) -> None:
    site = await make_site()
    owner = await make_token(site["public_id"], "owner")
    async with pool.acquire() as conn:
        await delivery.set_enhanced_conversions(conn, site["site_id"], True, actor_type=ActorType.CLI, actor_id="t")
    conv_id = await conversation_of(client, owner, site, await make_session(pool, site["site_id"], gclid=None))
    got = await confirmed_sale(client, owner, site, conv_id, 7000, email="Jane.Doe@gmail.com", phone="+905321234567")
    assert got["enqueued"] is True
    r = await client.post(
        "/api/privacy/erase",
        json={"site": site["public_id"], "identifier_type": "email", "identifier_value": "janedoe@gmail.com"},
        headers=auth(owner),
    )
    assert r.status_code == 200, r.text
    sale = await pool.fetchrow(
        "SELECT email_sha256, phone_sha256 FROM sales WHERE id = $1", uuid.UUID(got["sale"]["id"])
    )
    assert (sale["email_sha256"], sale["phone_sha256"]) == (None, None)
    row = await pool.fetchrow(
        "SELECT status, email_sha256, phone_sha256, anonymized_at FROM offline_conversion_queue WHERE order_id = $1",
        got["order_id"],
    )
    assert (row["email_sha256"], row["phone_sha256"]) == (None, None) and row["anonymized_at"] is not None
    assert row["status"] == "FAILED"


async def test_sale_cancel_and_restate_from_the_cli(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    fast: Settings,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    site = await make_site()
    token = await make_token(site["public_id"], "operator")
    conv_id = await conversation_of(client, token, site, await make_session(pool, site["site_id"]))
    sale = await confirmed_sale(client, token, site, conv_id, 12000)
    monkeypatch.setenv("OPSMANTIK_DATABASE_URL", db_url)
    monkeypatch.setenv("OPSMANTIK_DATA_DIR", fast.data_dir)
    sid = sale["sale"]["id"]
    assert await asyncio.to_thread(cli_main, ["sale", "restate", sid, "--amount-minor", "9900", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sale"]["amount_minor"] == 9900 and out["conversion"]["outcome"] == "restated"
    assert await asyncio.to_thread(cli_main, ["sale", "cancel", sid]) == 0
    assert "its conversion was not uploaded yet and is withdrawn" in capsys.readouterr().out
    assert await asyncio.to_thread(cli_main, ["sale", "cancel", sid]) == 1
    assert "sale_canceled" in capsys.readouterr().err
    assert await asyncio.to_thread(cli_main, ["sale", "cancel", "not-a-uuid"]) == 2
    [row] = await queue_rows(pool, sale["order_id"])
    assert (row["status"], row["error_code"], row["value_minor"]) == ("FAILED", "VOIDED", 9900)
    audit = await pool.fetch(
        "SELECT actor_type FROM audit_log WHERE resource_id = $1 AND action IN ('sale.restate', 'sale.cancel')", sid
    )
    assert [a["actor_type"] for a in audit] == ["cli", "cli"]
