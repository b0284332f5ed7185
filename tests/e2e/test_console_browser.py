"""The operator console in a real headless Chromium (Playwright driving the Debian chromium)
against a served stack:

- an operator signs in with a one-time link from ``opsmantik console link``, finds the phone
  intent the tracker made in the inbox, seals it with a value by clicking, and the row shows
  "queued" and then "uploaded" (the emulator is the destination); traffic and delivery show it;
- an analyst sees no action buttons, and a user of site A never sees site B.

Screenshots of the inbox, traffic and delivery views land in the test's output folder.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from opsmantik_stream.config import Settings
from opsmantik_stream.db import close_pool, create_pool
from tests.cdp import ensure_chromium
from tests.e2e.test_tracker_browser import _page as tracked_page
from tests.integration._leads_support import make_intent, make_session
from tests.integration._uploader_support import emulator_settings, serve_emulator, set_creds
from tests.serving import serve_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path, reason = ensure_chromium()
    if path is None:
        pytest.skip(f"headless Chromium unavailable: {reason}")
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    """One Chromium for the module; each test opens its own contexts (separate cookie jars)."""
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=chromium_path,
            # loopback only: any other host name resolves to nothing
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="module")
def emu() -> Iterator[str]:
    """The Google emulator; the stack's Google endpoints (deployment settings) point at it."""
    with serve_emulator() as base:
        yield base


@pytest.fixture
def settings(settings: Settings, emu: str) -> Settings:
    return emulator_settings(settings, emu)


@pytest_asyncio.fixture(loop_scope="module")
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The suite's ``pool`` fixture, run in this module's event loop (the browser's)."""
    p = await create_pool(db_url, min_size=1, max_size=5)
    try:
        yield p
    finally:
        await close_pool(p)


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def console_link(db_url: str, tmp_path: Path, email: str, base: str) -> str:
    """The sign-in link exactly as an administrator gets it: from the CLI."""
    env = {**os.environ, "OPSMANTIK_DATABASE_URL": db_url, "OPSMANTIK_DATA_DIR": str(tmp_path / "cli")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "opsmantik_stream.cli",
            "console",
            "link",
            "--user",
            email,
            "--base-url",
            base,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    url = json.loads(done.stdout)["url"]
    assert url.startswith(f"{base}/console#link=olnk_")
    return str(url)


async def other_leads(pool: asyncpg.Pool, site_id: str) -> None:
    """Earlier leads of other channels, as the partition would have written them (so the
    inbox looks like a working day's)."""
    now = dt.datetime.now(dt.UTC)
    specs = [
        # minutes ago, action, target, channel, attribution, consent, status, value
        (25, "whatsapp", "wa:+905339876543", ("SEO", "organic"), "Organic", ["analytics"], "intent", None),
        (70, "form", "form:/iletisim", ("Direct", "direct"), "Organic", ["analytics"], "confirmed", 40000),
        (140, "phone", "tel:+902125550199", ("Meta Ads", "cpc"), "Social", ["analytics", "marketing"], "junk", None),
    ]
    for minutes, action, target, (source, medium), attribution, consent, status, value in specs:
        at = now - dt.timedelta(minutes=minutes)
        session_id = uuid.uuid4()
        await pool.execute(
            "INSERT INTO sessions (id, site_id, created_month, created_at, last_activity_at, entry_page,"
            " traffic_source, traffic_medium, attribution_source, consent_scopes, event_count, total_duration_sec,"
            " is_returning, previous_visit_count)"
            " VALUES ($1, $2, date_trunc('month', $3 AT TIME ZONE 'UTC')::date, $3, $3, 'https://klima.example/',"
            " $4, $5, $6, $7, 4, 95, $8, $9)",
            session_id,
            uuid.UUID(site_id),
            at,
            source,
            medium,
            attribution,
            consent,
            minutes > 100,
            2 if minutes > 100 else 0,
        )
        await pool.execute(
            "INSERT INTO calls (site_id, source, status, created_at, matched_session_id, matched_session_month,"
            " lead_score, intent_stamp, intent_action, intent_target, intent_page_url, intent_last_at, value_minor,"
            " currency, confirmed_at)"
            " VALUES ($1, 'click', $2, $3, $4, date_trunc('month', $3 AT TIME ZONE 'UTC')::date, $5, $6, $7, $8,"
            " 'https://klima.example/iletisim', $3, $9, CASE WHEN $9::bigint IS NULL THEN NULL ELSE 'TRY' END,"
            " CASE WHEN $2 = 'confirmed' THEN $3 END)",
            uuid.UUID(site_id),
            status,
            at,
            session_id,
            50 + minutes % 40,
            f"session:{session_id}",
            action,
            target,
            value,
        )


async def loaded(page: Page, view: str) -> None:
    await page.wait_for_selector(f"body[data-view={view}][data-loaded]")


async def test_operator_signs_in_with_a_link_seals_a_tracked_intent_and_sees_it_uploaded(
    browser: Browser,
    live_server: str,
    stack: dict[str, Any],
    settings: Settings,
    emu: str,
    db_url: str,
    pool: asyncpg.Pool,
    make_site: Any,
    make_token: Any,
    tmp_path: Path,
) -> None:
    pages = {"html": ""}

    async def page_route(request: Any) -> HTMLResponse:
        return HTMLResponse(pages["html"])

    with serve_in_thread(Starlette(routes=[Route("/{path:path}", page_route)])) as page_origin:
        site = await make_site(name="Klima Servisi", origins=[page_origin])
        await make_token(site["public_id"], "operator", email="operator@example.com")
        # uploads go to the emulator (the site's destination is Data Manager by default)
        await set_creds(pool, settings, site["site_id"], destination="data_manager")
        await other_leads(pool, site["site_id"])

        # a visitor from a Google ad taps the phone number: the tracker makes the intent
        pages["html"] = tracked_page(live_server, site["public_id"], "Klima Servisi")
        visitor = await browser.new_context()
        tab = await visitor.new_page()
        await tab.goto(f"{page_origin}/?gclid=E2E-CONSOLE-GCLID&utm_source=google&utm_medium=cpc")
        await tab.wait_for_function("window.opsmantik && window.opsmantik._initialized")
        await until(lambda: pool.fetchval("SELECT count(*) FROM events WHERE event_action = 'view'"), "page view")
        await tab.click("#tel", no_wait_after=True)
        call_id = await until(
            lambda: pool.fetchval(
                "SELECT id FROM calls WHERE intent_stamp LIKE 'session:%' AND lead_score > 0"
                " AND matched_fingerprint IS NOT NULL"
            ),
            "the tracker's phone intent",
        )
        await visitor.close()

        # the operator opens the one-time link
        link = console_link(db_url, tmp_path, "operator@example.com", live_server)
        ctx = await browser.new_context(viewport={"width": 1360, "height": 560})
        page = await ctx.new_page()
        await page.goto(link)
        await loaded(page, "inbox")
        assert "#link=" not in page.url  # the token left the address bar
        cookies = {c["name"]: c for c in await ctx.cookies()}
        assert cookies["opsm_console"]["httpOnly"] and cookies["opsm_console"]["sameSite"] == "Strict"
        assert await page.evaluate("document.cookie") == ""  # nothing readable by scripts

        row = page.locator(f"tr.lead[data-lead-id='{call_id}']")
        await expect(row).to_be_visible()
        await expect(row.locator(".target")).to_contain_text("tel:+9053")
        await expect(row.locator(".target")).not_to_contain_text("4567")
        await expect(row).to_contain_text("Google Ads / cpc")
        await expect(row.locator(".lead-status")).to_have_text("intent")
        await expect(page.locator("tr.lead")).to_have_count(4)

        # seal with a value, by clicking
        await row.locator("button[data-action=seal]").click()
        await row.locator(".seal-form input[name=value]").fill("1250")
        await row.locator(".seal-form button.seal-confirm").click()
        row = page.locator(f"tr.lead[data-lead-id='{call_id}']")
        await expect(row.locator(".lead-status")).to_have_text("sealed")
        await expect(row.locator(".conv")).to_have_text("queued")
        await expect(row.locator(".feedback")).to_contain_text("conversion queued")
        queued = await pool.fetchrow("SELECT * FROM offline_conversion_queue WHERE source_id = $1", call_id)
        assert (queued["status"], queued["gclid"], queued["value_minor"]) == ("QUEUED", "E2E-CONSOLE-GCLID", 125_000)

        # an uploader runs; the row turns "uploaded" in place, without a reload
        from actors.runtime import get_actor

        uploader = get_actor(stack["uploaders"][0], settings.ray_namespace)
        assert (await uploader.run_once.remote())["completed"] == 1
        await expect(row.locator(".conv")).to_have_text("uploaded", timeout=15_000)
        await page.screenshot(path=str(tmp_path / "inbox.png"), full_page=True)
        state = await serve_state(emu)
        assert state["order_id_counts"] == {queued["order_id"]: 1}

        # the score's "why"
        await row.locator("button.score").click()
        why = page.locator(f"tr.detail[data-detail-for='{call_id}'] .why")
        await expect(why).to_contain_text("phone/WhatsApp/form click")

        await page.click("#nav a[data-view=traffic]")
        await loaded(page, "traffic")
        ads = page.locator("table.summary").first.locator("tr[data-key='Google Ads / cpc']")
        await expect(ads.locator(".lead-to-sale")).to_have_text("100.0 %")
        await expect(page.locator("svg.chart rect")).not_to_have_count(0)
        await page.screenshot(path=str(tmp_path / "traffic.png"), full_page=True)

        await page.click("#nav a[data-view=delivery]")
        await loaded(page, "delivery")
        await expect(page.locator(".bars .row[data-key=COMPLETED] .n")).to_have_text("1")
        await expect(page.locator(".destination")).to_have_text("data_manager")
        await expect(page.locator("table.ledger")).to_contain_text("FINISHED")
        await page.screenshot(path=str(tmp_path / "delivery.png"), full_page=True)

        # sign out; the link does not work twice
        await page.click("#signout")
        await expect(page.locator("#signin")).to_be_visible()
        await page.goto(link)
        await expect(page.locator("#signin-message")).to_contain_text("not valid")
        await ctx.close()


async def serve_state(emu_base: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(base_url=emu_base, timeout=10) as http:
        r = await http.get("/_emulator/state", params={"conversions": "false"})
        r.raise_for_status()
        return dict(r.json())


async def test_an_analyst_sees_no_actions_and_a_user_never_sees_another_site(
    browser: Browser,
    live_server: str,
    pool: asyncpg.Pool,
    make_site: Any,
    make_token: Any,
) -> None:
    site_a = await make_site(name="Shop Alpha")
    site_b = await make_site(name="Shop Beta")
    for site in (site_a, site_b):
        session = await make_session(pool, site["site_id"])
        await make_intent(pool, site["site_id"], session)
    await pool.execute(
        "INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, order_id, gclid,"
        " conversion_time, value_minor, currency, status, error_code, last_error)"
        " VALUES ($1, 'data_manager', 'sale', $2, 'ord-blocked', 'G', now(), 100, 'TRY', 'BLOCKED',"
        " 'MISSING_CREDENTIALS', 'no data_manager credentials for this site')",
        uuid.UUID(site_a["site_id"]),
        uuid.uuid4(),
    )
    site_c = await make_site(name="Shop Gamma")
    await make_intent(pool, site_c["site_id"], await make_session(pool, site_c["site_id"]))
    analyst = await make_token(site_a["public_id"], "analyst", email="analyst@example.com")
    operator = await make_token(site_a["public_id"], "operator", email="operator@example.com")
    # the operator only reads Shop Gamma; a billing user sees billing
    await make_token(site_c["public_id"], "analyst", email="operator@example.com")
    billing = await make_token(site_a["public_id"], "billing", email="billing@example.com")

    async def sign_in(token: str) -> Page:
        ctx = await browser.new_context()
        page = await ctx.new_page()
        await page.goto(f"{live_server}/console")
        await page.fill("#signin-token", token)
        await page.click("#signin-form button[type=submit]")
        await loaded(page, "inbox")
        return page

    # the operator, for contrast: the same views offer actions
    op = await sign_in(operator)
    await expect(op.locator("tr.lead button[data-action=seal]")).to_have_count(1)
    await op.click("#nav a[data-view=delivery]")
    await loaded(op, "delivery")
    await expect(op.locator("button[data-action=requeue]")).to_have_count(1)
    await expect(op.locator("table.queue-rows")).to_contain_text("Set the site's credentials")
    # the site switcher: on Shop Gamma the same user is an analyst, and the actions go
    options = await op.locator("#site-select option").all_text_contents()
    assert sorted(options) == ["Shop Alpha · operator", "Shop Gamma · analyst"]
    await op.select_option("#site-select", site_c["public_id"])
    await op.click("#nav a[data-view=inbox]")
    await loaded(op, "inbox")
    assert site_c["public_id"] in op.url
    await expect(op.locator("tr.lead")).to_have_count(1)
    await expect(op.locator("#view button[data-action]")).to_have_count(0)
    await op.context.close()

    bill = await sign_in(billing)
    await bill.click("#nav a[data-view=billing]")
    await loaded(bill, "billing")
    await expect(bill.locator("#view")).to_contain_text("Usage by month")
    await expect(bill.locator("#view button[data-action]")).to_have_count(0)
    await bill.context.close()

    page = await sign_in(analyst)
    await expect(page.locator("tr.lead")).to_have_count(1)
    await expect(page.locator("#view button[data-action]")).to_have_count(0)
    assert await page.locator("#nav a[data-view=billing]").count() == 0
    await page.click("#nav a[data-view=delivery]")
    await loaded(page, "delivery")
    await expect(page.locator("table.queue-rows")).to_contain_text("no data_manager credentials")
    await expect(page.locator("#view button[data-action]")).to_have_count(0)

    # site A only: the switcher, the pages, and the API behind them
    assert await page.locator("#site-select option").all_text_contents() == ["Shop Alpha · analyst"]
    await page.goto(f"{live_server}/console#/inbox?site={site_b['public_id']}")
    await loaded(page, "inbox")
    await expect(page.locator("#view .notice")).to_have_text("You have no access to this site.")
    assert "Shop Beta" not in await page.content()
    status = await page.evaluate(f"fetch('/console/api/sites/{site_b['public_id']}/leads').then(r => r.status)")
    assert status == 403
    await page.context.close()
