"""Idempotency keys for ingested events (SPEC.md §3 step 1).

With a client event id (the tracker sends ``eid`` on every event) the key is
``sha256(site_id | "eid" | eid)``: a retry or a beacon re-send of the same event is the
same key whenever it arrives.

Without ``eid`` the key hashes the event's content with a time component taken from the
server clock (a client clock can be wrong or forged): a 10 s bucket for heartbeats, 2 s for
page views and other events, and the exact millisecond for clicks, so two real clicks are
never merged while a double-sent heartbeat is.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

import msgspec

__all__ = [
    "KEY_VERSION_CONTENT",
    "KEY_VERSION_EID",
    "EventKind",
    "event_kind",
    "idempotency_key",
    "time_component",
]

# ingest_idempotency.idempotency_version: which recipe produced the key
KEY_VERSION_CONTENT = 1
KEY_VERSION_EID = 2

_CLICK_ACTIONS = frozenset({"click", "call_intent"})
_PAGE_VIEW_ACTIONS = frozenset({"page_view", "pageview"})


class EventKind(StrEnum):
    HEARTBEAT = "heartbeat"
    PAGE_VIEW = "page_view"
    CLICK = "click"
    OTHER = "other"


_BUCKET_MS = {
    EventKind.HEARTBEAT: 10_000,
    EventKind.PAGE_VIEW: 2_000,
    EventKind.OTHER: 2_000,
    EventKind.CLICK: 1,
}


def event_kind(ec: str | None, ea: str | None) -> EventKind:
    """Heartbeat, page view, click (every conversion: phone, WhatsApp, form) or other."""
    cat = (ec or "").strip().lower()
    act = (ea or "").strip().lower()
    if act == "heartbeat":
        return EventKind.HEARTBEAT
    if cat == "conversion" or act in _CLICK_ACTIONS or cat == "click":
        return EventKind.CLICK
    if cat == "page" or act in _PAGE_VIEW_ACTIONS or (cat == "interaction" and act == "view"):
        return EventKind.PAGE_VIEW
    return EventKind.OTHER


def time_component(kind: EventKind, server_ms: int) -> int:
    """The server time rounded down to the kind's bucket (exact ms for clicks)."""
    bucket = _BUCKET_MS[kind]
    return server_ms - server_ms % bucket


_enc = msgspec.json.Encoder()


def idempotency_key(
    site_id: str,
    *,
    eid: str | None,
    ec: str | None,
    ea: str | None,
    el: str | None,
    url: str,
    fp: str | None,
    sid: str | None,
    server_ms: int,
) -> tuple[str, int]:
    """(64 lower-case hex chars, key version) for one event of ``site_id``."""
    if eid:
        material = f"{site_id}|eid|{eid}".encode()
        return hashlib.sha256(material).hexdigest(), KEY_VERSION_EID
    kind = event_kind(ec, ea)
    # A JSON array keeps the parts apart: "a|b" + "c" never collides with "a" + "b|c".
    material = _enc.encode(
        [site_id, ec or "", ea or "", el or "", url, fp or sid or "", time_component(kind, server_ms)]
    )
    return hashlib.sha256(material).hexdigest(), KEY_VERSION_CONTENT
