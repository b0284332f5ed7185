"""Routes: signed call events and the operator's intent/call API (SPEC §4, §5, §10).

``POST /api/call-event`` authenticates in the gateway (size, HMAC with the site's current
or next secret, time window, strict body, same site in header and body), answers replays
from PostgreSQL, rate limits, and hands the call to the site's partition. Operator routes
run under ``api_transaction`` so row-level security applies to every query.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import asyncpg
import msgspec
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.auth import CurrentPrincipal, require_capability
from gateway.errors import ApiError, JSONResponse, json_response
from gateway.partitions import PartitionUnavailable
from opsmantik_stream import tenancy
from opsmantik_stream.db import api_transaction
from opsmantik_stream.enums import ActorType, CallSource, CallStatus
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
from opsmantik_stream.leads.ratelimit import KeyedTokenBucket
from opsmantik_stream.queries import Q
from opsmantik_stream.rbac import Capability
from opsmantik_stream.tenancy import Principal

__all__ = [
    "decode_body",
    "lead_error",
    "parse_time_param",
    "parse_uuid_or_404",
    "require_on_row_site",
    "router",
    "site_uuid",
]

router = APIRouter(tags=["leads"])

T = TypeVar("T")

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
# One body for every authentication failure: nothing tells a prober which check failed.
_UNAUTHORIZED_BODY = {"ok": False, "error": "unauthorized", "message": "unauthorized"}


# ---------------------------------------------------------------- helpers (also used by sales)


def lead_error(exc: LeadError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message)


def decode_body(raw: bytes, typ: type[T]) -> T:
    """Strict JSON decode into a msgspec Struct: 400 with the field path on failure."""
    try:
        return msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_body", str(exc)) from None
    except msgspec.DecodeError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None


def parse_uuid_or_404(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, f"{what}_not_found", f"no such {what}") from None


def parse_time_param(value: str | None, name: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"invalid_{name}", f"{name} must be an ISO 8601 date or date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


async def site_uuid(conn: asyncpg.Connection, principal: Principal, public_id: str, cap: Capability) -> uuid.UUID:
    """403 without ``cap`` on the site; else its uuid (looked up for platform admins)."""
    known = require_capability(principal, public_id, cap)
    if known:
        return uuid.UUID(known)
    try:
        return uuid.UUID((await tenancy.get_site(conn, public_id))["site_id"])
    except tenancy.TenancyError:
        raise ApiError(404, "site_not_found", "no such site") from None


async def require_on_row_site(
    conn: asyncpg.Connection, principal: Principal, query: str, row_id: uuid.UUID, what: str, cap: Capability
) -> asyncpg.Record:
    """The (id, site_id, public_id) of a row visible to the caller under RLS; 404 when it
    is not visible (another tenant's row looks missing), 403 without ``cap`` on its site."""
    row = await conn.fetchrow(query, row_id)
    if row is None:
        raise ApiError(404, f"{what}_not_found", f"no such {what}")
    if not principal.can(row["public_id"], cap):
        raise ApiError(403, "forbidden", f"missing capability {cap.value} on this site")
    return row


# ---------------------------------------------------------------- POST /api/call-event


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"the body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _unauthorized() -> JSONResponse:
    return json_response(_UNAUTHORIZED_BODY, 401, {"X-OpsMantik-Error-Code": "unauthorized"})


def _limiters(ctx: Any) -> tuple[KeyedTokenBucket, KeyedTokenBucket]:
    pair = ctx.extras.get("call_event_limiters")
    if pair is None:
        pair = ctx.extras["call_event_limiters"] = (
            KeyedTokenBucket(ctx.settings.call_event_rate_limit_per_min),
            KeyedTokenBucket(ctx.settings.call_event_fingerprint_rate_limit_per_min),
        )
    return pair  # type: ignore[no-any-return]


def _site_key(header: str) -> tuple[str, uuid.UUID | None] | None:
    if _HEX32.match(header):
        return header.lower(), None
    try:
        return "", uuid.UUID(header)
    except ValueError:
        return None


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
    clock: Callable[[], float] = ctx.extras.get("clock") or time.time
    raw = await _read_limited(request, MAX_BODY_BYTES)
    header_site = request.headers.get("x-ops-site-id", "")
    ts_header = request.headers.get("x-ops-ts")
    signature = request.headers.get("x-ops-signature")
    key = _site_key(header_site)
    if key is None or signature is None:
        return _unauthorized()
    site = await ctx.pool.fetchrow(Q.leads.site_for_call_event, key[0], key[1])
    secrets = (site["current_secret"], site["next_secret"]) if site is not None else ()
    if not signing.verify_signature(secrets, ts_header, signature, raw, clock()):
        return _unauthorized()
    body = decode_body(raw, CallEventBody)
    body_site = body.site_id.strip().lower()
    if body_site not in {site["public_id"], str(site["id"])}:
        # a signature is bound to the site that signed it; reuse across sites fails auth
        return _unauthorized()
    sig_hash = signing.signature_sha256(signature)
    replay = await ctx.pool.fetchrow(Q.leads.call_by_idempotency, site["id"], body.event_id, sig_hash)
    if replay is not None:
        return json_response(
            _answer("noop", replay["id"], replay["matched_session_id"], replay["lead_score"], replay["status"])
        )
    by_client, by_fp = _limiters(ctx)
    client = f"{request.client.host if request.client else 'unknown'}|{request.headers.get('user-agent', '')[:64]}"
    now = time.monotonic()
    wait = max(by_client.take(f"{site['id']}|{client}", now), by_fp.take(f"{site['id']}|{body.fingerprint}", now))
    if wait > 0:
        raise ApiError(429, "rate_limited", "too many call events", {"Retry-After": str(max(1, round(wait + 0.5)))})
    job = CallEventJob(
        site_id=str(site["id"]),
        call_at=float(int(ts_header or 0)),
        signature_sha256=sig_hash,
        body=body,
        referer=request.headers.get("referer"),
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
    action: str
    value_minor: Annotated[int, msgspec.Meta(ge=0, le=10**15)] | None = None
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] | None = None
    score: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    note: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


@router.post(
    "/api/calls/{call_id}/actions",
    response_class=JSONResponse,
    summary="seal (value_minor, currency, score), junk, cancel, restore or undo a call",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["action"],
                        "properties": {
                            "action": {"enum": ["seal", "junk", "cancel", "restore", "undo"]},
                            "value_minor": {"type": "integer", "minimum": 0},
                            "currency": {"type": "string"},
                            "score": {"type": "integer", "minimum": 0, "maximum": 100},
                            "note": {"type": "string"},
                        },
                    }
                }
            }
        }
    },
)
async def call_action(call_id: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    cid = parse_uuid_or_404(call_id, "call")
    body = decode_body(await request.body(), CallActionBody)
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
        raise lead_error(exc) from None
    return json_response({"ok": True, **result})


@router.get("/api/calls/{call_id}/actions", response_class=JSONResponse, summary="The action log of a call")
async def call_actions(call_id: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    cid = parse_uuid_or_404(call_id, "call")
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        await require_on_row_site(conn, principal, Q.leads.call_site, cid, "call", Capability.SITE_READ)
        rows = await conn.fetch(Q.leads.list_call_actions, cid)
    return json_response({"ok": True, "actions": [dict(r) for r in rows]})
