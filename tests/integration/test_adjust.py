"""Issue 13 "Beyond one upload per click", against a real PostgreSQL and the emulator on a real
uvicorn (uploads through the uploader's engine): repeat sales of one session, the credentials
test, enhanced conversions for leads, and cancellations/restatements as adjustments."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream.config import Settings
from opsmantik_stream.enums import ActorType
from opsmantik_stream.leads.enqueue import order_id_for
from opsmantik_stream.uploads import UploadEngine, delivery
from opsmantik_stream.vault import Vault
from tests.integration._leads_support import auth, make_session
from tests.integration._uploader_support import Emu, assert_ledger_complete, fast_settings, site_credentials

pytestmark = pytest.mark.integration

OCCURRED = "2026-03-05T14:30:00+00:00"


@pytest.fixture
def fast(settings: Settings, emu_base: str) -> Settings:
    return fast_settings(settings, emu_base)


@pytest.fixture
async def engine(pool: asyncpg.Pool, fast: Settings) -> AsyncIterator[UploadEngine]:
    e = UploadEngine(pool, fast, "uploader-adj-0", seed=1)
    yield e
    await e.aclose()


async def drain(engine: UploadEngine, limit: int = 20) -> None:
    """Run the uploader until it finds nothing to do."""
    for _ in range(limit):
        if (await engine.run_once()).get("idle"):
            return
    raise AssertionError("the uploader never went idle")


async def use_destination(pool: asyncpg.Pool, fast: Settings, site: dict[str, Any], destination: str) -> None:
    assert fast.vault_key is not None
    async with pool.acquire() as conn:
        await delivery.set_credentials(
            conn,
            Vault(fast.vault_key),
            site["site_id"],
            site["public_id"],
            site_credentials(destination, requests_per_s=1000.0, conversions_per_min=1e6),
            actor_type=ActorType.CLI,
            actor_id="test",
        )
        await delivery.set_destination(
            conn, site["site_id"], site["public_id"], destination, actor_type=ActorType.CLI, actor_id="test"
        )


async def emulated(emu: Emu) -> list[dict[str, Any]]:
    r = await emu.http.get("/_emulator/state")
    r.raise_for_status()
    return list(r.json()["conversions"])


async def conversation_of(client: httpx.AsyncClient, token: str, site: dict[str, Any], session: dict[str, Any]) -> str:
    r = await client.post(
        "/api/conversations", json={"site": site["public_id"], "primary_session_id": session["id"]}, headers=auth(token)
    )
    assert r.status_code in (200, 201), r.text
    return str(r.json()["conversation"]["id"])


async def confirmed_sale(
    client: httpx.AsyncClient, token: str, site: dict[str, Any], conv_id: str | None, amount: int, **extra: Any
) -> dict[str, Any]:
    body = {"site": site["public_id"], "occurred_at": OCCURRED, "amount_minor": amount, "currency": "EUR", **extra}
    if conv_id is not None:
        body["conversation_id"] = conv_id
    r = await client.post("/api/sales", json=body, headers=auth(token))
    assert r.status_code == 201, r.text
    sale = r.json()["sale"]
    r = await client.post(f"/api/sales/{sale['id']}/confirm", headers=auth(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


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
