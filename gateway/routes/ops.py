"""Routes: operations (`/metrics`, the `/ops` page and its data)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.auth import CurrentPrincipal
from gateway.errors import ApiError, JSONResponse, json_response
from gateway.handles import actor_status
from gateway.metrics import render_metrics
from opsmantik_stream.queries import Q
from opsmantik_stream.watchtower import LAST_RUN_KEY

router = APIRouter(tags=["operations"])

_OPS_PAGE = Path(__file__).resolve().parent.parent / "static" / "ops.html"


def check_metrics_bearer(request: Request) -> None:
    """401 unless the request carries ``metrics_bearer_token`` (when one is configured)."""
    expected = request.app.state.ctx.settings.metrics_bearer_token
    if not expected:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip() if scheme.lower() == "bearer" else ""
    # constant-time compare of equal-length digests
    if not given or not hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    ):
        raise ApiError(
            401, "unauthorized", "a metrics bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )


async def metrics_response(request: Request) -> Response:
    check_metrics_bearer(request)
    body = await render_metrics(request.app.state.ctx)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/metrics",
    summary="Prometheus metrics (cached database figures; bearer or own port when configured)",
    response_class=Response,
)
async def metrics(request: Request) -> Response:
    if request.app.state.ctx.settings.metrics_port:
        raise ApiError(404, "not_found", "metrics are served on their own port")
    return await metrics_response(request)


@router.get("/ops", summary="Operator page (live charts; needs a platform-admin token)", response_class=HTMLResponse)
async def ops_page() -> HTMLResponse:
    return HTMLResponse(_OPS_PAGE.read_text(), headers={"Cache-Control": "no-cache"})


@router.get("/api/ops/summary", response_class=JSONResponse, summary="Cluster-wide figures (platform admin)")
async def ops_summary(request: Request, principal: CurrentPrincipal) -> JSONResponse:
    if not principal.is_platform_admin:
        # cluster-wide figures span every tenant
        raise ApiError(403, "forbidden", "platform admin only")
    ctx = request.app.state.ctx
    async with ctx.pool.acquire() as conn:
        data = {
            "queue": {r["status"]: r["n"] for r in await conn.fetch(Q.ops.queue_by_status)},
            "breakers": {r["state"]: r["n"] for r in await conn.fetch(Q.ops.breakers_by_state)},
            "ingest_last_minute": await conn.fetchval(Q.ops.ingest_last_minute),
            "dead_letters_pending": await conn.fetchval(Q.ops.dead_letters_pending),
            "alerts": {
                "by_kind": {r["kind"]: r["n"] for r in await conn.fetch(Q.watchtower.open_alerts_by_kind)},
                "open": [dict(r) for r in await conn.fetch(Q.watchtower.open_alerts_list, 50)],
                "last_run": await conn.fetchval(Q.runtime.get_state, LAST_RUN_KEY),
            },
        }
    data["actors"] = await actor_status(ctx.settings.ray_namespace) if ctx.ray_enabled else {}
    return json_response(data)
