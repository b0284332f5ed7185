"""Routes: signed call events and the operator's intent/call API (SPEC §4, §5, §10).

``POST /api/call-event`` authenticates in the gateway (``gateway.signed``: size, HMAC with
the site's current or next secret, time window, strict body, same site in header and body),
answers replays from PostgreSQL, rate limits, and hands the call to the site's partition. Operator routes
run under ``api_transaction`` so row-level security applies to every query.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.auth import CurrentPrincipal, site_uuid
from gateway.errors import ApiError, JSONResponse, decode_json, domain_error, json_response
from gateway.limits import rate_limited, route_limit
from gateway.operator import parse_time_param, parse_uuid_or_404, require_on_row_site
from gateway.partitions import PartitionUnavailable
from gateway.signed import authenticate, unauthorized
from opsmantik_stream.db import api_transaction
from opsmantik_stream.enums import ActorType, CallSource, CallStatus
from opsmantik_stream.fields import CurrencyCode, MinorUnits, Note, Text32
from opsmantik_stream.leads import signing
from opsmantik_stream.leads.actions import apply_call_action, call_dict
from opsmantik_stream.leads.call_events import (
    MAX_BODY_BYTES,
    CallEventBody,
    CallEventJob,
    decode_result,
    encode_job,
)
from opsmantik_stream.leads.errors import LeadError
from opsmantik_stream.queries import Q
from opsmantik_stream.rbac import Capability

__all__ = ["router"]

router = APIRouter(tags=["leads"])


# ---------------------------------------------------------------- POST /api/call-event


@router.post(
    "/api/call-event",
    summary="A signed call event (HMAC-SHA256 over '<ts>.<raw body>')",
    responses={
        200: {"description": "matched, or noop for a replay"},
        204: {"description": "no consented session"},
        401: {"description": "any authentication failure"},
        413: {},
        429: {},
        503: {},
    },
)
async def call_event(request: Request) -> Response:
    ctx = request.app.state.ctx
    signed = await authenticate(request, CallEventBody, MAX_BODY_BYTES)
    if signed is None:
        return unauthorized()
    site, body = signed.site, signed.body
    sig_hash = signing.signature_sha256(signed.signature)
    replay = await ctx.pool.fetchrow(Q.leads.call_by_idempotency, site["id"], body.event_id, sig_hash)
    if replay is not None:
        return json_response(
            _answer("noop", replay["id"], replay["matched_session_id"], replay["lead_score"], replay["status"])
        )
    by_client = route_limit(ctx, "call_event_client_limit", ctx.settings.call_event_rate_limit_per_min)
    by_fp = route_limit(ctx, "call_event_fingerprint_limit", ctx.settings.call_event_fingerprint_rate_limit_per_min)
    wait = max(by_client.take((site["id"], signed.client)), by_fp.take((site["id"], body.fingerprint)))
    if wait > 0:
        raise rate_limited(wait, "too many call events")
    job = CallEventJob(
        site_id=str(site["id"]),
        call_at=float(signed.ts),
        signature_sha256=sig_hash,
        body=body,
        # a header is not schema-checked: keep what a text column can hold
        referer=(request.headers.get("referer") or "")[:2048].replace("\x00", "") or None,
    )
    try:
        reply = await ctx.partitions.call(str(site["id"]), "call_event", encode_job(job))
    except PartitionUnavailable:
        # actor dead, restarting or slow: never a silent drop; the client retries (idempotent)
        raise ApiError(
            503, "partition_unavailable", "the site's partition did not answer", {"Retry-After": "1"}
        ) from None
    result = decode_result(reply)
    if result.status == "no_consent":
        return Response(status_code=204)
    return json_response(
        _answer(result.status, result.call_id, result.session_id, result.lead_score, result.call_status)
    )


def _answer(status: str, call_id: Any, session_id: Any, lead_score: Any, call_status: Any) -> dict[str, Any]:
    return {
        "ok": True,
        "status": status,
        "call_id": str(call_id) if call_id else None,
        "session_id": str(session_id) if session_id else None,
        "lead_score": lead_score,
        "call_status": call_status,
    }


# ---------------------------------------------------------------- operator routes


@router.get("/api/sites/{site}/intents", response_class=JSONResponse, summary="Intents and calls of a site")
async def list_intents(
    site: str,
    request: Request,
    principal: CurrentPrincipal,
    status: str | None = None,
    source: str | None = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> JSONResponse:
    if status is not None and status not in set(CallStatus):
        raise ApiError(400, "invalid_status", f"status must be one of {', '.join(CallStatus)}")
    if source is not None and source not in set(CallSource):
        raise ApiError(400, "invalid_source", f"source must be one of {', '.join(CallSource)}")
    start, end = parse_time_param(from_, "from"), parse_time_param(to, "to")
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        site_id = await site_uuid(conn, principal, site, Capability.SITE_READ)
        rows = await conn.fetch(Q.leads.list_intents, site_id, status, start, end, source, limit)
    return json_response({"ok": True, "site": site, "intents": [call_dict(r) for r in rows]})


class CallActionBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    action: Text32
    value_minor: MinorUnits | None = None
    currency: CurrencyCode | None = None
    score: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    note: Note | None = None


@router.post(
    "/api/calls/{call_id}/actions",
    response_class=JSONResponse,
    summary="seal (value_minor, currency, score), junk, cancel, restore or undo a call",
)
async def call_action(call_id: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    cid = parse_uuid_or_404(call_id, "call")
    body = decode_json(await request.body(), CallActionBody)
    try:
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            await require_on_row_site(conn, principal, Q.leads.call_site, cid, "call", Capability.LEADS_OPERATE)
            result = await apply_call_action(
                conn,
                call_id=cid,
                action=body.action,
                actor_type=ActorType.USER,
                actor_id=principal.user_id,
                value_minor=body.value_minor,
                currency=body.currency,
                score=body.score,
                note=body.note,
            )
    except LeadError as exc:
        raise domain_error(exc) from None
    return json_response({"ok": True, **result})


@router.get("/api/calls/{call_id}/actions", response_class=JSONResponse, summary="The action log of a call")
async def call_actions(call_id: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    cid = parse_uuid_or_404(call_id, "call")
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        await require_on_row_site(conn, principal, Q.leads.call_site, cid, "call", Capability.SITE_READ)
        rows = await conn.fetch(Q.leads.list_call_actions, cid)
    return json_response({"ok": True, "actions": [dict(r) for r in rows]})
