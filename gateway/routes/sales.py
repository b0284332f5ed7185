"""Routes: conversations and sales (SPEC §5, §10). Every query runs under
``api_transaction`` (RLS); writes need ``leads:operate`` on the row's site and are audited."""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec
from fastapi import APIRouter, Query, Request

from gateway.auth import CurrentPrincipal, site_uuid
from gateway.errors import ApiError, JSONResponse, decode_json, domain_error, json_response
from gateway.operator import parse_time_param, parse_uuid_or_404, require_on_row_site
from opsmantik_stream.db import api_transaction
from opsmantik_stream.enums import ActorType
from opsmantik_stream.fields import NO_NUL_PATTERN, CurrencyCode, MinorUnits, Note, SitePublicId, Text32, Text64
from opsmantik_stream.leads import conversations as conv
from opsmantik_stream.leads import sales as sales_core
from opsmantik_stream.leads.errors import LeadError
from opsmantik_stream.queries import Q
from opsmantik_stream.rbac import Capability

router = APIRouter(tags=["sales"])


class ConversationBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    site: SitePublicId
    primary_call_id: uuid.UUID | None = None
    primary_session_id: uuid.UUID | None = None
    note: Note | None = None


class LinkBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    entity_type: Text32
    entity_id: uuid.UUID


class ResolveBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    status: Text32
    sale_id: uuid.UUID | None = None
    note: Note | None = None


class SaleBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    site: SitePublicId
    # the column is a bigint; no real sale comes near it (fields.MAX_MINOR_UNITS)
    amount_minor: MinorUnits
    occurred_at: Text64
    currency: CurrencyCode | None = None
    external_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL_PATTERN)] | None = None
    conversation_id: uuid.UUID | None = None
    notes: Note | None = None
    #: the customer's email and phone (E.164), for enhanced conversions: hashed on arrival
    email: Annotated[str, msgspec.Meta(max_length=320, pattern=NO_NUL_PATTERN)] | None = None
    phone: Text64 | None = None


@router.post(
    "/api/conversations",
    response_class=JSONResponse,
    status_code=201,
    summary="Create a conversation with exactly one primary call or session",
)
async def create_conversation(request: Request, principal: CurrentPrincipal) -> JSONResponse:
    body = decode_json(await request.body(), ConversationBody)
    try:
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            site_id = await site_uuid(conn, principal, body.site, Capability.LEADS_OPERATE)
            row, created = await conv.create_conversation(
                conn,
                site_id=site_id,
                primary_call_id=body.primary_call_id,
                primary_session_id=body.primary_session_id,
                note=body.note,
                user_id=principal.user_id,
            )
    except LeadError as exc:
        raise domain_error(exc) from None
    return json_response({"ok": True, "created": created, "conversation": row}, 201 if created else 200)


@router.post(
    "/api/conversations/{conversation_id}/links",
    response_class=JSONResponse,
    status_code=201,
    summary="Link a session, call, event or sale of the same site (duplicate -> 200)",
)
async def link_conversation(conversation_id: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    cid = parse_uuid_or_404(conversation_id, "conversation")
    body = decode_json(await request.body(), LinkBody)
    try:
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            row = await require_on_row_site(
                conn, principal, Q.leads.conversation_site, cid, "conversation", Capability.LEADS_OPERATE
            )
            link, created = await conv.add_link(
                conn,
                conversation_id=cid,
                site_id=row["site_id"],
                entity_type=body.entity_type,
                entity_id=body.entity_id,
                user_id=principal.user_id,
            )
    except LeadError as exc:
        raise domain_error(exc) from None
    return json_response({"ok": True, "created": created, "link": link}, 201 if created else 200)


@router.post(
    "/api/conversations/{conversation_id}/resolve",
    response_class=JSONResponse,
    summary="Resolve to WON, LOST or JUNK (optionally attaching a sale)",
)
async def resolve_conversation(conversation_id: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    cid = parse_uuid_or_404(conversation_id, "conversation")
    body = decode_json(await request.body(), ResolveBody)
    try:
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            row = await require_on_row_site(
                conn, principal, Q.leads.conversation_site, cid, "conversation", Capability.LEADS_OPERATE
            )
            result, changed = await conv.resolve_conversation(
                conn,
                conversation_id=cid,
                site_id=row["site_id"],
                status=body.status,
                note=body.note,
                sale_id=body.sale_id,
                user_id=principal.user_id,
            )
    except LeadError as exc:
        raise domain_error(exc) from None
    return json_response({"ok": True, "changed": changed, "conversation": result})


@router.post(
    "/api/sales",
    response_class=JSONResponse,
    status_code=201,
    summary="Create a DRAFT sale, or update the DRAFT with the same external_ref",
)
async def create_sale(request: Request, principal: CurrentPrincipal) -> JSONResponse:
    body = decode_json(await request.body(), SaleBody)
    try:
        occurred_at = sales_core.parse_occurred_at(body.occurred_at)
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            site_id = await site_uuid(conn, principal, body.site, Capability.LEADS_OPERATE)
            sale, created = await sales_core.upsert_sale(
                conn,
                site_id=site_id,
                amount_minor=body.amount_minor,
                currency=body.currency,
                occurred_at=occurred_at,
                external_ref=body.external_ref,
                conversation_id=body.conversation_id,
                notes=body.notes,
                user_id=principal.user_id,
                email=body.email,
                phone=body.phone,
            )
    except LeadError as exc:
        raise domain_error(exc) from None
    return json_response({"ok": True, "created": created, "sale": sale}, 201 if created else 200)


@router.get("/api/sales", response_class=JSONResponse, summary="Sales of a site, newest first")
async def list_sales(
    request: Request,
    principal: CurrentPrincipal,
    site: str,
    status: str | None = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
    conversation_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> JSONResponse:
    start, end = parse_time_param(from_, "from"), parse_time_param(to, "to")
    conv_id = None
    if conversation_id:
        try:
            conv_id = uuid.UUID(conversation_id)
        except ValueError:
            raise ApiError(400, "invalid_conversation_id", "conversation_id must be a uuid") from None
    try:
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            site_id = await site_uuid(conn, principal, site, Capability.SITE_READ)
            rows = await sales_core.list_sales(
                conn,
                site_id=site_id,
                status=status,
                start=start,
                end=end,
                conversation_id=conv_id,
                limit=limit,
            )
    except LeadError as exc:
        raise domain_error(exc) from None
    return json_response({"ok": True, "site": site, "sales": rows})


@router.post(
    "/api/sales/{sale_id}/confirm",
    response_class=JSONResponse,
    summary="Confirm a DRAFT sale (409 otherwise) and enqueue its offline conversion",
)
async def confirm_sale(sale_id: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    sid = parse_uuid_or_404(sale_id, "sale")
    try:
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            await require_on_row_site(conn, principal, Q.sales.sale_site, sid, "sale", Capability.LEADS_OPERATE)
            result = await sales_core.confirm_sale(conn, sale_id=sid, user_id=principal.user_id)
    except LeadError as exc:
        raise domain_error(exc) from None
    return json_response({"ok": True, **result})


class RestateBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    amount_minor: MinorUnits
    currency: CurrencyCode | None = None


@router.post(
    "/api/sales/{sale_id}/cancel",
    response_class=JSONResponse,
    summary="Cancel a sale; its conversion is voided before upload, retracted after (audited)",
)
async def cancel_sale(sale_id: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    sid = parse_uuid_or_404(sale_id, "sale")
    try:
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            await require_on_row_site(conn, principal, Q.sales.sale_site, sid, "sale", Capability.LEADS_OPERATE)
            result = await sales_core.cancel_sale(
                conn, sale_id=sid, actor_type=ActorType.USER, user_id=principal.user_id
            )
    except LeadError as exc:
        raise domain_error(exc) from None
    return json_response({"ok": True, **result})


@router.post(
    "/api/sales/{sale_id}/restate",
    response_class=JSONResponse,
    summary="Change a confirmed sale's value; its conversion is restated (audited)",
)
async def restate_sale(sale_id: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    sid = parse_uuid_or_404(sale_id, "sale")
    body = decode_json(await request.body(), RestateBody)
    try:
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            await require_on_row_site(conn, principal, Q.sales.sale_site, sid, "sale", Capability.LEADS_OPERATE)
            result = await sales_core.restate_sale(
                conn,
                sale_id=sid,
                amount_minor=body.amount_minor,
                currency=body.currency,
                actor_type=ActorType.USER,
                user_id=principal.user_id,
            )
    except LeadError as exc:
        raise domain_error(exc) from None
    return json_response({"ok": True, **result})
