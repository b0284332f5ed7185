"""Authentication of signed requests (``POST /api/call-event``, ``POST /api/consent``).

A phone system or a site's server signs ``"<ts>.<raw body>"`` with the site's call-event
secret (HMAC-SHA256, ``X-Ops-Site-Id`` / ``X-Ops-Ts`` / ``X-Ops-Signature``). Checks, in
order: body size, the site id's format (no query for a malformed one), the site's secrets
(a short-lived cache; a look-up for an unknown or uncached id first takes a token from the
client's look-up bucket, so made-up ids cost bounded queries), the signature and time
window (current or next secret), the strict body, and the same site in header and body.
Every failure answers the same 401 body, so nothing tells a prober which check failed.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
from starlette.requests import Request

from gateway.errors import ApiError, JSONResponse, decode_json, json_response
from gateway.limits import KeyedLimit, client_key, rate_limited
from opsmantik_stream.leads import signing
from opsmantik_stream.queries import Q

__all__ = ["SignedRequest", "SignedSites", "authenticate", "read_limited", "unauthorized"]

T = TypeVar("T")

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_UNAUTHORIZED_BODY = {"ok": False, "error": "unauthorized", "message": "unauthorized"}
# Unknown ids are remembered this long, so a flood of one made-up id costs one query.
_NEGATIVE_TTL_S = 5.0
_MAX_CACHED_SITES = 50_000

SiteKey = tuple[str, uuid.UUID | None]


def unauthorized() -> JSONResponse:
    """The one 401 answer of every signed route."""
    return json_response(_UNAUTHORIZED_BODY, 401, {"X-OpsMantik-Error-Code": "unauthorized"})


async def read_limited(request: Request, limit: int) -> bytes:
    """The raw body, or 413 as soon as it (or its declared length) exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"the body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _site_key(header: str) -> SiteKey | None:
    if _HEX32.match(header):
        return header.lower(), None
    try:
        return "", uuid.UUID(header)
    except ValueError:
        return None


class SignedSites:
    """The gateway's short-lived copy of signing sites (id, public id, secrets).

    Every database look-up (a cache miss, known or unknown id) first takes a token from a
    per-client bucket, so a client cycling through made-up site ids costs at most
    ``call_event_lookup_rate_limit_per_min`` queries a minute; a known site is looked up
    once per ``call_event_site_cache_ttl_s``. (A dict with expiry times is all this needs.)
    """

    def __init__(self, ttl_s: float, lookups_per_min: int) -> None:
        self.ttl_s = ttl_s
        self.lookups = KeyedLimit(lookups_per_min)
        self._entries: dict[SiteKey, tuple[asyncpg.Record | None, float]] = {}

    def cached(self, key: SiteKey, now: float) -> tuple[bool, asyncpg.Record | None]:
        hit = self._entries.get(key)
        if hit is None or hit[1] <= now:
            return False, None
        return True, hit[0]

    def may_query(self, client: str) -> float:
        """0 when this client may cause one more look-up now, else seconds to wait."""
        return self.lookups.take(client)

    async def load(self, pool: asyncpg.Pool, key: SiteKey, now: float) -> asyncpg.Record | None:
        row = await pool.fetchrow(Q.leads.site_for_call_event, key[0], key[1])
        if len(self._entries) >= _MAX_CACHED_SITES:
            self._entries.clear()
        self._entries[key] = (row, now + (self.ttl_s if row is not None else _NEGATIVE_TTL_S))
        return row


def _sites(ctx: Any) -> SignedSites:
    sites: SignedSites | None = ctx.signed_sites
    if sites is None:
        s = ctx.settings
        sites = ctx.signed_sites = SignedSites(s.call_event_site_cache_ttl_s, s.call_event_lookup_rate_limit_per_min)
    return sites


@dataclass(frozen=True)
class SignedRequest(Generic[T]):
    """An authenticated signed request: its site row, decoded body and signature."""

    site: asyncpg.Record
    body: T
    signature: str
    ts: int
    client: str


async def authenticate(request: Request, typ: type[T], max_bytes: int) -> SignedRequest[T] | None:
    """The signed request, or None when authentication fails (answer ``unauthorized()``).

    413 for a body over ``max_bytes``, 429 when the client's site look-ups are spent, 400/422
    for a signed body that does not fit ``typ``. ``typ`` has a ``site_id`` field."""
    ctx = request.app.state.ctx
    clock: Callable[[], float] = ctx.clock
    raw = await read_limited(request, max_bytes)
    ts_header = request.headers.get("x-ops-ts")
    signature = request.headers.get("x-ops-signature")
    key = _site_key(request.headers.get("x-ops-site-id", ""))
    if key is None or signature is None:
        return None
    client = client_key(request)
    sites = _sites(ctx)
    now = time.monotonic()
    fresh, site = sites.cached(key, now)
    if not fresh:
        wait = sites.may_query(client)
        if wait > 0:
            raise rate_limited(wait, "too many signed requests for unknown or uncached sites")
        site = await sites.load(ctx.pool, key, now)
    secrets = (site["current_secret"], site["next_secret"]) if site is not None else ()
    verified = signing.verify_signature(secrets, ts_header, signature, raw, clock())
    if not verified and fresh and site is not None and sites.may_query(client) == 0:
        # the cached secrets may predate a rotation: look once more before refusing
        site = await sites.load(ctx.pool, key, now)
        secrets = (site["current_secret"], site["next_secret"]) if site is not None else ()
        verified = signing.verify_signature(secrets, ts_header, signature, raw, clock())
    if not verified or site is None:
        return None
    body = decode_json(raw, typ)
    if str(getattr(body, "site_id", "")).strip().lower() not in {site["public_id"], str(site["id"])}:
        # a signature is bound to the site that signed it; reuse across sites fails auth
        return None
    return SignedRequest(site=site, body=body, signature=signature, ts=int(ts_header or 0), client=client)
