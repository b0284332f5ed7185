"""The soak's traffic: what a population of visitors on many sites sends, request by request.

Visitors arrive, browse and leave, so the stack keeps meeting new sessions and fingerprints
(no small reused pool): each worker keeps ``active`` sessions open; every request is the next
event of a random one of them. A session starts with a page view on its landing page, then
sends scroll depths, heartbeats and more page views like ``core.js`` does, sometimes a phone
or WhatsApp click (an intent), and ends after a random number of events; a new session takes
its place, from a returning visitor (an earlier fingerprint of that site, any of the last
``RETURNING_POOL``) or a new one. Landing pages come from Google Ads (a unique ``gclid``),
organic search, social networks or direct visits.

On top of that, 1 % of requests resend an earlier request as it was (a retry: answered 200
duplicate, or 202 when the first attempt was not stored), and a few are bad: invalid JSON,
an unknown site, a foreign Origin, a schema violation, no analytics consent.

Every request is ``Request(kind, origin, body, stores_row)``; the worker counts answers by
kind and status, which is how the soak checks exactly-once at the end (a 202 is one new
ledger row; one event row too unless it is a heartbeat).
"""

from __future__ import annotations

import json
import random
import uuid
from collections import deque
from dataclasses import dataclass

from benchmarks.payloads import SiteRef

__all__ = ["BAD_KINDS", "EXPECTED", "Request", "TrafficMix"]

RETURNING_POOL = 20_000  # earlier visitors a worker remembers per run (returning visitors)
RECENT = 512  # requests a duplicate is drawn from
DUPLICATE_SHARE = 0.01
BAD_SHARE = 0.002
RETURNING_SHARE = 0.3

# The answer each kind must get. A resent copy gets 200 (duplicate), or 202 when it overtook
# the first copy, which then gets 200: so a fresh event answered 200 is expected only as often
# as copies were answered 202 (the soak checks that count).
EXPECTED: dict[str, tuple[str, ...]] = {
    "page_view": ("202",),
    "scroll": ("202",),
    "heartbeat": ("202",),
    "phone_click": ("202",),
    "whatsapp_click": ("202",),
    "duplicate": ("200", "202"),
    "duplicate_heartbeat": ("200", "202"),
    "bad_json": ("400",),
    "unknown_site": ("400",),
    "foreign_origin": ("403",),
    "schema_violation": ("422",),
    "no_consent": ("204",),
}
BAD_KINDS = ("bad_json", "unknown_site", "foreign_origin", "schema_violation", "no_consent")

_UAS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Version/17.4 Safari/605.1.15",
)
_SCREENS = ((390, 844), (412, 915), (1920, 1080), (1440, 900))


@dataclass(frozen=True)
class Request:
    kind: str
    origin: str | None
    body: bytes
    # a 202 for it adds an event row (heartbeats add a ledger row and update the session only)
    stores_row: bool


@dataclass
class _Session:
    site: SiteRef
    sid: str
    fp: str
    landing: str
    referrer: str
    consent: list[str]
    screen: tuple[int, int]
    left: int  # events still to send
    sent: int = 0
    scroll: int = 0
    pages: int = 1
    active_s: int = 0
    converted: bool = False


class TrafficMix:
    """Request factory for one load-generator worker (deterministic for a given seed)."""

    def __init__(self, sites: list[SiteRef], run: str, worker: int, *, seed: int = 0, active: int = 300) -> None:
        self.sites = sites
        self.run = run
        self.worker = worker
        self.rng = random.Random(f"{run}/{worker}/{seed}")
        self.active: list[_Session] = []
        self.target_active = active
        self.visitors: deque[tuple[SiteRef, str]] = deque(maxlen=RETURNING_POOL)
        self.recent: deque[Request] = deque(maxlen=RECENT)
        self.n = 0
        self.sessions_started = 0
        self.returning_started = 0

    # ------------------------------------------------------------------ visitors

    def _new_session(self) -> _Session:
        rng = self.rng
        if self.visitors and rng.random() < RETURNING_SHARE:
            site, fp = self.visitors[rng.randrange(len(self.visitors))]
            self.returning_started += 1
        else:
            site = self.sites[rng.randrange(len(self.sites))]
            fp = f"fp{self.run}{self.worker}x{self.sessions_started:x}"
            self.visitors.append((site, fp))
        self.sessions_started += 1
        page = f"{site.origin}/products/{rng.randrange(500)}"
        source = rng.random()
        if source < 0.25:  # a Google Ads click: every landing URL is unique
            gclid = f"Cj0KCQ{uuid.UUID(int=rng.getrandbits(128)).hex}"
            landing = f"{page}?gclid={gclid}&utm_source=google&utm_medium=cpc&utm_campaign=c{rng.randrange(20)}"
            referrer = "https://www.google.com/"
        elif source < 0.6:
            landing, referrer = page, "https://www.google.com.tr/"
        elif source < 0.8:
            landing = f"{page}?utm_source=facebook&utm_medium=social"
            referrer = "https://l.facebook.com/"
        else:
            landing, referrer = page, ""
        consent = ["analytics", "marketing"] if rng.random() < 0.7 else ["analytics"]
        return _Session(
            site=site,
            sid=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            fp=fp,
            landing=landing,
            referrer=referrer,
            consent=consent,
            screen=_SCREENS[rng.randrange(len(_SCREENS))],
            left=rng.randint(4, 40),
        )

    def _session(self) -> _Session:
        while len(self.active) < self.target_active:
            self.active.append(self._new_session())
        i = self.rng.randrange(len(self.active))
        s = self.active[i]
        s.left -= 1
        if s.left <= 0:
            self.active[i] = self._new_session()
        return s

    # ------------------------------------------------------------------ events

    def _event(self, s: _Session, ec: str, ea: str, el: str | None, url: str, **meta: object) -> dict[str, object]:
        self.n += 1
        base: dict[str, object] = {
            "fp": s.fp,
            "lan": "tr-TR",
            "sw": s.screen[0],
            "sh": s.screen[1],
            "om_tracker_version": "soak",
        }
        base.update(meta)
        return {
            "s": s.site.public_id,
            "u": url,
            "eid": f"{self.run}-{self.worker}-{self.n}",
            "sid": s.sid,
            "ec": ec,
            "ea": ea,
            "el": el,
            "r": s.referrer,
            "consent": s.consent,
            "meta": base,
        }

    def _good(self) -> tuple[str, dict[str, object], SiteRef]:
        rng = self.rng
        s = self._session()
        s.sent += 1
        s.active_s += rng.randint(5, 20)
        url = s.landing if s.pages == 1 else f"{s.site.origin}/products/{rng.randrange(500)}"
        if s.sent == 1:
            return "page_view", self._event(s, "interaction", "view", "Product", url), s.site
        roll = rng.random()
        if roll < 0.03 and not s.converted:
            s.converted = True
            pulse = {"scroll_pct": s.scroll, "cta_hovers": rng.randint(0, 3), "active_sec": s.active_s}
            number = f"+90555{rng.randrange(10_000_000):07d}"
            if roll < 0.02:
                ev = self._event(
                    s, "conversion", "phone_call", f"tel:{number}", url, intent_action="phone_call", **pulse
                )
                return "phone_click", ev, s.site
            ev = self._event(
                s, "conversion", "whatsapp", f"https://wa.me/{number[1:]}", url, intent_action="whatsapp", **pulse
            )
            return "whatsapp_click", ev, s.site
        if roll < 0.2:
            s.pages += 1
            s.scroll = 0
            url = f"{s.site.origin}/products/{rng.randrange(500)}"
            return "page_view", self._event(s, "interaction", "view", "Product", url), s.site
        if roll < 0.4 and s.scroll < 100:
            s.scroll += 25
            return "scroll", self._event(s, "interaction", "scroll_depth", f"{s.scroll}%", url), s.site
        pulse = {"scroll_pct": s.scroll, "cta_hovers": 0, "active_sec": s.active_s}
        return "heartbeat", self._event(s, "system", "heartbeat", "session_active", url, **pulse), s.site

    def _bad(self) -> Request:
        rng = self.rng
        kind = BAD_KINDS[rng.randrange(len(BAD_KINDS))]
        s = self._session()
        ev = self._event(s, "interaction", "view", "Product", f"{s.site.origin}/bad")
        origin: str | None = s.site.origin
        if kind == "bad_json":
            body = json.dumps(ev, separators=(",", ":")).encode()[:-7]
        elif kind == "unknown_site":
            ev["s"] = uuid.UUID(int=rng.getrandbits(128)).hex
            body = _dump(ev)
        elif kind == "foreign_origin":
            origin = f"https://evil{rng.randrange(10**9)}.example.net"
            body = _dump(ev)
        elif kind == "schema_violation":
            ev["meta"] = {"sw": "wide"}
            body = _dump(ev)
        else:
            ev["consent"] = []
            body = _dump(ev)
        return Request(kind, origin, body, stores_row=False)

    def next(self) -> Request:
        """The next request to send."""
        rng = self.rng
        roll = rng.random()
        if roll < DUPLICATE_SHARE and self.recent:
            first = self.recent[rng.randrange(len(self.recent))]
            # a resent heartbeat adds no event row even when answered 202: counted on its own
            kind = "duplicate_heartbeat" if first.kind == "heartbeat" else "duplicate"
            return Request(kind, first.origin, first.body, stores_row=first.stores_row)
        if roll < DUPLICATE_SHARE + BAD_SHARE:
            return self._bad()
        kind, ev, site = self._good()
        req = Request(kind, site.origin, _dump(ev), stores_row=kind != "heartbeat")
        self.recent.append(req)
        return req


def _dump(ev: dict[str, object]) -> bytes:
    return json.dumps(ev, separators=(",", ":")).encode()
