"""Issue 13 "Beyond one upload per click", against a real PostgreSQL and the emulator on a real
uvicorn: the credentials test before the first lead, and enhanced conversions for leads
(identifier-only uploads, identifiers a form captured, the enhanced-conversions errors)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.app import gateway_settings
from opsmantik_stream.capture import form_identifiers
from opsmantik_stream.cli import main as cli_main
from opsmantik_stream.config import Settings
from opsmantik_stream.enums import ActorType, IntentAction
from opsmantik_stream.uploads import UploadEngine, delivery
from tests.conftest import _make_app
from tests.integration._adjust_fixtures import client_fixture, engine_fixture, fast_fixture  # noqa: F401  (fixtures)
from tests.integration._adjust_support import (
    CLEAN,
    OCCURRED,
    confirmed_sale,
    conversation_of,
    drain,
    emulated,
    site_sending_to,
    use_destination,
)
from tests.integration._leads_support import auth, make_session
from tests.integration._uploader_support import Emu, assert_ledger_complete

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- 4. credentials test


#: emulator knobs the shared reset leaves alone (one test's account set-up must not leak)


async def _test_creds(client: httpx.AsyncClient, token: str, site: dict[str, Any], **body: Any) -> dict[str, Any]:
    r = await client.post(f"/api/sites/{site['public_id']}/credentials/test", json=body, headers=auth(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.mark.parametrize("destination", ["google_ads", "data_manager"])
async def test_credentials_test_works_and_stores_nothing(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    fast: Settings,
    emu: Emu,
    destination: str,
) -> None:
    site = await make_site()
    await emu.config(**CLEAN)
    owner = await make_token(site["public_id"], "owner")
    missing = await _test_creds(client, owner, site, destination=destination)
    assert missing["ok"] is False and missing["steps"][0]["code"] == "MISSING_CREDENTIALS"
    assert f"opsmantik site credentials set {site['public_id']} --destination {destination}" in missing["summary"]
    await use_destination(pool, fast, site, destination)
    got = await _test_creds(client, owner, site)
    assert got["destination"] == destination and got["ok"] is True, got["steps"]
    assert [(s["step"], s["ok"]) for s in got["steps"]] == [("token", True), ("upload", True)]
    assert "nothing was stored" in got["summary"]
    state = await emu.state()
    assert state["accepted_count"] == 0 and state["api_requests"] == 1 and state["token_requests"] >= 1
    assert "secret-value" not in json.dumps(got) and "refresh-value" not in json.dumps(got)
    audit = await pool.fetchrow(
        "SELECT payload FROM audit_log WHERE action = 'credentials.test' AND site_id = $1 ORDER BY id DESC LIMIT 1",
        uuid.UUID(site["site_id"]),
    )
    assert audit["payload"] == {"destination": destination, "ok": True, "code": None}
    operator_token = await make_token(site["public_id"], "operator")
    r = await client.post(f"/api/sites/{site['public_id']}/credentials/test", headers=auth(operator_token))
    assert r.status_code == 403
    r = await client.post(
        f"/api/sites/{site['public_id']}/credentials/test", json={"destination": "x"}, headers=auth(owner)
    )
    assert r.status_code == 422 and r.headers["x-opsmantik-error-code"] == "invalid_destination"


@pytest.mark.parametrize(
    ("destination", "emulator", "step", "code", "words"),
    [
        ("google_ads", {"invalid_grant_tokens": ["refresh-value"]}, "token", "invalid_grant", "expired or revoked"),
        ("data_manager", {"invalid_grant_tokens": ["refresh-value"]}, "token", "invalid_grant", "expired or revoked"),
        (
            "google_ads",
            {"not_allowlisted": ["1234567890"]},
            "upload",
            "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE",
            "site destination set {pid} data_manager",
        ),
        ("google_ads", {"conversion_actions": ["111"]}, "upload", "NO_CONVERSION_ACTION_FOUND", "does not exist"),
        ("data_manager", {"conversion_actions": ["111"]}, "upload", "INVALID_CONVERSION_ACTION_ID", "does not exist"),
        (
            "google_ads",
            {"manager_links": {"1234567890": ["5550001111"]}},
            "upload",
            "USER_PERMISSION_DENIED",
            "--login-customer-id",
        ),
        (
            "data_manager",
            {"manager_links": {"1234567890": ["5550001111"]}},
            "upload",
            "PERMISSION_DENIED",
            "--login-customer-id",
        ),
    ],
)
async def test_credentials_test_says_what_does_not_work(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    fast: Settings,
    emu: Emu,
    destination: str,
    emulator: dict[str, Any],
    step: str,
    code: str,
    words: str,
) -> None:
    site = await make_site()
    owner = await make_token(site["public_id"], "owner")
    await use_destination(pool, fast, site, destination)
    await emu.config(**{**CLEAN, **emulator})
    got = await _test_creds(client, owner, site)
    assert got["ok"] is False, got
    failed = got["steps"][-1]
    assert (failed["step"], failed["ok"], failed["code"]) == (step, False, code), got["steps"]
    assert words.format(pid=site["public_id"]) in failed["detail"] and failed["detail"] in got["summary"]
    assert (await emu.state())["accepted_count"] == 0


async def test_the_served_gateway_tests_credentials_in_an_uploader(
    pool: asyncpg.Pool,
    gateway_pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    emu: Emu,
    uploader_stack: Callable[..., Any],
) -> None:
    """The served gateway never holds the vault key (``gateway_settings`` drops it): the test
    runs in an uploader actor, which does, and the answer is the same."""
    s, _ = uploader_stack(1)
    served = gateway_settings(s)
    assert served.vault_key is None and not served.vault_open_credentials
    site = await make_site()
    await emu.config(**CLEAN)
    await use_destination(pool, s, site, "google_ads")
    owner = await make_token(site["public_id"], "owner")
    app = _make_app(served, gateway_pool, ray_enabled=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        got = await _test_creds(c, owner, site)
        assert [(st["step"], st["ok"]) for st in got["steps"]] == [("token", True), ("upload", True)], got
        await emu.config(invalid_grant_tokens=["refresh-value"])
        bad = await _test_creds(c, owner, site)
        assert bad["ok"] is False and bad["steps"][-1]["code"] == "invalid_grant"
        r = await c.post(
            f"/api/sites/{site['public_id']}/credentials/test", json={"destination": "x"}, headers=auth(owner)
        )
        assert r.status_code == 422 and r.headers["x-opsmantik-error-code"] == "invalid_destination"
    assert (await emu.state())["accepted_count"] == 0


async def test_credentials_test_from_the_cli(
    pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    fast: Settings,
    emu: Emu,
    emu_base: str,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    site = await site_sending_to(make_site, emu, pool, fast, "google_ads")
    # an operator's machine: the key file `serve` created, no key in the environment
    key_file = tmp_path / "vault.key"
    key_file.write_text(fast.vault_key or "")
    monkeypatch.delenv("OPSMANTIK_VAULT_KEY", raising=False)
    for var, value in {
        "OPSMANTIK_DATABASE_URL": db_url,
        "OPSMANTIK_VAULT_KEY_FILE": str(key_file),
        "OPSMANTIK_DATA_DIR": fast.data_dir,
        "OPSMANTIK_GOOGLE_ADS_BASE_URL": emu_base,
        "OPSMANTIK_DATA_MANAGER_BASE_URL": emu_base,
        "OPSMANTIK_GOOGLE_TOKEN_URL": f"{emu_base}/token",
    }.items():
        monkeypatch.setenv(var, value)
    args = ["site", "credentials", "test", site["public_id"]]
    assert await asyncio.to_thread(cli_main, [*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    await emu.config(invalid_grant_tokens=["refresh-value"])
    assert await asyncio.to_thread(cli_main, args) == 1
    out = capsys.readouterr().out
    assert "FAIL token" in out and "expired or revoked" in out
    with pytest.raises(SystemExit) as bad:
        await asyncio.to_thread(cli_main, [*args, "--destination", "meta"])
    assert bad.value.code == 2


# --------------------------------------------------------------------------- 1. enhanced conversions


JANE = hashlib.sha256(b"janedoe@gmail.com").hexdigest()
JANE_PHONE = hashlib.sha256(b"+905321234567").hexdigest()


@pytest.mark.parametrize("destination", ["google_ads", "data_manager"])
async def test_identifier_only_conversion_is_uploaded_when_the_site_opts_in(
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
    owner = await make_token(site["public_id"], "owner")
    no_click = await make_session(pool, site["site_id"], gclid=None)
    conv_id = await conversation_of(client, owner, site, no_click)
    contact = {"email": "  Jane.Doe@Gmail.com ", "phone": "+90 532 123 45 67"}

    # off by default: the answer says why nothing was queued
    off = await confirmed_sale(client, owner, site, conv_id, 5000, **contact)
    assert (off["enqueued"], off["reason"]) == (False, "no_click_id_enhanced_conversions_off")
    assert off["sale"]["has_email"] is True and "Jane" not in json.dumps(off) and JANE not in json.dumps(off)

    r = await client.put(
        f"/api/sites/{site['public_id']}/enhanced-conversions", json={"enabled": True}, headers=auth(owner)
    )
    assert r.status_code == 200 and r.json()["enhanced_conversions"] is True, r.text
    got = await confirmed_sale(client, owner, site, conv_id, 7000, **contact)
    assert got["enqueued"] is True and got["click_id_type"] is None, got
    row = await pool.fetchrow(
        "SELECT gclid, email_sha256, phone_sha256 FROM offline_conversion_queue WHERE order_id = $1", got["order_id"]
    )
    assert (row["gclid"], row["email_sha256"], row["phone_sha256"]) == (None, JANE, JANE_PHONE)

    # no identifier and no click id: still nothing to upload; no marketing consent: never
    bare = await confirmed_sale(client, owner, site, conv_id, 100)
    assert (bare["enqueued"], bare["reason"]) == (False, "no_click_id")
    analytics_only = await make_session(pool, site["site_id"], gclid=None, consent=("analytics",))
    refused = await confirmed_sale(
        client, owner, site, await conversation_of(client, owner, site, analytics_only), 100, **contact
    )
    assert (refused["enqueued"], refused["reason"]) == (False, "no_marketing_consent")

    await drain(engine)
    [sent] = await emulated(emu)
    assert sent["order_id"] == got["order_id"] and sent["click_id"] is None and sent["value"] == 70.0
    key = ("hashedEmail", "hashedPhoneNumber") if destination == "google_ads" else ("emailAddress", "phoneNumber")
    assert sent["identifiers"] == [{key[0]: JANE}, {key[1]: JANE_PHONE}]
    bad = await client.post(
        "/api/sales",
        json={"site": site["public_id"], "occurred_at": OCCURRED, "amount_minor": 1, "phone": "5321234567"},
        headers=auth(owner),
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_phone"
    audits = await pool.fetch("SELECT payload FROM audit_log WHERE site_id = $1", uuid.UUID(site["site_id"]))
    assert not any("jane" in json.dumps(a["payload"]).lower() or JANE in json.dumps(a["payload"]) for a in audits)


async def test_identifiers_a_form_captured_fill_the_sessions_conversion(
    pool: asyncpg.Pool,
    gateway_pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    fast: Settings,
    emu: Emu,
    engine: UploadEngine,
) -> None:
    """A form with data-om-capture sends meta.om_email/om_phone; ingest keeps only what
    capture.form_identifiers returns (the hashes) in the event's metadata. A conversion of that
    session whose source has no identifier of its own is queued with them (without a click id
    once the site opted in) and uploaded; erasing the address finds the session by its hash."""
    site = await site_sending_to(make_site, emu, pool, fast, "google_ads")
    owner = await make_token(site["public_id"], "owner")
    session = await make_session(pool, site["site_id"], gclid=None)
    meta = form_identifiers(IntentAction.FORM, "  Jane.Doe@Gmail.com ", "+90 532 123 45 67")
    assert meta == {"email_sha256": JANE, "phone_sha256": JANE_PHONE}
    # only a form intent captures; a number not in international form is dropped, never guessed
    assert form_identifiers(IntentAction.PHONE, "jane@example.com", None) == {}
    assert form_identifiers(IntentAction.FORM, "not an address", "0532 123 45 67") == {}
    await pool.execute(
        """INSERT INTO events (session_id, session_month, site_id, url, event_category, event_action, metadata)
           VALUES ($1, $2, $3, 'https://shop.example/quote', 'conversion', 'form_submit', $4)""",
        uuid.UUID(session["id"]),
        session["created_month"],
        uuid.UUID(site["site_id"]),
        {"lead_score": 40, **meta},
    )
    app = _make_app(fast, gateway_pool, ray_enabled=False)  # the gateway's own database role
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        conv_id = await conversation_of(client, owner, site, session)
        off = await confirmed_sale(client, owner, site, conv_id, 5000)
        assert (off["enqueued"], off["reason"]) == (False, "no_click_id_enhanced_conversions_off")
        r = await client.put(
            f"/api/sites/{site['public_id']}/enhanced-conversions", json={"enabled": True}, headers=auth(owner)
        )
        assert r.status_code == 200, r.text
        got = await confirmed_sale(client, owner, site, conv_id, 7000)
        assert got["enqueued"] is True and got["click_id_type"] is None, got
        row = await pool.fetchrow(
            "SELECT email_sha256, phone_sha256 FROM offline_conversion_queue WHERE order_id = $1", got["order_id"]
        )
        assert (row["email_sha256"], row["phone_sha256"]) == (JANE, JANE_PHONE)
        await drain(engine)
        [sent] = await emulated(emu)
        assert sent["order_id"] == got["order_id"]
        assert sent["identifiers"] == [{"hashedEmail": JANE}, {"hashedPhoneNumber": JANE_PHONE}]

        r = await client.post(
            "/api/privacy/erase",
            json={"site": site["public_id"], "identifier_type": "email", "identifier_value": "janedoe@gmail.com"},
            headers=auth(owner),
        )
        assert r.status_code == 200, r.text
    left = await pool.fetchval(
        "SELECT count(*) FROM events WHERE session_id = $1 AND metadata ?| array['email_sha256', 'phone_sha256']",
        uuid.UUID(session["id"]),
    )
    assert left == 0
    row = await pool.fetchrow(
        "SELECT email_sha256, phone_sha256 FROM offline_conversion_queue WHERE order_id = $1", got["order_id"]
    )
    assert (row["email_sha256"], row["phone_sha256"]) == (None, None)


@pytest.mark.parametrize(
    ("knob", "code"),
    [
        ("ec_leads_disabled", "CUSTOMER_NOT_ENABLED_ENHANCED_CONVERSIONS_FOR_LEADS"),
        ("data_terms_not_accepted", "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS"),
    ],
)
async def test_enhanced_conversions_not_enabled_blocks_with_a_hint(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    make_site: Callable[..., Any],
    make_token: Callable[..., Any],
    fast: Settings,
    emu: Emu,
    engine: UploadEngine,
    knob: str,
    code: str,
) -> None:
    site = await make_site()
    await emu.config(**CLEAN, **{knob: ["1234567890"]})
    await use_destination(pool, fast, site, "google_ads")
    owner = await make_token(site["public_id"], "owner")
    async with pool.acquire() as conn:
        await delivery.set_enhanced_conversions(conn, site["site_id"], True, actor_type=ActorType.CLI, actor_id="t")
    conv_id = await conversation_of(client, owner, site, await make_session(pool, site["site_id"], gclid=None))
    got = await confirmed_sale(client, owner, site, conv_id, 7000, email="jane@example.com")
    assert got["enqueued"] is True
    await drain(engine)
    row = await pool.fetchrow(
        "SELECT status, error_code, last_error FROM offline_conversion_queue WHERE order_id = $1", got["order_id"]
    )
    assert (row["status"], row["error_code"]) == ("BLOCKED", code)
    assert "enhanced conversions for leads" in row["last_error"]
    assert f"opsmantik site enhanced-conversions set {site['public_id']} off" in row["last_error"]
    assert (await emu.state())["accepted_count"] == 0
    await assert_ledger_complete(pool)
