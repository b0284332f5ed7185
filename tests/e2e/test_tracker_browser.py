"""The tracker in a real headless Chromium (Debian ``chromium``, installed when missing)
against a served stack: a test page on another origin loads ``/assets/core.js``, a user
clicks a ``wa.me`` link (which navigates away: the pending events leave by ``sendBeacon``),
comes back and clicks a ``tel:`` link, and PostgreSQL ends up with the session, the events
(each once) and one intent with both counters."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest

from tests.cdp import Browser, ensure_chromium

pytestmark = pytest.mark.e2e

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Klima Servisi</title></head>
<body style="height: 3000px">
  <h1>Klima Servisi</h1>
  <p><a id="tel" href="tel:0532 123 45 67" style="font-size: 30px">Call us now</a></p>
  <p><a id="wa" href="https://wa.me/905321234567?text=Merhaba" style="font-size: 30px">WhatsApp</a></p>
  <script src="{api}/assets/core.js" data-ops-site-id="{site}" data-consent="analytics,marketing"
          data-api="{api}/api/sync" async></script>
</body></html>
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    binary, reason = ensure_chromium()
    if binary is None:
        pytest.skip(f"headless Chromium unavailable: {reason}")
    return binary


@pytest.fixture
def page_server() -> Iterator[tuple[str, dict[str, str]]]:
    """A plain web server on another loopback origin; the test sets the page's HTML."""
    content: dict[str, str] = {"html": ""}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = content["html"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", content
    finally:
        server.shutdown()
        server.server_close()


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 30) -> Any:
    """Poll PostgreSQL until ``check`` returns something truthy (the browser works on its own)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(900)  # the first run may install chromium
async def test_tracker_click_to_intent_in_chromium(
    chromium: str,
    live_server: str,
    page_server: tuple[str, dict[str, str]],
    make_site: Any,
    pool: asyncpg.Pool,
) -> None:
    page_origin, content = page_server
    site = await make_site(origins=[page_origin])
    content["html"] = PAGE.format(api=live_server, site=site["public_id"])

    landing = f"{page_origin}/?gclid=E2E-GCLID-0123456789&utm_source=google&utm_medium=cpc"

    async def count(action: str, at_least: int = 1) -> bool:
        n = await pool.fetchval("SELECT count(*) FROM events WHERE event_action = $1", action)
        return bool(n >= at_least)

    async with Browser(chromium) as browser:
        await browser.navigate(landing)
        await until(lambda: browser.evaluate("!!(window.opsmantik && window.opsmantik._initialized)"), "tracker")
        await until(lambda: count("view"), "the page view")
        # Within 2 s of the page view's send the outbox holds the click back, and wa.me
        # navigates away at once (nothing resolves but 127.0.0.1): the click and
        # session_end leave by sendBeacon on page hide.
        await browser.click("#wa")
        await until(lambda: count("whatsapp"), "the WhatsApp click")
        await until(lambda: count("session_end"), "session_end sent on page hide")
        # back on the site (same tab, same session), the visitor calls; the outbox re-sends
        # what the beacon carried and the server answers "duplicate"
        await browser.navigate(f"{page_origin}/contact")
        await until(lambda: count("view", 2), "the second page view")
        # the click goes last: Chromium hands tel: to the OS and stops taking input after it
        await browser.click("#tel")
        await until(lambda: count("phone_call"), "the tel: click")
        await until(lambda: browser.evaluate("window.opsmantik.pending() === 0"), "an empty outbox")

    session = await pool.fetchrow("SELECT * FROM sessions")
    assert await pool.fetchval("SELECT count(*) FROM sessions") == 1
    assert session["gclid"] == "E2E-GCLID-0123456789"
    assert session["attribution_source"] == "First Click (Paid)"
    assert session["utm_source"] == "google" and session["fingerprint"]
    assert session["consent_scopes"] == ["analytics", "marketing"]
    assert session["browser"] == "Chrome" and session["screen_width"]
    events = await pool.fetch("SELECT event_category, event_action, metadata FROM events")
    actions = sorted(e["event_action"] for e in events)
    assert actions == ["phone_call", "session_end", "view", "view", "whatsapp"]
    assert all(e["metadata"]["eid"] for e in events)
    # every event was stored exactly once, however often the outbox/beacon re-sent it
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == len(events)
    call = await pool.fetchrow("SELECT * FROM calls")
    assert await pool.fetchval("SELECT count(*) FROM calls") == 1
    assert call["intent_stamp"] == f"session:{session['id']}"
    assert (call["intent_phone_clicks"], call["intent_whatsapp_clicks"]) == (1, 1)
    assert (call["intent_action"], call["intent_target"]) == ("phone", "tel:+905321234567")
    assert call["phone_number"] == "+905321234567"
    assert (call["click_id"], call["click_id_type"]) == ("E2E-GCLID-0123456789", "gclid")
    assert call["status"] == "intent"
