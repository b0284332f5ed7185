"""The tracker in a real headless Chromium (Debian ``chromium`` through Playwright) against a
served stack: test pages on another loopback origin load ``/assets/core.js``.

- A visitor scrolls, submits a form, clicks a ``wa.me`` link (which navigates away: the
  pending events leave by ``sendBeacon``), comes back, scrolls again and clicks a ``tel:``
  link: PostgreSQL holds the session, each event once, scroll depth 50/90 once per page,
  and one intent with both counters.
- Consent: without ``analytics`` nothing is sent (and the console says why, once); the
  consent call starts, raises, narrows and withdraws what is sent, and the session's
  scopes follow.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest

from tests.browser_thread import BrowserThread, module_browser, until  # noqa: F401  (the fixture bt)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body style="height: 4000px; margin: 0">
  <h1>{title}</h1>
  <p><a id="tel" href="tel:0532 123 45 67" style="font-size: 30px">Call us now</a></p>
  <p><a id="wa" href="https://wa.me/905321234567?text=Merhaba" style="font-size: 30px">WhatsApp</a></p>
  <form id="quote" action="#" onsubmit="return false">
    <input name="q" value="klima"><button id="send">Send</button>
  </form>
  <script src="{api}/assets/core.js" data-ops-site-id="{site}" {consent}
          data-api="{api}/api/sync" async></script>
</body></html>
"""


@pytest.fixture
def page_server() -> Iterator[tuple[str, dict[str, str]]]:
    """A plain web server on another loopback origin; the test sets each path's HTML."""
    content: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = content.get(self.path.split("?", 1)[0], "").encode()
            self.send_response(200 if data else 404)
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


def _page(api: str, site: str, title: str, consent: str | None = "analytics,marketing") -> str:
    attr = "" if consent is None else f'data-consent="{consent}"'
    return PAGE.format(api=api, site=site, title=title, consent=attr)


async def test_visit_scroll_form_whatsapp_and_call_end_in_postgres(
    bt: BrowserThread,
    live_server: str,
    page_server: tuple[str, dict[str, str]],
    make_site: Any,
    pool: asyncpg.Pool,
) -> None:
    origin, content = page_server
    site = await make_site(origins=[origin])
    content["/"] = _page(live_server, site["public_id"], "Klima Servisi")
    content["/contact"] = _page(live_server, site["public_id"], "Contact")
    landing = f"{origin}/?gclid=E2E-GCLID-0123456789&utm_source=google&utm_medium=cpc"

    async def count(action: str, at_least: int = 1, label: str | None = None) -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM events WHERE event_action = $1 AND ($2::text IS NULL OR event_label = $2)",
            action,
            label,
        )
        return bool(n >= at_least)

    async def scroll_to(page: Any, fraction: float) -> None:
        # like a visitor: the window scrolls and the page receives scroll events
        await bt(page.evaluate(f"window.scrollTo(0, document.body.scrollHeight * {fraction} - innerHeight)"))
        await bt(page.evaluate("new Promise(r => requestAnimationFrame(() => r(true)))"))

    page, _log = await bt.new_page()
    try:
        await bt(page.goto(landing))
        await until(lambda: bt(page.evaluate("!!(window.opsmantik && window.opsmantik._initialized)")), "tracker")
        await until(lambda: count("view"), "the page view")
        for fraction in (0.6, 0.95, 0.2, 0.97):
            await scroll_to(page, fraction)
        await until(lambda: count("scroll_depth", label="90%"), "scroll depth 90 %")
        await bt(page.click("#send"))
        await until(lambda: count("form_submit"), "the form submit")
        # wa.me navigates away at once (nothing resolves but 127.0.0.1): the click and
        # session_end leave by sendBeacon on page hide
        await bt(page.click("#wa", no_wait_after=True))
        await until(lambda: count("whatsapp"), "the WhatsApp click")
        await until(lambda: count("session_end"), "session_end sent on page hide")
        # back on the site (same tab, same session): the outbox re-sends what the beacon
        # carried and the server answers "duplicate"
        await bt(page.goto(f"{origin}/contact"))
        await until(lambda: count("view", 2), "the second page view")
        for fraction in (0.55, 0.96):
            await scroll_to(page, fraction)
        await until(lambda: count("scroll_depth", 2, "90%"), "scroll depth 90 % on the second page")
        # the click goes last: Chromium hands tel: to the OS and stops taking input after it
        await bt(page.click("#tel", no_wait_after=True))
        await until(lambda: count("phone_call"), "the tel: click")
        await until(lambda: bt(page.evaluate("window.opsmantik.pending() === 0")), "an empty outbox")
        # read before the page closes (closing it is a page hide: one more session_end)
        session = await pool.fetchrow("SELECT * FROM sessions")
        events = await pool.fetch("SELECT event_action, event_label, url, metadata FROM events ORDER BY created_at")
        ledger = await pool.fetchval("SELECT count(*) FROM ingest_idempotency")
    finally:
        await bt.close_page(page)

    assert await pool.fetchval("SELECT count(*) FROM sessions") == 1
    assert session["gclid"] == "E2E-GCLID-0123456789"
    assert session["attribution_source"] == "First Click (Paid)"
    assert session["utm_source"] == "google" and session["fingerprint"]
    assert session["consent_scopes"] == ["analytics", "marketing"]
    assert session["browser"] == "Chrome" and session["screen_width"]
    actions = sorted(e["event_action"] for e in events)
    first_page = ["view", "scroll_depth", "scroll_depth", "form_submit", "whatsapp", "session_end"]
    second_page = ["view", "scroll_depth", "scroll_depth", "phone_call"]
    assert actions == sorted([*first_page, *second_page]), [(e["event_action"], e["event_label"]) for e in events]
    # 50 % and 90 % once per page, however often the visitor scrolled past them
    scrolls = sorted((e["url"].split("?")[0], e["event_label"]) for e in events if e["event_action"] == "scroll_depth")
    assert scrolls == [
        (f"{origin}/", "50%"),
        (f"{origin}/", "90%"),
        (f"{origin}/contact", "50%"),
        (f"{origin}/contact", "90%"),
    ]
    assert [e["event_label"] for e in events if e["event_action"] == "form_submit"] == ["quote"]
    assert all(e["metadata"]["eid"] for e in events)
    # every event was stored exactly once, however often the outbox/beacon re-sent it
    assert ledger == len(events)
    call = await pool.fetchrow("SELECT * FROM calls")
    assert await pool.fetchval("SELECT count(*) FROM calls") == 1
    assert call["intent_stamp"] == f"session:{session['id']}"
    assert (call["intent_phone_clicks"], call["intent_whatsapp_clicks"]) == (1, 1)
    assert (call["intent_action"], call["intent_target"]) == ("phone", "tel:+905321234567")
    assert call["phone_number"] == "+905321234567"
    assert (call["click_id"], call["click_id_type"]) == ("E2E-GCLID-0123456789", "gclid")
    assert call["status"] == "intent"


async def test_consent_decides_what_is_sent(
    bt: BrowserThread,
    live_server: str,
    page_server: tuple[str, dict[str, str]],
    make_site: Any,
    pool: asyncpg.Pool,
) -> None:
    origin, content = page_server
    site = await make_site(origins=[origin])
    content["/"] = _page(live_server, site["public_id"], "Klima Servisi", consent=None)
    page, log = await bt.new_page()

    async def sent() -> list[dict[str, Any]]:
        """Every event the page posted to /api/sync so far."""
        out = []
        for r in log.posts("/api/sync"):
            body = json.loads(r["body"])
            out.extend(body.get("events", [body]))
        return out

    async def scopes() -> list[str] | None:
        return await pool.fetchval("SELECT consent_scopes FROM sessions")  # type: ignore[no-any-return]

    try:
        # no consent on the page: the visitor scrolls, submits, clicks; nothing leaves the page
        await bt(page.goto(f"{origin}/"))
        await until(lambda: bt(page.evaluate("!!(window.opsmantik && window.opsmantik._initialized)")), "tracker")
        await bt(page.evaluate("window.scrollTo(0, document.body.scrollHeight)"))
        await bt(page.click("#send"))
        assert await bt(page.evaluate("window.opsmantik.send('interaction', 'custom')")) is None
        assert await bt(page.evaluate("window.opsmantik.pending()")) == 0
        assert await bt(page.evaluate("localStorage.length")) == 0
        # ... and the console says why, once
        said = log.warnings('no "analytics" consent')
        assert len(said) == 1 and "opsmantik.consent" in said[0]
        assert log.posts("/api/sync") == []

        # the banner grants analytics: the consent is recorded and events flow from now on
        granted = await bt(page.evaluate("window.opsmantik.consent(['analytics'])"))
        assert granted == ["analytics"]
        await until(scopes, "the session, created by the consent record")
        assert await scopes() == ["analytics"]
        await bt(page.click("#send"))
        await until(lambda: pool.fetchval("SELECT count(*) FROM events WHERE event_action = 'form_submit'"), "submit")

        # raised: marketing too
        await bt(page.evaluate("window.opsmantik.consent(['analytics', 'marketing'])"))
        await until(lambda: _equals(scopes, ["analytics", "marketing"]), "marketing granted")
        # narrowed: marketing withdrawn, analytics kept
        await bt(page.evaluate("window.opsmantik.consent('analytics')"))
        await until(lambda: _equals(scopes, ["analytics"]), "marketing withdrawn")

        # withdrawn: the withdrawal itself is sent, then nothing at all
        await bt(page.evaluate("window.opsmantik.send('interaction', 'queued_before_withdrawal')"))
        await bt(page.evaluate("window.opsmantik.consent([])"))
        await until(
            lambda: _any_event(sent, lambda e: e["ea"] == "consent" and e["consent"] == []),
            "the withdrawal record",
        )
        before = len(await sent())
        await bt(page.click("#send"))
        await bt(page.evaluate("window.scrollTo(0, 0); window.opsmantik.send('interaction', 'after')"))
        await bt(page.evaluate("window.opsmantik.flush()"))
        assert await bt(page.evaluate("window.opsmantik.pending()")) == 0
        assert len(await sent()) == before
        assert not [e for e in await sent() if e.get("ea") in ("queued_before_withdrawal", "after")]
        # what was sent carried the scopes in force when it happened
        consent_records = [(e["el"], e["consent"]) for e in await sent() if e["ea"] == "consent"]
        assert consent_records == [
            ("analytics", ["analytics"]),
            ("analytics,marketing", ["analytics", "marketing"]),
            ("analytics", ["analytics"]),
            ("none", []),
        ]
        assert all(set(e["meta"]) == {"om_tracker_version"} for e in await sent() if e["ea"] == "consent")
    finally:
        await bt.close_page(page)


async def _equals(get: Any, expected: Any) -> bool:
    return bool(await get() == expected)


async def _any_event(get: Any, pred: Any) -> bool:
    return any(pred(e) for e in await get())
