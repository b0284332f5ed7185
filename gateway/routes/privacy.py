"""Routes: privacy (SPEC §8): signed consent updates, and erase / export of a data subject.

``POST /api/consent`` is for a site's back end or consent platform and is authenticated like
a call event (HMAC-SHA256 over ``"<ts>.<raw body>"`` with the site's current or next secret,
the same time window, one 401 body for every failure). Erase and export need
``privacy:manage`` (owner, admin) on the site. Export reads under row-level security on the
API role; erase writes on the service role after the capability check, every statement
scoped by the site, because the API role may not rewrite tracking rows.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

import asyncpg
import msgspec
from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse

from gateway.auth import CurrentPrincipal, site_with_capability
from gateway.errors import JSONResponse, decode_json, domain_error, json_response
from gateway.limits import rate_limited, route_limit
from gateway.signed import authenticate, unauthorized
from opsmantik_stream.db import api_transaction
from opsmantik_stream.enums import ActorType, PrivacyIdentifier
from opsmantik_stream.privacy import (
    ConsentBody,
    PrivacyError,
    apply_consent,
    erase_subject,
    export_document,
    normalize_identifier,
    privacy_key,
)
from opsmantik_stream.privacy.consent import MAX_BODY_BYTES
from opsmantik_stream.privacy.export import start_export
from opsmantik_stream.rbac import Capability

__all__ = ["router"]

router = APIRouter(tags=["privacy"])


# ---------------------------------------------------------------- POST /api/consent


@router.post(
    "/api/consent",
    summary="Set a visitor's consent scopes (signed like call events)",
    response_class=JSONResponse,
    responses={
        200: {"description": "the scopes now recorded, with matched/updated session counts"},
        400: {"description": "invalid_json, invalid_scope, invalid_identifier, invalid_consent_at"},
        401: {"description": "any authentication failure (one body for all)"},
        422: {"description": "validation_error: a field does not fit the schema"},
        413: {},
        429: {},
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["site_id", "identifier_type", "identifier_value", "scopes"],
                        "properties": {
                            "site_id": {"type": "string"},
                            "identifier_type": {"enum": ["session_id", "fingerprint"]},
                            "identifier_value": {"type": "string"},
                            "scopes": {"type": "array", "items": {"enum": ["analytics", "marketing"]}},
                            "consent_at": {"type": "string", "format": "date-time"},
                        },
                    }
                }
            }
        }
    },
)
async def consent(request: Request) -> Response:
    """Headers ``X-Ops-Site-Id``, ``X-Ops-Ts`` (unix seconds) and ``X-Ops-Signature`` (hex
    HMAC-SHA256 of ``"<ts>.<raw body>"``). Body ``{site_id, identifier_type: session_id |
    fingerprint, identifier_value, scopes: [analytics, marketing], consent_at}``: sets the
    scopes of the matching sessions of the site (a decision older than the recorded one
    changes nothing). Withdrawing ``marketing`` voids the sessions' pending conversions."""
    ctx = request.app.state.ctx
    clock: Callable[[], float] = ctx.clock
    signed = await authenticate(request, ConsentBody, MAX_BODY_BYTES)
    if signed is None:
        return unauthorized()
    site, body = signed.site, signed.body
    wait = route_limit(ctx, "consent_limit", ctx.settings.consent_rate_limit_per_min).take((site["id"], signed.client))
    if wait > 0:
        raise rate_limited(wait, "too many consent updates")
    now = dt.datetime.fromtimestamp(clock(), dt.UTC)
    try:
        async with ctx.pool.acquire() as conn:
            result = await apply_consent(conn, site["id"], body, now)
    except PrivacyError as exc:
        raise domain_error(exc) from None
    return json_response(result)


# ---------------------------------------------------------------- erase and export


class EraseBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    site: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    identifier_type: str
    identifier_value: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


def _subject(site_id: str, identifier_type: str, identifier_value: str) -> Any:
    try:
        return normalize_identifier(uuid.UUID(site_id), identifier_type, identifier_value)
    except PrivacyError as exc:
        raise domain_error(exc) from None


@router.post(
    "/api/privacy/erase",
    response_class=JSONResponse,
    summary="Anonymise everything of a site tied to a data subject (privacy:manage)",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["site", "identifier_type", "identifier_value"],
                        "properties": {
                            "site": {"type": "string"},
                            "identifier_type": {"enum": [k.value for k in PrivacyIdentifier]},
                            "identifier_value": {"type": "string"},
                        },
                    }
                }
            }
        }
    },
)
async def erase(request: Request, principal: CurrentPrincipal) -> JSONResponse:
    """Body ``{site, identifier_type: fingerprint | session_id | phone | email,
    identifier_value}``. Anonymises (does not delete) the subject's sessions, events, calls,
    conversations, sales notes, queue rows not yet uploaded (voided) and dead letters;
    answers per-table counts of rows changed (0 everywhere when repeated). Audited with the
    counts and a keyed hash of the identifier."""
    body = decode_json(await request.body(), EraseBody)
    site_id = await site_with_capability(request, principal, body.site, Capability.PRIVACY_MANAGE)
    subject = _subject(site_id, body.identifier_type, body.identifier_value)
    result = await erase_subject(
        request.app.state.ctx.pool, subject, actor_type=ActorType.USER, actor_id=principal.user_id
    )
    return json_response({"ok": True, "site": body.site, **result})


@router.get(
    "/api/privacy/export",
    summary="Everything held for a data subject as one JSON document, streamed (privacy:manage)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}}, "description": "the document"}},
)
async def export(
    request: Request,
    principal: CurrentPrincipal,
    site: Annotated[str, Query(min_length=1, max_length=64)],
    identifier_type: Annotated[str, Query(min_length=1, max_length=32)],
    identifier_value: Annotated[str, Query(min_length=1, max_length=1024)],
) -> Response:
    """Sessions, events, consent history, calls and their action log, conversations, sales,
    queue rows and dead letters of the subject, with ``meta.total_records`` and
    ``meta.exported_at``. Read under row-level security; audited like erase."""
    ctx = request.app.state.ctx
    site_id = await site_with_capability(request, principal, site, Capability.PRIVACY_MANAGE)
    subject = _subject(site_id, identifier_type, identifier_value)
    now = dt.datetime.now(dt.UTC)

    def tx() -> AbstractAsyncContextManager[asyncpg.Connection]:
        return api_transaction(ctx.pool, principal.user_id)

    rows, _counts, info = await start_export(
        tx,
        subject,
        key=await privacy_key(ctx.pool),
        actor_type=ActorType.USER,
        actor_id=principal.user_id,
        site_label=site,
    )

    async def stream() -> AsyncIterator[bytes]:
        async for chunk in export_document(tx, rows, info, exported_at=now):
            yield chunk

    return StreamingResponse(
        stream(),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="opsmantik-export-{info["subject_hash"][:12]}.json"',
            "Cache-Control": "no-store",
        },
    )
