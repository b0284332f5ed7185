"""Routes: dead letters (events that could not be stored), listed and replayed by operators.

Listing needs ``site:read``; replaying writes tracking data and needs ``site:write``. The
replay runs on the partition that owns the site (the single writer for its tracking data).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from gateway.auth import CurrentPrincipal, site_with_capability
from gateway.errors import ApiError, JSONResponse, json_response
from gateway.partitions import PartitionUnavailable
from opsmantik_stream.db import api_transaction
from opsmantik_stream.enums import ActorType, DeadLetterStatus
from opsmantik_stream.queries import Q
from opsmantik_stream.rbac import Capability
from opsmantik_stream.tenancy import write_audit

router = APIRouter(tags=["dead letters"])


@router.get("/api/dead-letters", response_class=JSONResponse, summary="Dead letters of a site (site:read)")
async def list_dead_letters(
    request: Request,
    principal: CurrentPrincipal,
    site: str = Query(...),
    status: DeadLetterStatus | None = Query(None),
    limit: int = Query(100, ge=1, le=1000),
) -> JSONResponse:
    site_id = await site_with_capability(request, principal, site, Capability.SITE_READ)
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        rows = await conn.fetch(Q.ingest.list_dead_letters, site_id, status.value if status else None, limit)
    # the payload (URLs, fingerprints) stays in the database; operators see the reason
    return json_response({"site": site, "dead_letters": [dict(r) for r in rows]})


@router.post(
    "/api/dead-letters/{dead_letter_id}/replay",
    response_class=JSONResponse,
    summary="Replay a pending ingest dead letter through its partition (site:write)",
)
async def replay_dead_letter(
    # a bigserial: anything beyond it would fail in the partition's query (and read as an outage)
    dead_letter_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    request: Request,
    principal: CurrentPrincipal,
    site: str = Query(...),
) -> JSONResponse:
    ctx = request.app.state.ctx
    site_id = await site_with_capability(request, principal, site, Capability.SITE_WRITE)
    try:
        result = await ctx.partitions.call(site_id, "replay_dead_letter", dead_letter_id, site_id)
    except PartitionUnavailable:
        raise ApiError(503, "partition_unavailable", "try again", headers={"Retry-After": "1"}) from None
    if result["status"] == "not_found":
        raise ApiError(404, "dead_letter_not_found", "no such dead letter for this site")
    if result["status"] == "not_replayable":
        raise ApiError(409, "dead_letter_not_pending", "only a PENDING ingest dead letter can be replayed")
    async with api_transaction(ctx.pool, principal.user_id) as conn:
        await write_audit(
            conn,
            ActorType.USER,
            principal.user_id,
            "dead_letter.replay",
            "dead_letter",
            str(dead_letter_id),
            site_id,
            {"result": result["status"]},
        )
    return json_response({"ok": result["status"] != "failed", "dead_letter_id": dead_letter_id, **result})
