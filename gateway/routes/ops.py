"""Routes: operations (`/metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.metrics import render_metrics

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    body = await render_metrics(request.app.state.ctx.pool)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
