"""Routes: ingest (``POST``/``OPTIONS /api/sync``) and the tracker script
(``/assets/core.js``, legacy ``/ux-core.js``).

``POST /api/sync`` is served by ``gateway.sync`` on the lean path (the app hands it over
before FastAPI's stack); the route declared here describes it in the OpenAPI document and
answers the same way if a request ever reaches it through FastAPI.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.errors import JSONResponse
from gateway.sync import EXPOSE, handle
from gateway.sync import _read_body as _read_sync_body
from gateway.sync import _Request as _SyncRequest
from opsmantik_stream.ingest.admission import origin_allowed

__all__ = ["router"]

router = APIRouter(tags=["ingest"])


@router.options("/api/sync", include_in_schema=False)
async def sync_preflight(request: Request) -> Response:
    """CORS preflight. With ``?s=<site>`` the origin is checked against that site (403);
    without it the origin is reflected and the POST itself is checked."""
    origin = request.headers.get("origin")
    headers = {
        "Vary": "Origin",
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type, X-OpsMantik-Ingest-Key, X-OpsMantik-Version",
        "Access-Control-Max-Age": "86400",
    }
    if origin:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = EXPOSE
    public_id = request.query_params.get("s")
    if public_id and origin:
        site = await request.app.state.ctx.sync.site(public_id.strip())
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
        403: {"description": "origin not allowed for the site, or no ingest key without Origin"},
        413: {"description": "body over 256 KiB"},
        422: {"description": "schema error; the field path is in X-OpsMantik-Error-Code"},
        429: {"description": "rate limited (x-opsmantik-ratelimit) or over quota (x-opsmantik-quota-exceeded)"},
        503: {"description": "partition unavailable: retry after Retry-After"},
    },
)
async def sync(request: Request) -> Response:
    """Body: one event, or ``{"events": [...]}`` with 1-100 events of one site. Event keys:
    ``s`` site public id (required), ``u``/``url`` page (required, <= 4096), ``eid`` client
    event id (required without ``Origin``), ``sid`` session UUID, ``ec``/``ea``/``el``/``ev``
    category/action/label/value, ``r`` referrer, ``consent`` scopes (``analytics`` required to
    store anything), ``meta`` (``fp`` fingerprint, click ids, UTM/template parameters, device
    hints, pulse fields; other keys are ignored).

    A single event answers 202 ``{"ok": true, "status": "accepted", "ingest_id"}``, 200 for
    a duplicate (``x-opsmantik-dedup: 1``), or 429 when the monthly quota is used up; a
    batch answers 202 with ``results[i].status`` per event. 2xx is sent only after the
    partition's transaction committed. A request without ``Origin`` needs the site's ingest
    key in ``X-OpsMantik-Ingest-Key``."""
    scope = request.scope
    parsed = _SyncRequest(scope)
    status, headers, body = await handle(
        request.app.state.ctx.sync, scope, parsed, await _read_sync_body(request.receive, parsed.content_length)
    )
    return Response(body, status_code=status, headers={k.decode(): v.decode("latin-1") for k, v in headers})


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


@router.get("/assets/core.js", summary="The browser tracker", response_class=Response)
async def tracker_core(request: Request) -> Response:
    return await _serve_tracker(request)


@router.get("/ux-core.js", summary="The browser tracker (legacy path)", response_class=Response)
async def tracker_legacy(request: Request) -> Response:
    return await _serve_tracker(request)
