"""The /ops page in a real headless Chromium: it loads live figures and shows the queue."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from opsmantik_stream.jobs import run_job
from tests.cdp import Browser, ensure_chromium

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def chromium() -> str:
    binary, reason = ensure_chromium()
    if binary is None:
        pytest.skip(f"headless Chromium unavailable: {reason}")
    return binary


async def test_ops_page_shows_live_queue_actors_and_alerts(
    chromium: str, live_server: str, pool: asyncpg.Pool, settings: Any, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    admin = await make_token(None, None, platform_admin=True)
    for i in range(3):
        await pool.execute(
            "INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, order_id, "
            "gclid, conversion_time, value_minor, currency, status) "
            "VALUES ($1, 'google_ads', 'sale', $2, $3, 'g', now(), 100, 'TRY', 'FAILED')",
            site["site_id"],
            uuid.uuid4(),
            f"ops-{i}",
        )
    # a BLOCKED row is a watchtower condition: the alert shows on the page
    await pool.execute(
        "INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, order_id, "
        "gclid, conversion_time, value_minor, currency, status) "
        "VALUES ($1, 'google_ads', 'sale', $2, 'ops-blocked', 'g', now(), 100, 'TRY', 'BLOCKED')",
        site["site_id"],
        uuid.uuid4(),
    )
    await run_job("watchtower", pool, settings)
    async with Browser(chromium) as browser:
        await browser.navigate(f"{live_server}/ops")
        # the operator types a token; the page keeps it for the tab and refreshes every 2 s
        await browser.evaluate(
            f"const t = document.getElementById('token'); t.value = {admin!r}; t.dispatchEvent(new Event('change'))"
        )

        async def failed_row() -> str | None:
            text = await browser.evaluate(
                "document.body.getAttribute('data-loaded') && "
                "document.querySelector('#queue .row[data-key=FAILED] .n').textContent"
            )
            return text if isinstance(text, str) else None

        for _ in range(100):
            if await failed_row() == "3":
                break
            await asyncio.sleep(0.1)
        assert await failed_row() == "3", await browser.evaluate("document.getElementById('status').textContent")
        actors = await browser.evaluate("document.getElementById('actors').textContent")
        assert "registry: ok" in actors
        alerts = await browser.evaluate("document.getElementById('alerts').textContent")
        assert "blocked_rows: 1 conversion(s) BLOCKED" in alerts
        # live: a change in PostgreSQL shows up without a reload
        await pool.execute("UPDATE offline_conversion_queue SET status = 'QUEUED' WHERE order_id = 'ops-0'")
        for _ in range(60):
            if await failed_row() == "2":
                break
            await asyncio.sleep(0.1)
        assert await failed_row() == "2"
