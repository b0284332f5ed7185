"""The tracker's client-side rules in a real headless Chromium, against a stub ingest
endpoint that answers what each test needs and records every request (a fetch carries
``?_ts=<the page's clock>``; a beacon does not). Playwright's clock API stands in for long
waits: 30 idle minutes and ten minutes of back-off take no real time.

- the console says once why nothing is sent (no site id, no consent);
- the outbox keeps at most 100 events (oldest dropped) and survives a reload;
- a visible tab's heartbeat is not activity: after 30 idle minutes the session ends and
  the next input starts a new one;
- on page hide the whole pending batch goes by sendBeacon and stays in the outbox until a
  2xx answer to a later fetch removes it;
- 429 backs off 30 s doubling to 10 min, 5xx 5 s doubling to 2 min, Retry-After respected.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser_thread import BrowserThread, module_browser, until  # noqa: F401  (the fixture bt)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CORE_JS = (Path(__file__).resolve().parents[2] / "gateway" / "static" / "core.js").read_bytes()
SITE = "0123456789abcdef0123456789abcdef"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shop</title></head>
<body style="height: 3000px">
  <p><a id="tel" href="tel:0532 123 45 67" style="font-size: 30px">Call us now</a></p>
  <form id="quote" action="#" onsubmit="return false"><button id="send">Send</button></form>
  <script src="/assets/core.js" {site} {consent} data-api="/api/sync" async></script>
</body></html>
"""
FORMS = """<!doctype html>
<html><head><meta charset="utf-8"><title>Quote</title></head><body>
  <form id="plain" action="#" onsubmit="return false">
    <input type="email" value="jane@example.com"><input type="tel" value="+905321234567">
    <button id="send-plain">Send</button></form>
  <form id="both" action="#" onsubmit="return false" data-om-capture="email,phone">
    <input name="your-email" value="  Jane.Doe@Gmail.com "><input name="phone" value="+90 532 123 45 67">
    <button id="send-both">Send</button></form>
  <form id="email-only" action="#" onsubmit="return false" data-om-capture="email">
    <input type="email" value="joe@example.com"><input type="tel" value="+905551112233">
    <button id="send-email-only">Send</button></form>
  <script src="/assets/core.js" data-ops-site-id="{site}" {consent} data-api="/api/sync" async></script>
</body></html>
"""
PAGES = {
    "/forms": FORMS.format(site=SITE, consent='data-consent="analytics,marketing"'),
    "/forms-analytics": FORMS.format(site=SITE, consent='data-consent="analytics"'),
    "/page": PAGE.format(site=f'data-ops-site-id="{SITE}"', consent='data-consent="analytics,marketing"'),
    "/noconsent": PAGE.format(site=f'data-ops-site-id="{SITE}"', consent=""),
    "/nosite": PAGE.format(site="", consent='data-consent="analytics"'),
    "/other": "<!doctype html><title>elsewhere</title><p>no tracker here</p>",
}
# makes the page report itself hidden from the start: no heartbeat timer
HIDDEN = (
    "Object.defineProperty(document, 'visibilityState', {get: () => 'hidden'});"
    "Object.defineProperty(document, 'hidden', {get: () => true});"
)
OUTBOX = "JSON.parse(localStorage.getItem('opsmantik_outbox_v3') || '[]')"


@dataclass
class Hit:
    ts: int | None  # the page's clock at flush (fetch), None for a beacon
    events: list[dict[str, Any]]
    status: int

    @property
    def eids(self) -> list[str]:
        return [e["eid"] for e in self.events]


@dataclass
class Stub:
    """The ingest endpoint: ``answer(hit) -> (status, headers)``; every hit is recorded."""

    base: str = ""
    hits: list[Hit] = field(default_factory=list)
    answer: Callable[[Hit], tuple[int, dict[str, str]]] = lambda hit: (202, {})

    def fetches(self) -> list[Hit]:
        return [h for h in self.hits if h.ts is not None]

    def beacons(self) -> list[Hit]:
        return [h for h in self.hits if h.ts is None]


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/assets/core.js":
                self._send(200, CORE_JS, "application/javascript")
            else:
                page = PAGES.get(path)
                self._send(200 if page else 404, (page or "").encode(), "text/html; charset=utf-8")

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            ts = parse_qs(parts.query).get("_ts")
            hit = Hit(ts=int(ts[0]) if ts else None, events=body.get("events", [body]), status=0)
            with lock:
                hit.status, headers = state.answer(hit)
                state.hits.append(hit)
            self._send(hit.status, b'{"ok": true}' if hit.status < 300 else b"{}", "application/json", headers)

        def _send(self, status: int, data: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
            # the page may be gone by the time the answer is ready (a reload, a test's next
            # step on a slow machine): the hit is already recorded, the answer has no reader
            with contextlib.suppress(ConnectionError):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin") or "*")
                self.send_header("Access-Control-Expose-Headers", "Retry-After, x-opsmantik-quota-exceeded")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


async def _ready(bt: BrowserThread, page: Any) -> None:
    await until(lambda: bt(page.evaluate("!!(window.opsmantik && window.opsmantik._initialized)")), "the tracker")


async def test_the_console_says_once_why_nothing_is_sent(bt: BrowserThread, stub: Stub) -> None:
    page, log = await bt.new_page()
    try:
        await bt(page.goto(f"{stub.base}/nosite"))
        await until(lambda: bt(page.evaluate("document.readyState === 'complete'")), "the page")
        assert await bt(page.evaluate("typeof window.opsmantik")) == "undefined"
        assert len(log.warnings("no data-ops-site-id")) == 1

        await bt(page.goto(f"{stub.base}/noconsent"))
        await _ready(bt, page)
        await bt(page.evaluate("window.scrollTo(0, document.body.scrollHeight)"))
        await bt(page.click("#send"))
        await bt(page.evaluate("window.opsmantik.send('interaction', 'custom'); window.opsmantik.flush()"))
        said = log.warnings('no "analytics" consent')
        assert len(said) == 1, log.console
        assert 'data-consent="analytics,marketing"' in said[0]
        assert stub.hits == [] and await bt(page.evaluate(OUTBOX)) == []
    finally:
        await bt.close_page(page)


async def test_outbox_keeps_the_newest_100_across_a_reload(bt: BrowserThread, stub: Stub) -> None:
    stub.answer = lambda hit: (503, {})  # nothing gets through: the outbox fills up
    page, _log = await bt.new_page()
    try:
        await bt(page.add_init_script(HIDDEN))  # no heartbeats adding to the outbox
        await bt(page.clock.install())
        await bt(page.goto(f"{stub.base}/page"))
        await _ready(bt, page)
        eids = await bt(
            page.evaluate("Array.from({length: 150}, (_, i) => window.opsmantik.send('interaction', 'bulk', 'n' + i))")
        )
        kept = [e["id"] for e in await bt(page.evaluate(OUTBOX))]
        assert kept == eids[50:]  # 100 at most: the page view and the oldest 50 went first

        await bt(page.reload())
        await _ready(bt, page)
        after = await bt(page.evaluate(OUTBOX))
        # the reload added session_end (page hide) and the new page view, dropping two more
        assert [e["id"] for e in after[:98]] == eids[52:]
        assert [e["payload"]["ea"] for e in after[98:]] == ["session_end", "view"]

        # the endpoint is back: everything kept is delivered, then the outbox is empty
        stub.answer = lambda hit: (202, {})
        await bt(page.clock.fast_forward(130_000))  # past any back-off
        await until(functools.partial(_drained, bt, page), "the outbox delivered")
        delivered = {eid for h in stub.fetches() if h.status == 202 for eid in h.eids}
        assert set(eids[52:]) <= delivered
    finally:
        await bt.close_page(page)


async def test_a_visible_idle_tab_ends_its_session_after_30_minutes(bt: BrowserThread, stub: Stub) -> None:
    page, _log = await bt.new_page()
    try:
        await bt(page.clock.install())
        await bt(page.goto(f"{stub.base}/page"))
        await _ready(bt, page)
        await until(lambda: _has(stub, "view"), "the page view")
        first = await bt(page.evaluate("sessionStorage.getItem('opsmantik_sid')"))
        seen_at = await bt(page.evaluate("parseInt(sessionStorage.getItem('opsmantik_sid_at'), 10)"))
        # offline: everything stays in the outbox, where the test reads it
        await bt(page.context.set_offline(True))
        # the page clock runs in real time until paused, and cannot be paused in its past: a
        # second after the session began, or a little after now on a slow machine
        now = await bt(page.evaluate("Date.now()"))
        await bt(page.clock.pause_at(_at(max(seen_at + 1000, now + 500))))
        await bt(page.clock.run_for(45 * 60_000))  # the tab stays open and visible, nobody touches it
        beats = [e for e in await bt(page.evaluate(OUTBOX)) if e["payload"]["ea"] == "heartbeat"]
        assert 29 <= len(beats) <= 30, len(beats)
        assert {b["payload"]["sid"] for b in beats} == {first}
        assert max(b["ts"] for b in beats) <= seen_at + 30 * 60_000  # none after 30 idle minutes
        assert await bt(page.evaluate("sessionStorage.getItem('opsmantik_sid')")) == first

        # the visitor comes back: the first input starts a new session, and the call is in it
        await bt(page.mouse.click(5, 5))
        second = await bt(page.evaluate("sessionStorage.getItem('opsmantik_sid')"))
        assert second != first
        await bt(page.click("#tel", no_wait_after=True))
        calls = [e for e in await bt(page.evaluate(OUTBOX)) if e["payload"]["ea"] == "phone_call"]
        assert [c["payload"]["sid"] for c in calls] == [second]
    finally:
        await bt.close_page(page)


async def test_page_hide_sends_the_pending_batch_by_beacon_and_keeps_it(bt: BrowserThread, stub: Stub) -> None:
    # fetches fail (the events stay pending); the beacon gets through (but the page cannot know)
    stub.answer = lambda hit: (202, {}) if hit.ts is None else (503, {})
    page, _log = await bt.new_page()
    try:
        await bt(page.add_init_script(HIDDEN))  # no heartbeats adding to the outbox
        await bt(page.clock.install())
        await bt(page.goto(f"{stub.base}/page"))
        await _ready(bt, page)
        await until(lambda: _has(stub, "view"), "the first (failed) fetch")
        await bt(page.evaluate("window.opsmantik.send('conversion', 'form_submit', 'a')"))
        await bt(page.evaluate("window.opsmantik.send('interaction', 'custom', 'b')"))
        pending = [e["id"] for e in await bt(page.evaluate(OUTBOX))]
        assert len(pending) == 3

        await bt(page.goto(f"{stub.base}/other"))  # page hide
        beacon = (await until(lambda: _async(stub.beacons()), "the beacon"))[0]
        # the whole pending batch, plus the session_end of the page hide
        assert beacon.eids[:3] == pending and [e["ea"] for e in beacon.events[3:]] == ["session_end"]
        # ... and it all stays in the outbox (same origin, same storage)
        kept = [e["id"] for e in await bt(page.evaluate(OUTBOX))]
        assert kept == beacon.eids

        # back on the site: only a 2xx to a fetch removes them
        await bt(page.goto(f"{stub.base}/page"))
        await _ready(bt, page)
        assert set(beacon.eids) <= {e["id"] for e in await bt(page.evaluate(OUTBOX))}
        stub.answer = lambda hit: (202, {})
        await bt(page.clock.fast_forward(130_000))
        await until(functools.partial(_drained, bt, page), "the outbox delivered")
        delivered = {eid for h in stub.fetches() if h.status == 202 for eid in h.eids}
        assert set(beacon.eids) <= delivered
    finally:
        await bt.close_page(page)


@pytest.mark.parametrize(
    ("answers", "delays_s"),
    [
        # 429: 30 s doubling to 10 min
        ([(429, {})] * 8, [30, 60, 120, 240, 480, 600, 600]),
        # 5xx: 5 s doubling to 2 min; a Retry-After longer than the back-off wins
        ([(503, {"Retry-After": "15"})] + [(503, {})] * 7, [15, 10, 20, 40, 80, 120, 120]),
    ],
    ids=["429", "503"],
)
async def test_back_off_on_429_and_5xx(
    bt: BrowserThread, stub: Stub, answers: list[tuple[int, dict[str, str]]], delays_s: list[int]
) -> None:
    script = list(answers)
    stub.answer = lambda hit: script.pop(0) if script else (202, {})
    page, _log = await bt.new_page()
    try:
        await bt(page.add_init_script(HIDDEN))  # no heartbeat: the page view is the only event
        await bt(page.clock.install())
        await bt(page.goto(f"{stub.base}/page"))
        await _ready(bt, page)
        for attempt in range(1, len(delays_s) + 2):
            # the answer to this attempt is processed (the outbox entry counts it) ...
            entry = await until(functools.partial(_entry, bt, page, attempt), f"attempt {attempt} settled")
            if attempt == 1:
                # from here on the page's time moves only when the test moves it (the clock
                # ran until now: a second ahead is still before the entry is due again)
                await bt(page.clock.pause_at(_at(await bt(page.evaluate("Date.now()")) + 1000)))
            if attempt > len(delays_s):
                break
            # ... then the page's clock runs exactly to the time the entry is due again
            now = await bt(page.evaluate("Date.now()"))
            await bt(page.clock.run_for(max(1, entry["next"] - now)))
        times = [h.ts for h in stub.fetches() if h.ts is not None]
        assert len(times) == len(delays_s) + 1 and all(len(h.events) == 1 for h in stub.fetches())
        gaps = [b - a for a, b in itertools.pairwise(times)]
        for n, (gap, delay) in enumerate(zip(gaps, delays_s, strict=True)):
            # up to 1 s of jitter; the first attempt settled while the clock still ran
            slack = 1000 if n else 3000
            assert delay * 1000 <= gap < delay * 1000 + slack, (n, gaps)
    finally:
        await bt.close_page(page)


async def _drained(bt: BrowserThread, page: Any) -> bool:
    """Flush now (past the 2 s gap); true once the outbox is empty."""
    await bt(page.evaluate("window.opsmantik.flush()"))
    return bool(await bt(page.evaluate("window.opsmantik.pending() === 0")))


def _at(ms: int) -> dt.datetime:
    """A page-clock time (ms since the epoch) as Playwright's clock API takes it."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


async def _entry(bt: BrowserThread, page: Any, attempts: int) -> dict[str, Any] | None:
    outbox = await bt(page.evaluate(OUTBOX))
    return outbox[0] if outbox and outbox[0].get("attempts") == attempts else None


async def _has(stub: Stub, action: str) -> bool:
    return any(e.get("ea") == action for h in stub.hits for e in h.events)


async def _async(value: Any) -> Any:
    return value


async def test_only_a_form_that_opts_in_sends_its_email_and_phone(bt: BrowserThread, stub: Stub) -> None:
    """data-om-capture="email,phone" on the form (never by default), with marketing consent:
    the form-submit event carries the fields it names, as typed (the server hashes them)."""
    page, _log = await bt.new_page()
    try:
        for path, marketing in (("/forms", True), ("/forms-analytics", False)):
            stub.hits.clear()
            await bt(page.goto(f"{stub.base}{path}"))
            await _ready(bt, page)
            for form in ("plain", "both", "email-only"):
                await bt(page.click(f"#send-{form}"))
            await bt(page.evaluate("window.opsmantik.flush()"))

            async def submits() -> dict[str, dict[str, Any]] | None:
                got = {e["el"]: e["meta"] for h in stub.hits for e in h.events if e.get("ea") == "form_submit"}
                return got if len(got) == 3 else None

            sent = await until(submits, "three form submits")
            captured = {
                form: {k: v for k, v in meta.items() if k.startswith("om_") and k != "om_tracker_version"}
                for form, meta in sent.items()
            }
            if marketing:
                assert captured == {
                    "plain": {},
                    "both": {"om_email": "Jane.Doe@Gmail.com", "om_phone": "+90 532 123 45 67"},
                    "email-only": {"om_email": "joe@example.com"},
                }
            else:
                assert captured == {"plain": {}, "both": {}, "email-only": {}}
    finally:
        await bt.close_page(page)
