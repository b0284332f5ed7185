"""Issue 13 "Beyond one upload per click", against a real PostgreSQL and the emulator on a real
uvicorn (uploads through the uploader's engine): repeat sales of one session, the credentials
test, enhanced conversions for leads, and cancellations/restatements as adjustments."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
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
from opsmantik_stream.leads.enqueue import order_id_for
from opsmantik_stream.uploads import UploadEngine, delivery
from opsmantik_stream.vault import Vault
from tests.conftest import _make_app
from tests.integration._leads_support import auth, make_intent, make_session
from tests.integration._uploader_support import Emu, assert_ledger_complete, fast_settings, site_credentials

pytestmark = pytest.mark.integration

OCCURRED = "2026-03-05T14:30:00+00:00"


@pytest.fixture
def fast(settings: Settings, emu_base: str) -> Settings:
    return fast_settings(settings, emu_base)


@pytest.fixture
async def client(fast: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process with the deployment's Google endpoints at the emulator."""
    app = _make_app(fast, pool, ray_enabled=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


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


# --------------------------------------------------------------------------- 4. credentials test


#: emulator knobs the shared reset leaves alone (one test's account set-up must not leak)
CLEAN: dict[str, Any] = {"invalid_grant_tokens": [], "conversion_actions": [], "manager_links": {}}


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
    site = await make_site()
    await emu.config(**CLEAN)
    await use_destination(pool, fast, site, "google_ads")
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
    site = await make_site()
    await emu.config(**CLEAN)
    await use_destination(pool, fast, site, destination)
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
    site = await make_site()
    await emu.config(**CLEAN)
    await use_destination(pool, fast, site, "google_ads")
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


# --------------------------------------------------------------------------- 2. cancel / restate


async def _post(client: httpx.AsyncClient, token: str, path: str, **body: Any) -> httpx.Response:
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
    site = await make_site()
    await emu.config(**CLEAN)
    await use_destination(pool, fast, site, destination)
    token = await make_token(site["public_id"], "operator")
    conv_id = await conversation_of(client, token, site, await make_session(pool, site["site_id"]))
    kept = await confirmed_sale(client, token, site, conv_id, 12000)
    dropped = await confirmed_sale(client, token, site, conv_id, 5000)
    r = await _post(client, token, f"/api/sales/{kept['sale']['id']}/restate", amount_minor=9000, currency="EUR")
    assert r.status_code == 200, r.text
    assert r.json()["conversion"]["outcome"] == "restated" and r.json()["sale"]["amount_minor"] == 9000
    r = await _post(client, token, f"/api/sales/{dropped['sale']['id']}/cancel")
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
        r = await _post(client, token, f"/api/sales/{kept['sale']['id']}/restate", **body)
        assert r.status_code in (400, 422), (body, r.text)
    r = await _post(client, token, f"/api/sales/{dropped['sale']['id']}/restate", amount_minor=10)
    assert r.status_code == 409 and r.json()["error"] == "sale_not_confirmed"
    analyst = await make_token(site["public_id"], "analyst")
    assert (await _post(client, analyst, f"/api/sales/{kept['sale']['id']}/cancel")).status_code == 403


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
    site = await make_site()
    await emu.config(**CLEAN)
    await use_destination(pool, fast, site, destination)
    token = await make_token(site["public_id"], "operator")
    conv_id = await conversation_of(client, token, site, await make_session(pool, site["site_id"]))
    sale = await confirmed_sale(client, token, site, conv_id, 12000)
    order = sale["order_id"]
    await drain(engine)
    assert [r["status"] for r in await queue_rows(pool, order)] == ["COMPLETED"]

    r = await _post(client, token, f"/api/sales/{sale['sale']['id']}/restate", amount_minor=8000)
    assert r.status_code == 200, r.text
    assert r.json()["conversion"]["outcome"] == "adjustment_queued"
    assert r.json()["conversion"]["adjustment_kind"] == "restatement"
    await drain(engine)
    state = await emu_state(emu)
    [record] = state["conversions"]
    assert record["value"] == 80.0 and state["adjustments"] == {order: 1}

    r = await _post(client, token, f"/api/sales/{sale['sale']['id']}/cancel")
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
    r = await _post(client, token, f"/api/sales/{sale['sale']['id']}/cancel")
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
    site = await make_site()
    await emu.config(**CLEAN)
    await use_destination(pool, fast, site, "google_ads")
    token = await make_token(site["public_id"], "operator")
    # the seal's conversion time is now: let the emulator accept an adjustment of it at once
    await emu.config(adjustment_min_age_s=0)
    call = await make_intent(pool, site["site_id"], await make_session(pool, site["site_id"]))
    r = await _post(client, token, f"/api/calls/{call}/actions", action="seal", value_minor=5000, currency="EUR")
    assert r.status_code == 200 and r.json()["conversion"]["enqueued"] is True, r.text
    order = r.json()["conversion"]["order_id"]
    await drain(engine)
    r = await _post(client, token, f"/api/calls/{call}/actions", action="undo")
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
    site = await make_site()
    await emu.config(**CLEAN)
    await use_destination(pool, fast, site, "google_ads")
    token = await make_token(site["public_id"], "operator")
    conv_id = await conversation_of(client, token, site, await make_session(pool, site["site_id"]))
    body = {"site": site["public_id"], "occurred_at": "2026-01-01T00:00:00Z", "amount_minor": 100, "currency": "EUR"}
    r = await client.post("/api/sales", json={**body, "conversation_id": conv_id}, headers=auth(token))
    sale_id = r.json()["sale"]["id"]
    await client.post(f"/api/sales/{sale_id}/confirm", headers=auth(token))
    await drain(engine)
    # too recent: the emulator wants the conversion older than a day
    await emu.config(adjustment_min_age_s=10 * 365 * 86400.0)
    await _post(client, token, f"/api/sales/{sale_id}/restate", amount_minor=300)
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
