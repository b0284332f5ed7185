"""Issue 11 "Delivery a real user can rely on", against a real PostgreSQL, real Ray uploaders
and the emulator on a real uvicorn: the site's chosen destination, BLOCKED rows that say how to
fix them, no tenant-chosen endpoints, the pool-wide 429 pause, gated and split attempts in the
ledger without spent attempts, and the visitor's consent sent as recorded."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import ray
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from opsmantik_stream.cli import main as cli_main
from opsmantik_stream.config import Settings
from opsmantik_stream.enums import ActorType
from opsmantik_stream.uploads import UploadEngine, delivery, operator
from opsmantik_stream.vault import Vault
from tests.integration._leads_support import auth, make_intent, make_session
from tests.integration._uploader_support import (
    ACTION,
    Emu,
    add_rows,
    assert_ledger_complete,
    credentials_through_delivery,
    fast_settings,
    rows_of,
    set_creds,
)
from tests.serving import serve_in_thread

pytestmark = pytest.mark.integration

ACCOUNT = "1234567890"


@pytest.fixture
def fast(settings: Settings, emu_base: str) -> Settings:
    return fast_settings(settings, emu_base)


@pytest.fixture
async def engines(pool: asyncpg.Pool, fast: Settings) -> AsyncIterator[Callable[..., UploadEngine]]:
    made: list[UploadEngine] = []

    def make(name: str = "uploader-d-0", settings: Settings | None = None, **kw: Any) -> UploadEngine:
        e = UploadEngine(pool, settings or fast, name, seed=len(made), **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        await e.aclose()


async def _received(emu: Emu, account: str = ACCOUNT) -> int:
    return sum((await emu.state())["requests_per_second"].get(account, {}).values())


# --------------------------------------------------------------------------- 1. the site's destination


async def test_destination_is_chosen_explicitly_and_shown(client, pool, make_site, make_token, fast) -> None:
    site = await make_site()
    owner = await make_token(site["public_id"], "owner")
    operator_token = await make_token(site["public_id"], "operator")
    url = f"/api/sites/{site['public_id']}/destination"
    got = await client.get(f"/api/sites/{site['public_id']}", headers=auth(owner))
    assert got.json()["destination"] == "data_manager" and got.json()["credentials"] == {}
    assert (await client.put(url, json={"destination": "google_ads"}, headers=auth(operator_token))).status_code == 403
    bad = await client.put(url, json={"destination": "meta"}, headers=auth(owner))
    assert bad.status_code == 422 and bad.headers["x-opsmantik-error-code"] == "invalid_destination"
    r = await client.put(url, json={"destination": "google_ads"}, headers=auth(owner))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["destination"], body["previous"], body["changed"], body["credentials"]) == (
        "google_ads",
        "data_manager",
        True,
        False,
    )
    assert f"opsmantik site credentials set {site['public_id']} --destination google_ads" in body["note"]
    got = (await client.get(f"/api/sites/{site['public_id']}", headers=auth(owner))).json()
    assert got["destination"] == "google_ads"
    audit = await pool.fetchrow(
        "SELECT actor_type, payload FROM audit_log WHERE action = 'site.destination_set' AND site_id = $1",
        uuid.UUID(site["site_id"]),
    )
    assert audit["actor_type"] == "user" and audit["payload"] == {
        "destination": "google_ads",
        "previous": "data_manager",
    }


async def test_credentials_for_the_only_destination_make_it_the_sites(client, pool, make_site, make_token) -> None:
    site = await make_site()
    owner = await make_token(site["public_id"], "owner")
    url = f"/api/sites/{site['public_id']}/credentials"
    base = {
        "customer_id": ACCOUNT,
        "client_id": "c",
        "client_secret": "s3cret-value",
        "refresh_token": "r3fresh-value",
        "conversion_action": ACTION,
    }
    r = await client.put(url, json={"destination": "google_ads", **base}, headers=auth(owner))
    assert r.status_code == 200, r.text
    assert r.json()["site_destination"] == "google_ads" and r.json()["site_destination_changed"] is True
    assert "google_ads is now this site's destination" in r.json()["note"]
    # credentials for a second destination do not move the site: the answer names the command
    r = await client.put(url, json={"destination": "data_manager", **base}, headers=auth(owner))
    assert r.json()["site_destination"] == "google_ads" and r.json()["site_destination_changed"] is False
    assert f"opsmantik site destination set {site['public_id']} data_manager" in r.json()["note"]
    got = (await client.get(f"/api/sites/{site['public_id']}", headers=auth(owner))).json()
    assert got["destination"] == "google_ads" and sorted(got["credentials"]) == ["data_manager", "google_ads"]
    assert "s3cret" not in json.dumps(got)
    audits = await pool.fetch(
        "SELECT actor_type, payload FROM audit_log WHERE action = 'credentials.set' AND site_id = $1 ORDER BY id",
        uuid.UUID(site["site_id"]),
    )
    assert [a["payload"]["site_destination_changed"] for a in audits] == [True, False]


async def test_missing_credentials_say_so_and_requeue_moves_rows(pool, make_site, fast, emu, engines) -> None:
    """The new user's mistake: conversions queued before credentials exist."""
    site = await make_site()  # destination: data_manager (the default)
    pid = site["public_id"]
    rows = await add_rows(pool, site["site_id"], ["Cj0Kmiss1", "Cj0Kmiss2"], destination="data_manager")
    engine = engines()
    s = await engine.run_once()
    assert s["blocked"] == 2 and s["requests_sent"] == 0
    got = await rows_of(pool, [r["id"] for r in rows])
    for r in got.values():
        assert r["status"] == "BLOCKED" and r["error_code"] == "MISSING_CREDENTIALS"
        assert "no data_manager credentials for this site" in r["last_error"]
        assert f"opsmantik site credentials set {pid} --destination data_manager" in r["last_error"]
        assert f"opsmantik site destination set {pid} google_ads" in r["last_error"]
        assert f"opsmantik oci requeue --site {pid} --status BLOCKED" in r["last_error"]
    # the fix: credentials for google_ads, the only destination with some, become the site's
    result = await credentials_through_delivery(pool, fast, site, "google_ads")
    assert result["site_destination_changed"] is True
    async with pool.acquire() as conn, conn.transaction():
        requeued = await operator.requeue(
            conn, site["site_id"], ids=None, status="BLOCKED", actor_type=ActorType.CLI, actor_id="t"
        )
    assert requeued["requeued"] == 2 and requeued["destinations"] == {"google_ads": 2}
    done = await engine.run_once()
    assert done["destination"] == "google_ads" and done["completed"] == 2
    state = await emu.state()
    assert state["order_id_counts"] == {r["order_id"]: 1 for r in rows}
    await assert_ledger_complete(pool)


@pytest.mark.parametrize("mode", ["request", "row"])
async def test_not_allowlisted_is_blocked_with_the_switch_command(pool, make_site, fast, emu, engines, mode) -> None:
    site = await make_site()
    pid = site["public_id"]
    await credentials_through_delivery(pool, fast, site, "google_ads")
    rows = await add_rows(pool, site["site_id"], ["Cj0Kallow1", "Cj0Kallow2"])
    await emu.config(not_allowlisted=[ACCOUNT], not_allowlisted_mode=mode)
    engine = engines()
    s = await engine.run_once()
    assert s["blocked"] == 2 and s["breaker_state"] == "OPEN"
    for r in (await rows_of(pool, [r["id"] for r in rows])).values():
        assert r["status"] == "BLOCKED" and r["error_code"] == "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"
        assert "Data Manager API" in r["last_error"]
        assert f"opsmantik site destination set {pid} data_manager" in r["last_error"]
        assert f"opsmantik site credentials set {pid} --destination data_manager" in r["last_error"]
        assert f"opsmantik oci requeue --site {pid} --status BLOCKED" in r["last_error"]
    # the fix the hint names: Data Manager credentials, the destination, a requeue
    await credentials_through_delivery(pool, fast, site, "data_manager")
    async with pool.acquire() as conn:
        switched = await delivery.set_destination(
            conn, site["site_id"], pid, "data_manager", actor_type=ActorType.CLI, actor_id="t"
        )
    assert switched["blocked_elsewhere"] == 2 and "requeue" in switched["note"]
    async with pool.acquire() as conn, conn.transaction():
        await operator.requeue(
            conn, site["site_id"], ids=None, status="BLOCKED", actor_type=ActorType.CLI, actor_id="t"
        )
    done = await engine.run_once()
    assert done["destination"] == "data_manager" and done["completed"] == 2
    final = await rows_of(pool, [r["id"] for r in rows])
    assert {(r["status"], r["destination"]) for r in final.values()} == {("COMPLETED", "data_manager")}


# --------------------------------------------------------------------------- 2. no tenant-chosen endpoint


@pytest.fixture
def trap() -> Iterator[dict[str, Any]]:
    """A server a tenant would like the uploader to call: counts what reaches it."""
    hits: dict[str, Any] = {"n": 0}

    async def anything(request: Request) -> JSONResponse:
        hits["n"] += 1
        return JSONResponse({"error": {"code": 400, "message": "TRAP-TEXT internal network answer"}}, status_code=400)

    app = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])
    with serve_in_thread(app) as base:
        hits["base"] = base
        yield hits


async def test_tenant_endpoints_are_refused_and_stored_ones_ignored(
    client, pool, make_site, make_token, fast, emu, engines, trap, db_url, monkeypatch, capsys
) -> None:
    site = await make_site()
    owner = await make_token(site["public_id"], "owner")
    body = {
        "destination": "google_ads",
        "customer_id": ACCOUNT,
        "client_id": "c",
        "client_secret": "s",
        "refresh_token": "r",
        "conversion_action": ACTION,
    }
    for field in ("api_base_url", "token_url"):
        r = await client.put(
            f"/api/sites/{site['public_id']}/credentials",
            json={**body, field: trap["base"]},
            headers=auth(owner),
        )
        assert r.status_code == 422 and r.headers["x-opsmantik-error-code"] == "endpoint_not_allowed", r.text
    monkeypatch.setenv("OPSMANTIK_DATABASE_URL", db_url)
    monkeypatch.setenv("OPSMANTIK_VAULT_KEY", fast.vault_key or "")
    monkeypatch.setenv("OPSMANTIK_DATA_DIR", fast.data_dir)
    args = ["site", "credentials", "set", site["public_id"], "--destination", "google_ads"]
    args += ["--customer-id", ACCOUNT, "--client-id", "c", "--client-secret", "s", "--refresh-token", "r"]
    args += ["--conversion-action", ACTION]
    assert cli_main([*args, "--api-base-url", trap["base"]]) == 2
    assert cli_main([*args, "--token-url", trap["base"] + "/token"]) == 2
    assert "deployment settings" in capsys.readouterr().err
    assert await pool.fetchval("SELECT count(*) FROM provider_credentials") == 0
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'credentials.set'") == 0
    # credentials sealed by an older version with the trap as endpoints: ignored when opened
    assert fast.vault_key is not None
    vault = Vault(fast.vault_key)
    legacy = {
        "client_id": "c",
        "client_secret": "s",
        "refresh_token": "r",
        "customer_id": ACCOUNT,
        "login_customer_id": None,
        "conversion_action": ACTION,
        "developer_token": None,
        "api_base_url": trap["base"],
        "token_url": trap["base"] + "/token",
    }
    await pool.execute(
        "INSERT INTO provider_credentials (site_id, destination, sealed, key_fingerprint, account_id) "
        "VALUES ($1, 'google_ads', $2, $3, $4)",
        uuid.UUID(site["site_id"]),
        vault.seal(legacy),
        vault.fingerprint,
        ACCOUNT,
    )
    rows = await add_rows(pool, site["site_id"], ["Cj0Ktrap", "UNPARSEABLE-trap"])
    await emu.config(outage=True)  # an error answer, whose text reaches the tenant
    s = await engines().run_once()
    assert s["requests_sent"] == 1 and trap["n"] == 0
    await emu.config(outage=False)
    s = await engines("uploader-d-1").run_once()
    assert trap["n"] == 0
    got = await rows_of(pool, [r["id"] for r in rows])
    assert got[rows[0]["id"]]["status"] == "COMPLETED"
    assert got[rows[1]["id"]]["error_code"] == "UNPARSEABLE_GCLID"
    every_error = await pool.fetch("SELECT last_error FROM offline_conversion_queue")
    assert all("TRAP-TEXT" not in (r["last_error"] or "") for r in every_error)


# --------------------------------------------------------------------------- 3. a 429 pauses the pool


async def test_429_pauses_the_account_for_every_uploader(pool, make_site, emu, uploader_stack, engines) -> None:
    pause_s = 2.0
    s, uploaders = uploader_stack(2)
    sites = [await make_site(), await make_site()]
    rows = []
    for site in sites:  # two sites on one Google account: its quota is shared
        await set_creds(pool, s, site["site_id"])
        rows += await add_rows(pool, site["site_id"], [f"Cj0Kp{i}" for i in range(4)])
    await emu.config(throttled_accounts={ACCOUNT: pause_s})
    first = await uploaders[0].run_once.remote()
    assert first["http_status"] == 429 and first["paused_s"] == pause_s
    state = await pool.fetchrow("SELECT paused_until, now() AS db_now FROM provider_account_state")
    # paused for Google's Retry-After from the 429 on (less the time this query took to come)
    assert state["paused_until"] >= state["db_now"] + timedelta(seconds=pause_s - 1.0)
    assert await _received(emu) == 1
    await emu.config(throttled_accounts={})  # Google would answer now: only the pause holds us back
    # every uploader, an engine of another pool generation (a resize) included, leaves the
    # account alone while the pause runs
    fresh = engines("uploader-g-9", s)
    rounds = 0
    while True:
        results = [await u.run_once.remote() for u in uploaders] + [await fresh.run_once()]
        still_paused = await pool.fetchval("SELECT paused_until > now() FROM provider_account_state")
        if not still_paused:
            break
        rounds += 1
        assert all(r.get("idle") and r["gated_groups"] >= 1 for r in results), results
        assert await _received(emu) == 1, "a request reached Google during the pause"
        await asyncio.sleep(0.1)
    assert rounds >= 1
    # gated attempts are ledgered without spending attempts: at most once per group and interval
    gated = await pool.fetch(
        "SELECT site_id, row_count, attempt, error_code FROM provider_upload_attempts "
        "WHERE phase = 'FINISHED' AND error_code = 'ACCOUNT_PAUSED'"
    )
    assert 1 <= len(gated) <= 2 and len({g["site_id"] for g in gated}) == len(gated)
    assert all(g["row_count"] == 0 and g["attempt"] == 0 for g in gated)
    # after the pause the rows go out; only the rows of the 429 spent an attempt there
    for _ in range(40):
        if await pool.fetchval("SELECT count(*) FROM offline_conversion_queue WHERE status <> 'COMPLETED'") == 0:
            break
        await uploaders[0].run_once.remote()
        await asyncio.sleep(0.05)
    final = await rows_of(pool, [r["id"] for r in rows])
    assert {r["status"] for r in final.values()} == {"COMPLETED"}
    assert sorted(r["attempt"] for r in final.values()).count(2) == first["claimed"]
    await assert_ledger_complete(pool)


# --------------------------------------------------------------------------- 4. every attempt in the ledger


async def test_gated_attempts_are_ledgered_once_per_interval(pool, make_site, fast, emu, engines) -> None:
    site = await make_site()
    await set_creds(pool, fast, site["site_id"])
    rows = await add_rows(pool, site["site_id"], ["Cj0Kg1", "Cj0Kg2"])
    t0 = datetime.now(UTC) + timedelta(seconds=1)
    clock = {"now": t0}
    s = fast.with_overrides(upload_gate_ledger_interval_s=60.0)
    engine = engines("uploader-c-0", s, clock=lambda: clock["now"])
    other = engines("uploader-c-1", s, clock=lambda: clock["now"])
    await pool.execute(
        "INSERT INTO provider_health_state (site_id, destination, state, failure_count, opened_at, next_probe_at) "
        "VALUES ($1, 'google_ads', 'OPEN', 5, $2, $3)",
        uuid.UUID(site["site_id"]),
        t0,
        t0 + timedelta(seconds=300),
    )

    async def gated_entries() -> list[asyncpg.Record]:
        return list(
            await pool.fetch(
                "SELECT error_code, breaker_state, row_count FROM provider_upload_attempts "
                "WHERE phase = 'FINISHED' ORDER BY id"
            )
        )

    for e in (engine, other, engine):
        r = await e.run_once()
        assert r.get("idle") and r["gated_groups"] == 1
    assert [(g["error_code"], g["breaker_state"]) for g in await gated_entries()] == [("BREAKER_OPEN", "OPEN")]
    clock["now"] = t0 + timedelta(seconds=61)  # the next gate interval: one more entry
    await other.run_once()
    await engine.run_once()
    assert len(await gated_entries()) == 2
    # half-open with another uploader's live probe: gated as PROBE_IN_PROGRESS
    clock["now"] = t0 + timedelta(seconds=400)
    await pool.execute(
        "UPDATE provider_health_state SET state = 'HALF_OPEN', probe_holder = 'someone-else', "
        "probe_started_at = $2 WHERE site_id = $1",
        uuid.UUID(site["site_id"]),
        clock["now"],
    )
    r = await engine.run_once()
    assert r.get("idle") and [g["error_code"] for g in await gated_entries()][-1] == "PROBE_IN_PROGRESS"
    got = await rows_of(pool, [r["id"] for r in rows])
    assert all(r["status"] == "QUEUED" and r["attempt"] == 0 for r in got.values())  # nothing spent
    assert (await emu.state())["api_requests"] == 0
    await assert_ledger_complete(pool)


async def test_too_many_conversions_splits_for_the_whole_pool(pool, make_site, emu, uploader_stack) -> None:
    s, uploaders = uploader_stack(2, upload_chunk_size=5)
    site = await make_site()
    await set_creds(pool, s, site["site_id"])
    rows = await add_rows(pool, site["site_id"], [f"Cj0Ks{i}" for i in range(9)])
    await emu.config(max_conversions=2)  # Google accepts at most 2 per request for this test
    split = await uploaders[0].run_once.remote()
    assert split["claimed"] == 5 and split["http_status"] == 400 and split["max_batch"] == 2
    assert split["refunded"] == 5
    got = await rows_of(pool, [r["id"] for r in rows])
    assert all(r["status"] == "QUEUED" and r["attempt"] == 0 for r in got.values())  # no attempt spent
    assert await pool.fetchval("SELECT max_batch FROM provider_account_state") == 2
    # the other uploader and a restarted one use the smaller size from their first request
    second = await uploaders[1].run_once.remote()
    assert second["claimed"] == 2 and second["completed"] == 2
    before = (await uploaders[0].status.remote())["uploader_id"]
    ray.kill(uploaders[0], no_restart=False)

    async def new_incarnation() -> bool:
        # only a restarted actor (another uploader id, or none yet) may take the next call: a
        # call racing the kill could claim rows on the dying one
        try:
            return bool((await uploaders[0].status.remote())["uploader_id"] != before)
        except ray.exceptions.RayActorError:
            return False

    for _ in range(600):
        if await new_incarnation():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the uploader did not come back")
    restarted = await uploaders[0].run_once.remote()
    assert restarted["claimed"] == 2 and restarted["completed"] == 2, restarted
    for _ in range(20):  # the rest, two rows per request
        if not await pool.fetchval("SELECT count(*) FROM offline_conversion_queue WHERE status = 'QUEUED'"):
            break
        drained = await uploaders[1].run_once.remote()
        assert drained.get("claimed", 0) <= 2, drained
    final = await rows_of(pool, [r["id"] for r in rows])
    assert all(r["status"] == "COMPLETED" and r["attempt"] == 1 for r in final.values()), [
        (r["status"], r["attempt"]) for r in final.values()
    ]
    metrics = await pool.fetchrow("SELECT attempts_total FROM provider_upload_metrics")
    assert metrics["attempts_total"] == 9  # the split attempt spent nothing
    assert (await emu.state())["responses_by_status"] == {"400": 1, "200": 5}
    await assert_ledger_complete(pool)


# --------------------------------------------------------------------------- 5. consent as recorded


@pytest.mark.parametrize("destination", ["google_ads", "data_manager"])
async def test_consent_is_copied_at_enqueue_and_sent_as_recorded(
    client, pool, make_site, make_token, fast, emu, engines, destination
) -> None:
    site = await make_site()
    token = await make_token(site["public_id"], "operator")
    await credentials_through_delivery(pool, fast, site, destination)
    session = await make_session(pool, site["site_id"], consent=("analytics", "marketing"), gclid="Cj0Kconsent")
    call_id = await make_intent(pool, site["site_id"], session)
    r = await client.post(
        f"/api/calls/{call_id}/actions", json={"action": "seal", "value_minor": 5000}, headers=auth(token)
    )
    assert r.status_code == 200 and r.json()["conversion"]["enqueued"] is True, r.text
    row = await pool.fetchrow("SELECT destination, consent_scopes FROM offline_conversion_queue")
    assert row["destination"] == destination and list(row["consent_scopes"]) == ["analytics", "marketing"]
    assert (await engines().run_once())["completed"] == 1
    r = await emu.http.get("/_emulator/state")
    [accepted] = r.json()["conversions"]
    if destination == "google_ads":
        # click conversions take ad_user_data only (ad_personalization is for user-data services)
        assert accepted["consent"] == {"adUserData": "GRANTED"}
    else:
        assert accepted["consent"] == {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"}


async def test_the_probe_rule_lives_in_one_sql_function_with_now_passed_in(pool) -> None:
    now = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    minute = timedelta(minutes=1)
    cases = [
        # state, next_probe_at, probe_holder, probe_started_at -> gate at `now` (stale after 120 s)
        (None, None, None, None, "SEND"),
        ("CLOSED", None, None, None, "SEND"),
        ("OPEN", now + minute, None, None, "BREAKER_OPEN"),
        ("OPEN", now, None, None, "PROBE"),
        ("OPEN", now - minute, None, None, "PROBE"),
        ("HALF_OPEN", now - minute, "u-1", now - minute, "PROBE_IN_PROGRESS"),
        ("HALF_OPEN", now - 3 * minute, "u-1", now - 3 * minute, "PROBE"),  # the holder went quiet
        ("HALF_OPEN", now - minute, None, None, "PROBE"),  # a neutral probe let go
    ]
    for state, next_probe_at, holder, started, expected in cases:
        got = await pool.fetchval(
            "SELECT provider_breaker_gate($1, $2, $3, $4, $5, 120)", state, next_probe_at, holder, started, now
        )
        assert got == expected, (state, next_probe_at, holder, started)
