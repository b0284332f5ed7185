"""Routes: read-only views of a site for the console and other clients (``site:read``).

``GET /api/sites`` (the sites the caller can read), and under ``/api/sites/{site}/``: ``leads``
(the inbox: intents and call events with session summary, masked target and conversion state),
``leads/{id}`` (plus the score's parts, session timeline, action log and sales), ``sessions``
and ``sessions/{id}``, ``traffic`` (per day by channel and attribution), ``sales`` (with their
conversion state) and ``alerts`` (watchtower). Every query runs under ``api_transaction``, so
row-level security applies; lists are keyset-paged (``cursor`` from the previous page's
``next_cursor``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway.auth import CurrentPrincipal, site_uuid
from gateway.errors import ApiError, JSONResponse, json_response
from gateway.operator import parse_time_param, parse_uuid_or_404
from opsmantik_stream.console import reads
from opsmantik_stream.console.views import CursorError
from opsmantik_stream.db import api_transaction
from opsmantik_stream.enums import CallStatus, IntentAction, SaleStatus
from opsmantik_stream.queries import Q
from opsmantik_stream.rbac import Capability

router = APIRouter(tags=["site views"])

Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")]
Limit = Annotated[int, Query(ge=1, le=reads.MAX_PAGE)]
Text = Annotated[str | None, Query(max_length=200)]


def _one_of(value: str | None, allowed: type[CallStatus] | type[IntentAction] | type[SaleStatus], name: str) -> None:
    if value is not None and value not in {v.value for v in allowed}:
        raise ApiError(400, f"invalid_{name}", f"{name} must be one of {', '.join(v.value for v in allowed)}")


def _bad_cursor() -> ApiError:
    return ApiError(400, "invalid_cursor", "cursor must be the next_cursor of a previous page")


@router.get("/api/sites", response_class=JSONResponse, summary="The sites the caller can read")
async def list_sites(request: Request, principal: CurrentPrincipal) -> JSONResponse:
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        rows = await conn.fetch(Q.console.visible_sites)
    sites = [
        {
            "site_id": str(r["id"]),
            "public_id": r["public_id"],
            "name": r["name"],
            "domain": r["domain"],
            "currency": r["currency"],
            "timezone": r["timezone"],
            "default_destination": r["default_destination"],
            "role": principal.role_for(r["public_id"]),
        }
        for r in rows
    ]
    return json_response({"ok": True, "sites": sites})


@router.get("/api/sites/{site}/leads", response_class=JSONResponse, summary="Lead inbox, newest first (paged)")
async def leads(
    site: str,
    request: Request,
    principal: CurrentPrincipal,
    status: Text = None,
    action: Text = None,
    source: Annotated[str | None, Query(max_length=200, description="traffic source (channel)")] = None,
    medium: Annotated[str | None, Query(max_length=200, description="traffic medium")] = None,
    from_: Annotated[str | None, Query(alias="from", max_length=64)] = None,
    to: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> JSONResponse:
    _one_of(status, CallStatus, "status")
    _one_of(action, IntentAction, "action")
    filters = reads.LeadFilters(
        status=status,
        action=action,
        traffic_source=source,
        traffic_medium=medium,
        start=parse_time_param(from_, "from"),
        end=parse_time_param(to, "to"),
    )
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        site_id = await site_uuid(conn, principal, site, Capability.SITE_READ)
        try:
            page = await reads.leads_page(conn, site_id, filters, cursor, limit)
        except CursorError:
            raise _bad_cursor() from None
    return json_response({"ok": True, "site": site, **page})


@router.get("/api/sites/{site}/leads/{lead_id}", response_class=JSONResponse, summary="One lead with its why")
async def lead(site: str, lead_id: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    cid = parse_uuid_or_404(lead_id, "lead")
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        site_id = await site_uuid(conn, principal, site, Capability.SITE_READ)
        detail = await reads.lead_detail(conn, site_id, cid)
    if detail is None:
        raise ApiError(404, "lead_not_found", "no such lead on this site")
    return json_response({"ok": True, "site": site, "lead": detail})


@router.get("/api/sites/{site}/sessions", response_class=JSONResponse, summary="Sessions, newest first (paged)")
async def sessions(
    site: str,
    request: Request,
    principal: CurrentPrincipal,
    source: Text = None,
    medium: Text = None,
    from_: Annotated[str | None, Query(alias="from", max_length=64)] = None,
    to: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> JSONResponse:
    start, end = parse_time_param(from_, "from"), parse_time_param(to, "to")
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        site_id = await site_uuid(conn, principal, site, Capability.SITE_READ)
        try:
            page = await reads.sessions_page(
                conn,
                site_id,
                start=start,
                end=end,
                traffic_source=source,
                traffic_medium=medium,
                cursor=cursor,
                limit=limit,
            )
        except CursorError:
            raise _bad_cursor() from None
    return json_response({"ok": True, "site": site, **page})


@router.get("/api/sites/{site}/sessions/{session_id}", response_class=JSONResponse, summary="One session's timeline")
async def session(site: str, session_id: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    sid = parse_uuid_or_404(session_id, "session")
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        site_id = await site_uuid(conn, principal, site, Capability.SITE_READ)
        detail = await reads.session_detail(conn, site_id, sid)
    if detail is None:
        raise ApiError(404, "session_not_found", "no such session on this site")
    return json_response({"ok": True, "site": site, "session": detail})


@router.get(
    "/api/sites/{site}/traffic",
    response_class=JSONResponse,
    summary="Sessions, intents, sealed leads and sales per day by channel and attribution",
)
async def traffic(
    site: str,
    request: Request,
    principal: CurrentPrincipal,
    days: Annotated[int, Query(ge=1, le=90)] = 7,
) -> JSONResponse:
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        site_id = await site_uuid(conn, principal, site, Capability.SITE_READ)
        data = await reads.traffic(conn, site_id, days=days, now=dt.datetime.now(dt.UTC))
    return json_response({"ok": True, "site": site, **data})


@router.get("/api/sites/{site}/sales", response_class=JSONResponse, summary="Sales with their conversion (paged)")
async def sales(
    site: str,
    request: Request,
    principal: CurrentPrincipal,
    status: Text = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> JSONResponse:
    _one_of(status, SaleStatus, "status")
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        site_id = await site_uuid(conn, principal, site, Capability.SITE_READ)
        try:
            page = await reads.sales_page(conn, site_id, status=status, cursor=cursor, limit=limit)
        except CursorError:
            raise _bad_cursor() from None
    return json_response({"ok": True, "site": site, **page})


@router.get("/api/sites/{site}/alerts", response_class=JSONResponse, summary="The site's watchtower alerts")
async def alerts(
    site: str,
    request: Request,
    principal: CurrentPrincipal,
    include_resolved: bool = False,
    limit: Limit = 50,
) -> JSONResponse:
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        site_id = await site_uuid(conn, principal, site, Capability.SITE_READ)
        rows = await reads.alerts(conn, site_id, include_resolved=include_resolved, limit=limit)
    return json_response({"ok": True, "site": site, "alerts": rows})
