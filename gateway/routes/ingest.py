"""Routes: ingest (``POST``/``OPTIONS /api/sync``, SPEC.md §3) and the tracker script
(``/assets/core.js``, legacy ``/ux-core.js``, SPEC.md §2).

Checks run in the contract's order and the first failure answers: body size 413 -> JSON
400 / schema 422 -> site 400 -> origin 403 -> rate limit 429 -> consent 204 -> partition
503. Nothing before the partition writes anything, so every refusal leaves the database
as it was. Accepted events go through the owning partition's micro-batcher; the answer
is sent only after the partition's transaction committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from pathlib import Path
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.batcher import Backpressure, PartitionBatcher, PartitionMoved, PartitionUnavailable
from gateway.errors import JSONResponse, json_response
from gateway.metrics import BATCH_SIZE, INGEST_EVENTS, timed_partition_call
from opsmantik_stream.ingest.admission import TokenBucketLimiter, client_key, origin_allowed, truncate_ip
from opsmantik_stream.ingest.schema import (
    MAX_BODY_BYTES,
    BodyError,
    WireEvent,
    WireResult,
    consent_scopes,
    decode_body,
)
from opsmantik_stream.queries import Q

__all__ = ["IngestRuntime", "SiteInfo", "ingest_runtime", "router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["ingest"])

INGEST_KEY_HEADER = "x-opsmantik-ingest-key"
_EXPOSE = (
    "Retry-After, X-OpsMantik-Error-Code, x-opsmantik-dedup, x-opsmantik-ratelimit, "
    "x-opsmantik-quota-exceeded, x-opsmantik-quota-remaining, x-opsmantik-overage, "
    "x-opsmantik-consent-missing"
)
_UNAVAILABLE_RETRY_S = "2"
_NEGATIVE_TTL_S = 5.0


class SiteInfo(msgspec.Struct, frozen=True):
    site_id: str
    public_id: str
    origins: tuple[str, ...]
    ingest_key_sha256: str | None
    rate_limit_per_min: int | None


class IngestRuntime:
    """Per-gateway ingest state: site cache, rate limiter, one micro-batcher per partition."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.limiter = TokenBucketLimiter()
        self.batchers: dict[str, PartitionBatcher] = {}
        self._sites: dict[str, tuple[SiteInfo | None, float]] = {}
        self._loading: dict[str, asyncio.Future[SiteInfo | None]] = {}
        self.outcomes: dict[str, int] = {}

    async def site(self, public_id: str) -> SiteInfo | None:
        """The site by public id, cached for ``ingest_site_cache_ttl_s`` (unknown ids briefly)."""
        now = time.monotonic()
        hit = self._sites.get(public_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        loading = self._loading.get(public_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[SiteInfo | None] = asyncio.get_running_loop().create_future()
        self._loading[public_id] = future
        try:
            row = await self.ctx.pool.fetchrow(Q.ingest.site_for_ingest, public_id)
            info = None
            if row is not None:
                info = SiteInfo(
                    site_id=str(row["id"]),
                    public_id=row["public_id"],
                    origins=tuple(row["origins"]),
                    ingest_key_sha256=row["ingest_key_sha256"],
                    rate_limit_per_min=row["rate_limit_per_min"],
                )
            ttl = self.settings.ingest_site_cache_ttl_s if info is not None else _NEGATIVE_TTL_S
            if len(self._sites) > 100_000:
                self._sites.clear()
            self._sites[public_id] = (info, time.monotonic() + ttl)
            future.set_result(info)
            return info
        except BaseException as exc:
            future.set_exception(exc)
            # the waiters (if any) re-raise it; mark it retrieved for the loop's sake
            future.exception()
            raise
        finally:
            self._loading.pop(public_id, None)

    def batcher(self, name: str) -> PartitionBatcher:
        """The micro-batcher of the partition actor ``name`` (one per actor, created on use)."""
        batcher = self.batchers.get(name)
        if batcher is None:
            timeout = self.settings.partition_call_timeout_s
            routing = self.ctx.routing

            async def send(payload: bytes) -> bytes:
                try:
                    # by name: a batch always goes to the actor it was gathered for, even
                    # when the routing table moved on meanwhile (it drains there)
                    handle = routing.handle(name)
                    return bytes(await asyncio.wait_for(handle.ingest.remote(payload), timeout))
                except Exception:
                    # a dead actor's handle is looked up again on the next call
                    routing.forget(name)
                    raise

            batcher = PartitionBatcher(
                name,
                timed_partition_call(send),
                max_events=self.settings.batch_max_events,
                max_wait_s=self.settings.batch_max_wait_ms / 1000.0,
                max_inflight=self.settings.partition_max_inflight,
                max_queued=self.settings.partition_max_queued_events,
                on_call=BATCH_SIZE.observe,
            )
            self.batchers[name] = batcher
        return batcher

    def count(self, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n
        INGEST_EVENTS.labels(outcome).inc(n)


def ingest_runtime(ctx: Any) -> IngestRuntime:
    runtime = ctx.extras.get("ingest")
    if runtime is None:
        runtime = ctx.extras["ingest"] = IngestRuntime(ctx)
    return runtime  # type: ignore[no-any-return]


def _cors(origin: str | None, allowed: bool = False) -> dict[str, str]:
    # The origin is reflected on every answer (also refusals) so the tracker can read the
    # status and drop or back off; whether the origin may *write* is decided by the origin
    # check, not by CORS. Credentials are allowed only for an allowed origin.
    headers = {"Vary": "Origin"}
    if origin:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = _EXPOSE
        if allowed:
            headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def _error(http_status: int, code: str, message: str, headers: dict[str, str], **extra: Any) -> JSONResponse:
    body = {"ok": False, "error": code, "message": message, **extra}
    return json_response(body, http_status, {**headers, "X-OpsMantik-Error-Code": code})


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it is larger than 256 KiB (checked before and while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    # Reads the ASGI messages directly: `request.stream()` is an async generator, and
    # asyncio registers every async generator in a WeakSet, which profiling showed to cost
    # about a tenth of the gateway's CPU per single-event request.
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks) if size else b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _client_ip(request: Request, trust_forwarded: bool) -> str | None:
    if trust_forwarded:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            return forwarded.split(",", 1)[0].strip()
    return request.client.host if request.client else None


@router.options("/api/sync", include_in_schema=False)
async def sync_preflight(request: Request) -> Response:
    """CORS preflight. With ``?s=<site>`` the origin is checked against that site (403);
    without it the origin is reflected and the POST itself is checked."""
    origin = request.headers.get("origin")
    headers = {
        **_cors(origin, allowed=False),
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type, X-OpsMantik-Ingest-Key, X-OpsMantik-Version",
        "Access-Control-Max-Age": "86400",
    }
    public_id = request.query_params.get("s")
    if public_id and origin:
        site = await ingest_runtime(request.app.state.ctx).site(public_id.strip())
        if site is None or not origin_allowed(origin, site.origins):
            return Response(status_code=403, headers=headers)
        headers["Access-Control-Allow-Credentials"] = "true"
    return Response(status_code=204, headers=headers)


@router.post(
    "/api/sync",
    summary="Ingest tracker events (one event, or {events: [...]} with 1-100 events of one site)",
    response_class=JSONResponse,
    status_code=202,
    responses={
        200: {"description": "duplicate (x-opsmantik-dedup: 1)"},
        204: {"description": "no analytics consent: nothing stored"},
        400: {"description": "invalid_json, site_not_found, batch_mixed_sites"},
        403: {"description": "origin not allowed for the site"},
        413: {"description": "body over 256 KiB"},
        422: {"description": "schema error; the field path is in X-OpsMantik-Error-Code"},
        429: {"description": "rate limited (x-opsmantik-ratelimit) or over quota (x-opsmantik-quota-exceeded)"},
        503: {"description": "partition unavailable: retry after Retry-After"},
    },
)
async def sync(request: Request) -> Response:
    """Body: one event, or ``{"events": [...]}`` with 1-100 events of one site. Event keys:
    ``s`` site public id (required), ``u``/``url`` page (required, <= 4096), ``eid`` client
    event id, ``sid`` session UUID, ``ec``/``ea``/``el``/``ev`` category/action/label/value,
    ``r`` referrer, ``consent`` scopes (``analytics`` required to store anything), ``meta``
    (``fp`` fingerprint, click ids, UTM/template parameters, device hints, pulse fields).

    A single event answers 202 ``{"ok": true, "status": "accepted", "ingest_id"}``, 200 for
    a duplicate (``x-opsmantik-dedup: 1``), or 429 when the monthly quota is used up; a
    batch answers 202 with ``results[i].status`` per event. 2xx is sent only after the
    partition's transaction committed. A request without ``Origin`` needs the site's ingest
    key in ``X-OpsMantik-Ingest-Key``."""
    ctx = request.app.state.ctx
    runtime = ingest_runtime(ctx)
    settings = ctx.settings
    received_ms = time.time_ns() // 1_000_000
    origin = request.headers.get("origin")
    headers = _cors(origin)

    # 1. size, JSON, schema
    body = await _read_body(request)
    if body is None:
        runtime.count("too_large")
        return _error(413, "payload_too_large", "the body is larger than 256 KiB", headers)
    try:
        envelope, events = decode_body(body)
    except BodyError as exc:
        runtime.count("invalid")
        return _error(exc.status, exc.code, exc.message, headers)
    public_ids = {(ev.s if ev.s is not None else envelope.s or "").strip() for ev in events}
    if len(public_ids) != 1:
        runtime.count("invalid")
        return _error(400, "batch_mixed_sites", "all events of a batch must belong to one site", headers)
    public_id = public_ids.pop()

    # 2. site
    site = await runtime.site(public_id)
    if site is None:
        runtime.count("site_not_found")
        return _error(400, "site_not_found", "no site with this id", headers)

    # 3. origin (browsers), or the site's ingest key (server-to-server, no Origin)
    if origin is not None:
        if not origin_allowed(origin, site.origins):
            runtime.count("origin_rejected")
            return _error(403, "origin_not_allowed", "this origin may not send events for the site", headers)
        headers = _cors(origin, allowed=True)
    else:
        key = request.headers.get(INGEST_KEY_HEADER, "")
        expected = site.ingest_key_sha256 or ""
        given = hashlib.sha256(key.encode()).hexdigest() if key else ""
        if not (expected and given and hmac.compare_digest(given, expected)):
            runtime.count("origin_rejected")
            return _error(403, "origin_required", "a request without Origin needs the site's ingest key", headers)

    # 4. rate limit per (site, client ip + UA prefix); a batch costs one token
    ip = _client_ip(request, settings.ingest_trust_forwarded_for)
    user_agent = request.headers.get("user-agent")
    limit = site.rate_limit_per_min or settings.rate_limit_per_min
    wait = runtime.limiter.take(f"{site.site_id}|{client_key(ip, user_agent)}", limit)
    if wait > 0:
        runtime.count("rate_limited")
        return _error(
            429,
            "rate_limited",
            "too many requests from this client",
            {
                **headers,
                "x-opsmantik-ratelimit": "1",
                "Retry-After": str(TokenBucketLimiter.retry_after(wait)),
            },
        )

    # 5. consent: nothing is stored or billed without the analytics scope
    scopes = [consent_scopes(ev) for ev in events]
    wanted = [i for i, sc in enumerate(scopes) if "analytics" in sc]
    if not wanted:
        runtime.count("consent_missing", len(events))
        return Response(status_code=204, headers={**headers, "x-opsmantik-consent-missing": "analytics"})

    # 6. the owning partition, through its micro-batcher
    if not ctx.ray_enabled:
        return _unavailable(runtime, headers, len(wanted))
    stored_ip = truncate_ip(ip)
    ua = user_agent[:512] if user_agent else None
    wire = [
        WireEvent.build(events[i], site_id=site.site_id, received_ms=received_ms, scopes=scopes[i], ip=stored_ip, ua=ua)
        for i in wanted
    ]
    try:
        results = await _submit(ctx, runtime, site.site_id, wire)
    except Backpressure:
        runtime.count("backpressure", len(wire))
        return _unavailable(runtime, headers, 0, code="partition_busy")
    except (PartitionUnavailable, Exception) as exc:
        if not isinstance(exc, PartitionUnavailable):
            log.warning("ingest routing failed", extra={"error": type(exc).__name__})
        return _unavailable(runtime, headers, len(wire))

    for r in results:
        runtime.count(r.status)
        if r.stored:
            runtime.count(r.stored)
    if len(wanted) < len(events):
        runtime.count("consent_missing", len(events) - len(wanted))
    if envelope.events is None:
        return _single_answer(results[0], headers)
    by_index = dict(zip(wanted, results, strict=True))
    items = []
    for i in range(len(events)):
        found = by_index.get(i)
        items.append({"status": "consent_missing"} if found is None else _result_item(found))
    out_headers = dict(headers)
    rejected = [r for r in results if r.status == "rejected_quota"]
    if rejected:
        out_headers["x-opsmantik-quota-exceeded"] = "1"
        out_headers["x-opsmantik-quota-remaining"] = "0"
    return json_response({"ok": True, "status": "accepted", "results": items}, 202, out_headers)


async def _submit(ctx: Any, runtime: IngestRuntime, site_id: str, wire: list[WireEvent]) -> list[WireResult]:
    """Send to the owner's batcher. A partition retired by a resize answers "moved" (nothing
    written): re-read the routing table and resend to the new owner (events are idempotent)."""
    for _hop in range(3):
        table = await ctx.routing.table()
        name = table.owner_of(site_id)
        try:
            return await runtime.batcher(name).submit(wire)
        except PartitionMoved:
            old = runtime.batchers.get(name)
            if old is not None and old.inflight == 0 and old.queued == 0:
                runtime.batchers.pop(name, None)  # that actor is going away
            await ctx.routing.refresh(table.version)
    raise PartitionUnavailable("the routing table did not settle")


def _unavailable(runtime: IngestRuntime, headers: dict[str, str], n: int, code: str = "partition_unavailable") -> Any:
    runtime.count("unavailable", n)
    return _error(
        503,
        code,
        "the site's partition cannot take events right now; retry later",
        {**headers, "Retry-After": _UNAVAILABLE_RETRY_S},
    )


def _result_item(r: WireResult) -> dict[str, Any]:
    item: dict[str, Any] = {"status": r.status, "ingest_id": r.ingest_id}
    if r.status == "rejected_quota":
        item["retry_after"] = r.retry_after_s
    if r.overage:
        item["overage"] = True
    if r.stored:
        item["stored"] = r.stored
    return item


def _single_answer(r: WireResult, headers: dict[str, str]) -> Response:
    if r.status == "duplicate":
        return json_response(
            {"ok": True, "status": "duplicate", "ingest_id": r.ingest_id},
            200,
            {**headers, "x-opsmantik-dedup": "1"},
        )
    if r.status == "rejected_quota":
        return _error(
            429,
            "quota_exceeded",
            "the site's monthly event quota is used up",
            {
                **headers,
                "x-opsmantik-quota-exceeded": "1",
                "x-opsmantik-quota-remaining": "0",
                "Retry-After": str(r.retry_after_s or 1),
            },
            status="rejected_quota",
            ingest_id=r.ingest_id,
        )
    out = dict(headers)
    if r.quota_remaining is not None:
        out["x-opsmantik-quota-remaining"] = str(r.quota_remaining)
    if r.overage:
        out["x-opsmantik-overage"] = "true"
    body: dict[str, Any] = {"ok": True, "status": "accepted", "ingest_id": r.ingest_id}
    if r.stored:
        body["stored"] = r.stored
    return json_response(body, 202, out)


# ---------------------------------------------------------------------------- tracker

_STATIC = Path(__file__).resolve().parent.parent / "static"
_TRACKER: tuple[bytes, str] | None = None


def _tracker() -> tuple[bytes, str]:
    global _TRACKER
    if _TRACKER is None:
        data = (_STATIC / "core.js").read_bytes()
        _TRACKER = (data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"')
    return _TRACKER


async def _serve_tracker(request: Request) -> Response:
    data, etag = _tracker()
    headers = {
        "ETag": etag,
        # long-lived, revalidated by ETag once stale; sites embed the script on every page
        "Cache-Control": "public, max-age=86400, stale-while-revalidate=604800",
        "Cross-Origin-Resource-Policy": "cross-origin",
        "X-Content-Type-Options": "nosniff",
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="application/javascript; charset=utf-8", headers=headers)


@router.get("/assets/core.js", summary="The browser tracker (SPEC.md §2)", response_class=Response)
async def tracker_core(request: Request) -> Response:
    return await _serve_tracker(request)


@router.get("/ux-core.js", summary="The browser tracker (legacy path)", response_class=Response)
async def tracker_legacy(request: Request) -> Response:
    return await _serve_tracker(request)
