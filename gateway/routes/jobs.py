"""Routes: run a periodic job now (`POST /api/jobs/{name}`), for external schedulers."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request

from gateway.errors import ApiError, JSONResponse, json_response
from opsmantik_stream.jobs import JOBS, run_job

router = APIRouter(tags=["operations"])


def _check_cron_secret(request: Request) -> None:
    expected = request.app.state.ctx.settings.cron_secret
    if not expected:
        # no secret configured: the endpoint is off rather than open
        raise ApiError(403, "CRON_FORBIDDEN", "OPSMANTIK_CRON_SECRET is not configured")
    given = request.headers.get("x-cron-secret", "")
    if not given:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
    # constant-time compare of equal-length digests, so length leaks nothing either
    if not given or not hmac.compare_digest(
        hmac.new(b"cron", given.encode(), "sha256").digest(),
        hmac.new(b"cron", expected.encode(), "sha256").digest(),
    ):
        raise ApiError(403, "CRON_FORBIDDEN", "missing or wrong cron secret")


@router.post("/api/jobs/{name}", response_class=JSONResponse, summary="Run a periodic job now (cron secret)")
async def run(name: str, request: Request) -> JSONResponse:
    _check_cron_secret(request)
    if name not in JOBS:
        raise ApiError(404, "job_not_found", f"no job named {name!r}", extra={"jobs": sorted(JOBS)})
    ctx = request.app.state.ctx
    if ctx.ray_enabled:
        # jobs write as the schema owner (partitions, retention, ...): the Maintenance actor
        # runs them; the gateway's own role may not
        from actors.maintenance import MAINTENANCE_NAME

        result = await ctx.routing.handle(MAINTENANCE_NAME).run.remote(name)
    else:  # an app without actors (tests, tools) runs the job on its own pool
        result = await run_job(name, ctx.pool, ctx.settings)
    return json_response({"ok": True, "job": name, "result": result})
