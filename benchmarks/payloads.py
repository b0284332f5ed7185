"""Request bodies for the ingest scenarios (the same bytes go to the HTTP ceiling).

Each event looks like a tracker page view with a unique ``eid`` (so no request is a
duplicate unless a scenario wants one), a session id from a small pool (so partitions see
both session-cache hits and new sessions), a fingerprint, UTM fields and the analytics
consent scope (without it the gateway answers 204 and stores nothing).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

__all__ = ["SiteRef", "batch_body", "event_dict", "single_body"]

SESSIONS_PER_SITE = 500


@dataclass(frozen=True)
class SiteRef:
    public_id: str
    origin: str  # e.g. https://bench0.example.com


def _sid(site: SiteRef, run: str, n: int) -> str:
    # per site: a browser's session id never spans sites
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{site.public_id}/{run}/s/{n % SESSIONS_PER_SITE}"))


def event_dict(
    site: SiteRef, run: str, n: int, *, eid: str | None = None, path: str | None = None
) -> dict[str, object]:
    host = site.origin
    return {
        "s": site.public_id,
        "u": f"{host}{path or f'/products/{n % 97}?utm_source=google&utm_medium=organic'}",
        "eid": eid or f"{run}-{n}",
        "sid": _sid(site, run, n),
        "ec": "interaction",
        "ea": "view",
        "el": "product page",
        "r": "https://www.google.com/",
        "consent": ["analytics"],
        "meta": {"fp": f"fp-{run}-{n % SESSIONS_PER_SITE}", "lan": "tr-TR", "sw": 1920, "sh": 1080},
    }


def single_body(site: SiteRef, run: str, n: int, **kw: str) -> bytes:
    return json.dumps(event_dict(site, run, n, **kw), separators=(",", ":")).encode()


def batch_body(site: SiteRef, run: str, n: int, size: int) -> bytes:
    events = [event_dict(site, run, n * size + i) for i in range(size)]
    return json.dumps({"events": events}, separators=(",", ":")).encode()
