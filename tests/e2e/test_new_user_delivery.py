"""Issue 11: the README's scripted flow as a new user follows it, to a delivered conversion.

For each destination: ``opsmantik site create``, ``opsmantik token create``, ``opsmantik site
credentials set --destination ...`` (the deployment's Google endpoints point at the emulator,
as the README says), a tracker phone click with a gclid and marketing consent, a seal with a
value; then the running uploaders deliver it, and the emulator holds exactly one conversion
with that gclid, value, currency and order id, with a complete ledger. Served by a real
uvicorn with the actors (``live_server``), the emulator on its own uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from actors.runtime import get_actor
from opsmantik_stream.cli import main as cli_main
from opsmantik_stream.config import Settings
from opsmantik_stream.leads.enqueue import order_id_for
from tests.integration._uploader_support import Emu, emulator_settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ACCOUNT = "1234567890"


@pytest.fixture
def settings(settings: Settings, emulator_base: str) -> Settings:
    """The stack a new user runs: Google's endpoints set to `opsmantik emulator` (a deployment
    setting), short idle polls so the test does not wait for nothing."""
    return emulator_settings(settings, emulator_base).with_overrides(uploaders=1, upload_idle_poll_s=0.1)


async def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """Run one `opsmantik ... --json` command the way a shell would, and read its JSON."""
    code = await asyncio.to_thread(cli_main, [*args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return dict(json.loads(out.strip().splitlines()[-1]))


def _phone_click(site: dict[str, Any], sid: str, gclid: str) -> dict[str, Any]:
    """What core.js sends for a tel: click from an Ads visit with marketing consent."""
    return {
        "s": site["public_id"],
        "u": f"https://{site['domain']}/contact?gclid={gclid}",
        "sid": sid,
        "eid": str(uuid.uuid4()),
        "ec": "conversion",
        "ea": "phone_call",
        "el": "tel:05551112233",
        "r": "https://www.google.com/",
        "consent": ["analytics", "marketing"],
        "meta": {"fp": f"fp-{sid[:8]}", "gclid": gclid},
    }


async def test_new_user_gets_a_delivered_conversion_on_either_destination(
    live_server: str,
    stack: dict[str, Any],
    settings: Settings,
    db_url: str,
    emulator_base: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emu = Emu(emulator_base)
    await emu.reset()
    for key, value in {
        "OPSMANTIK_DATABASE_URL": db_url,
        "OPSMANTIK_DATA_DIR": settings.data_dir,
        "OPSMANTIK_VAULT_KEY": settings.vault_key or "",
        "OPSMANTIK_CRED_CLIENT_SECRET": "new-user-client-secret",
        "OPSMANTIK_CRED_REFRESH_TOKEN": "new-user-refresh-token",
    }.items():
        monkeypatch.setenv(key, value)
    for name in stack["uploaders"]:  # `opsmantik serve` runs the uploaders' loops
        await get_actor(name, settings.ray_namespace).start.remote()
    try:
        # one stack, one new user per destination (a stack per destination costs seconds)
        for destination in ("google_ads", "data_manager"):
            await _new_user_flow(live_server, emu, capsys, destination)
    finally:
        await emu.aclose()


async def _new_user_flow(live_server: str, emu: Emu, capsys: pytest.CaptureFixture[str], destination: str) -> None:
    domain = f"shop-{uuid.uuid4().hex[:6]}.example.com"
    site = await _cli(capsys, "site", "create", "--name", "New user shop", "--domain", domain)
    pid = site["public_id"]
    token = (await _cli(capsys, "token", "create", "--user", "me@example.com", "--site", pid, "--role", "owner"))[
        "token"
    ]
    creds = await _cli(
        capsys,
        "site",
        "credentials",
        "set",
        pid,
        "--destination",
        destination,
        "--customer-id",
        ACCOUNT,
        "--client-id",
        "new-user-client",
        "--conversion-action",
        f"customers/{ACCOUNT}/conversionActions/987654",
    )
    # the only destination with credentials is the site's destination, and the answer says so
    assert creds["site_destination"] == destination
    assert creds["site_destination_changed"] is (destination != "data_manager")
    listed = await _cli(capsys, "site", "list")
    assert next(s for s in listed["sites"] if s["public_id"] == pid)["destination"] == destination

    gclid = f"Cj0KNewUser{destination}"
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as http:
        sid = str(uuid.uuid4())
        r = await http.post("/api/sync", json=_phone_click(site, sid, gclid), headers={"Origin": f"https://{domain}"})
        assert r.status_code == 202, r.text
        r = await http.get(f"/api/sites/{pid}/intents", params={"status": "intent"}, headers=bearer)
        [intent] = r.json()["intents"]
        r = await http.post(
            f"/api/calls/{intent['id']}/actions",
            json={"action": "seal", "value_minor": 250_000, "currency": "TRY"},
            headers=bearer,
        )
        assert r.status_code == 200 and r.json()["conversion"]["enqueued"] is True, r.text
        order_id = order_id_for(site["site_id"], "call", intent["id"])

        deadline = asyncio.get_running_loop().time() + 60
        while True:
            rows = (await http.get("/api/oci/rows", params={"site": pid}, headers=bearer)).json()["rows"]
            if rows and rows[0]["status"] == "COMPLETED":
                break
            assert asyncio.get_running_loop().time() < deadline, rows
            await asyncio.sleep(0.1)
        ledger = (await http.get("/api/oci/ledger", params={"site": pid}, headers=bearer)).json()
    [row] = rows
    assert row["destination"] == destination and row["order_id"] == order_id and row["attempt"] == 1
    accepted = (await emu.http.get("/_emulator/state")).json()["conversions"]
    mine = [c for c in accepted if c["click_id"] == gclid]
    assert len(mine) == 1, accepted
    [conv] = mine
    assert (conv["api"], conv["order_id"], conv["value"], conv["currency"]) == (destination, order_id, 2500.0, "TRY")
    assert conv["account"] == ACCOUNT and conv["click_id_type"] == "gclid"
    # a complete ledger: one attempt, STARTED then FINISHED, nothing unfinished
    assert ledger["unfinished"] == 0
    assert sorted(a["phase"] for a in ledger["attempts"]) == ["FINISHED", "STARTED"]
    finished = next(a for a in ledger["attempts"] if a["phase"] == "FINISHED")
    assert finished["completed_count"] == 1 and finished["http_status"] == 200
