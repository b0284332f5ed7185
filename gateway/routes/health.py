"""Liveness and readiness: database and actors."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from gateway.errors import JSONResponse, json_response
from gateway.handles import actor_status

router = APIRouter(tags=["operations"])


@router.get("/health", response_class=JSONResponse, summary="Database and actor status (200 or 503)")
async def health(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    checks: dict[str, object] = {}
    ok = True
    try:
        async with asyncio.timeout(2.0):
            await ctx.pool.fetchval("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
        ok = False
    if ctx.ray_enabled:
        actors = await actor_status(ctx.settings.ray_namespace, timeout_s=2.0)
        checks["actors"] = actors
        ok = ok and bool(actors) and all(v == "ok" for v in actors.values())
    else:
        checks["actors"] = "disabled"
    return json_response({"ok": ok, "status": "ok" if ok else "degraded", "checks": checks}, 200 if ok else 503)
