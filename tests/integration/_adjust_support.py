"""What the issue-13 integration tests share: the gateway in-process with Google's endpoints at
the emulator, an uploader engine, a site sent to one destination, confirmed sales, and the
queue and emulator views the tests read. (The fixtures are in ``_adjust_fixtures``.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import httpx

from opsmantik_stream.config import Settings
from opsmantik_stream.enums import ActorType
from opsmantik_stream.uploads import UploadEngine, delivery
from tests.integration._leads_support import auth
from tests.integration._uploader_support import Emu, credentials_through_delivery

OCCURRED = "2026-03-05T14:30:00+00:00"
# the emulator with no failure configured (tests that configure one start from here)
CLEAN: dict[str, Any] = {"invalid_grant_tokens": [], "conversion_actions": [], "manager_links": {}}


async def drain(engine: UploadEngine, limit: int = 20) -> None:
    """Run the uploader until it finds nothing to do."""
    for _ in range(limit):
        if (await engine.run_once()).get("idle"):
            return
    raise AssertionError("the uploader never went idle")


async def use_destination(pool: asyncpg.Pool, fast: Settings, site: dict[str, Any], destination: str) -> None:
    """Credentials for ``destination`` and the site sent there, as the CLI does it."""
    await credentials_through_delivery(pool, fast, site, destination)
    async with pool.acquire() as conn:
        await delivery.set_destination(
            conn, site["site_id"], site["public_id"], destination, actor_type=ActorType.CLI, actor_id="test"
        )


async def site_sending_to(
    make_site: Callable[..., Any], emu: Emu, pool: asyncpg.Pool, fast: Settings, destination: str
) -> dict[str, Any]:
    """A new site whose conversions go to ``destination``, with the emulator reset to no failure."""
    site: dict[str, Any] = await make_site()
    await emu.config(**CLEAN)
    await use_destination(pool, fast, site, destination)
    return site


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


async def post(client: httpx.AsyncClient, token: str, path: str, **body: Any) -> httpx.Response:
    return await client.post(path, json=body or None, headers=auth(token))


async def queue_rows(pool: asyncpg.Pool, order_id: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            """SELECT kind, status, value_minor, error_code, last_error, adjusted_at
               FROM offline_conversion_queue WHERE order_id = $1 ORDER BY created_at""",
            order_id,
        )
    )


async def emu_state(emu: Emu) -> dict[str, Any]:
    r = await emu.http.get("/_emulator/state")
    r.raise_for_status()
    return dict(r.json())
