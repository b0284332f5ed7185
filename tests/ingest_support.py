"""Helpers for ingest tests: tracker-like events, posting them, counting what was stored."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

ORIGIN = "https://shop.example.com"
TABLES = ("ingest_idempotency", "sessions", "events", "calls", "site_usage_monthly", "dead_letters")


def event(site: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """A page view as the tracker sends it (fresh eid, analytics consent); override any key."""
    meta = kw.pop("meta", {})
    body: dict[str, Any] = {
        "s": site["public_id"],
        "u": f"{ORIGIN}/",
        "eid": str(uuid.uuid4()),
        "sid": kw.pop("sid", None) or str(uuid.uuid4()),
        "ec": "interaction",
        "ea": "view",
        "el": "Home",
        "r": "",
        "consent": ["analytics", "marketing"],
        "meta": {"fp": "fp-default", **meta},
    }
    body.update(kw)
    return body


async def post(
    client: httpx.AsyncClient,
    body: Any,
    *,
    origin: str | None = ORIGIN,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    h = dict(headers or {})
    if origin is not None:
        h["Origin"] = origin
    h.setdefault("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36")
    if isinstance(body, bytes | str):
        return await client.post("/api/sync", content=body, headers=h)
    return await client.post("/api/sync", json=body, headers=h)


async def counts(pool: asyncpg.Pool) -> dict[str, int]:
    out = {}
    for table in TABLES:
        out[table] = int(await pool.fetchval(f"SELECT count(*) FROM {table}"))
    return out
