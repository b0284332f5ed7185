"""Routes: the caller and the sites it can see."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.auth import CurrentPrincipal, require_capability
from gateway.errors import ApiError, JSONResponse, json_response
from opsmantik_stream import tenancy
from opsmantik_stream.db import api_transaction
from opsmantik_stream.rbac import Capability
from opsmantik_stream.uploads.delivery import credentials_overview

router = APIRouter(tags=["tenancy"])


@router.get("/api/me", response_class=JSONResponse, summary="The caller and its role per site")
async def me(principal: CurrentPrincipal) -> JSONResponse:
    return json_response(
        {
            "user_id": principal.user_id,
            "email": principal.email,
            "platform_role": principal.platform_role,
            "sites": {pid: {"site_id": a.site_id, "role": a.role} for pid, a in principal.sites.items()},
        }
    )


@router.get("/api/sites/{site}", response_class=JSONResponse, summary="A site's settings (site:read)")
async def get_site(site: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    require_capability(principal, site, Capability.SITE_READ)
    pool = request.app.state.ctx.pool
    async with api_transaction(pool, principal.user_id) as conn:
        try:
            data = await tenancy.get_site(conn, site)
        except tenancy.TenancyError:
            # RLS hid it, or it does not exist: the same answer either way
            raise ApiError(404, "site_not_found", "no such site") from None
    # where its conversions go, and which destinations have credentials (non-secret facts;
    # the API role cannot read the credentials table, so the service connection answers)
    async with pool.acquire() as conn:
        data["credentials"] = await credentials_overview(conn, data["site_id"])
    data["destination"] = data["default_destination"]
    return json_response(data)
