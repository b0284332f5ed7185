"""Routes: destination credentials and the offline conversion upload queue (SPEC §6, §10).

- ``PUT /api/sites/{site}/credentials`` (``site:write``): write-only; sealed in the vault,
  never returned; closes the site's breaker for that destination (the cause was fixed); the
  only destination with credentials becomes the site's destination (the answer says so).
  Endpoint URLs (``api_base_url``, ``token_url``) are refused: they are deployment settings.
- ``PUT /api/sites/{site}/destination`` (``site:write``): the site's destination, audited.
- ``GET /api/oci/queue|rows|ledger?site=`` (``site:read``): counts by state and breakers, rows
  with their last error, the attempt ledger (unfinished STARTED rows flagged).
- ``POST /api/oci/requeue`` and ``POST /api/oci/breaker/reset`` (``queue:operate``): audited.

Reads and operator actions run under row-level security (``api_transaction``); credentials
and the destination are written on the service connection after the capability check because
the API role has no access to the credentials table at all (``uploads/delivery.py`` is the one
implementation, shared with the CLI).
"""

from __future__ import annotations

import asyncio
import random
from typing import Annotated, Any

import asyncpg
import msgspec
from fastapi import APIRouter, Query, Request

from gateway.auth import CurrentPrincipal, site_with_capability
from gateway.errors import ApiError, JSONResponse, json_response
from opsmantik_stream.db import api_transaction
from opsmantik_stream.enums import ActorType
from opsmantik_stream.fields import Text64
from opsmantik_stream.rbac import Capability
from opsmantik_stream.uploads import delivery, operator
from opsmantik_stream.uploads.credentials import CredentialsError, credentials_from_mapping, vault_from_settings

router = APIRouter(tags=["uploads"])

_MAX_BODY = 64 * 1024


class RequeueBody(msgspec.Struct, forbid_unknown_fields=True):
    site: str
    ids: list[str] | None = None
    status: str | None = None


class BreakerResetBody(msgspec.Struct, forbid_unknown_fields=True):
    site: str
    destination: str | None = None


class DestinationBody(msgspec.Struct, forbid_unknown_fields=True):
    destination: str


async def _decode(request: Request, typ: type[Any]) -> Any:
    body = await request.body()
    if len(body) > _MAX_BODY:
        raise ApiError(413, "payload_too_large", "request body too large")
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "invalid_body", str(exc)) from None
    except msgspec.DecodeError:
        raise ApiError(400, "invalid_json", "body is not valid JSON") from None


def _delivery_error(exc: CredentialsError) -> ApiError:
    status = 503 if exc.code.startswith("VAULT") else 404 if exc.code == "site_not_found" else 422
    return ApiError(status, exc.code.lower(), exc.message)


@router.put(
    "/api/sites/{site}/credentials",
    response_class=JSONResponse,
    summary="Set a destination's credentials (write-only, sealed; needs site:write)",
)
async def put_credentials(site: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    site_id = await site_with_capability(request, principal, site, Capability.SITE_WRITE)
    raw = await _decode(request, dict)
    ctx = request.app.state.ctx
    try:
        creds = credentials_from_mapping(raw)
        vault = vault_from_settings(ctx.settings)
        async with ctx.pool.acquire() as conn:
            result = await delivery.set_credentials(
                conn, vault, site_id, site, creds, actor_type=ActorType.USER, actor_id=principal.user_id
            )
    except CredentialsError as exc:
        raise _delivery_error(exc) from None
    return json_response({"ok": True, "site": site, **result})


class EnhancedConversionsBody(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool


@router.put(
    "/api/sites/{site}/enhanced-conversions",
    response_class=JSONResponse,
    summary="Upload conversions with a hashed email/phone but no click id (needs site:write)",
)
async def put_enhanced_conversions(site: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    site_id = await site_with_capability(request, principal, site, Capability.SITE_WRITE)
    body: EnhancedConversionsBody = await _decode(request, EnhancedConversionsBody)
    ctx = request.app.state.ctx
    try:
        async with ctx.pool.acquire() as conn:
            result = await delivery.set_enhanced_conversions(
                conn, site_id, body.enabled, actor_type=ActorType.USER, actor_id=principal.user_id
            )
    except CredentialsError as exc:
        raise _delivery_error(exc) from None
    return json_response({"ok": True, "site": site, **result})


class CredentialsTestBody(msgspec.Struct, forbid_unknown_fields=True):
    destination: Text64 | None = None


@router.post(
    "/api/sites/{site}/credentials/test",
    response_class=JSONResponse,
    summary="Test the stored credentials without storing anything at the destination (needs site:write)",
)
async def test_credentials(site: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    site_id = await site_with_capability(request, principal, site, Capability.SITE_WRITE)
    body: CredentialsTestBody = (
        await _decode(request, CredentialsTestBody) if await request.body() else CredentialsTestBody()
    )
    ctx = request.app.state.ctx
    try:
        if ctx.ray_enabled:
            result = await _test_on_an_uploader(ctx, site_id, site, body.destination, principal.user_id)
        else:
            # a gateway without actors (tests): the test runs here, with this process's vault
            async with ctx.pool.acquire() as conn:
                result = await delivery.test_credentials(
                    conn,
                    ctx.settings,
                    site_id,
                    site,
                    body.destination,
                    actor_type=ActorType.USER,
                    actor_id=principal.user_id,
                )
    except CredentialsError as exc:
        raise _delivery_error(exc) from None
    return json_response({"site": site, **result})


async def _test_on_an_uploader(
    ctx: Any, site_id: str, public_id: str, destination: str | None, user_id: str
) -> dict[str, Any]:
    """Run the connection test in an uploader: the gateway seals credentials but cannot open
    them (only uploaders hold the vault key). 503 when no uploader answers."""
    table = await ctx.routing.table()
    if not table.uploaders:
        raise ApiError(503, "no_uploader", "no uploader is running to open the credentials; start the stack")
    name = random.choice(table.uploaders)
    # a token refresh and one request, each bounded by the request timeout, plus Ray's hop
    timeout = 2 * ctx.settings.upload_request_timeout_s + 10.0
    try:
        got = await asyncio.wait_for(
            ctx.routing.handle(name).test_credentials.remote(
                str(site_id), public_id, destination, ActorType.USER.value, user_id
            ),
            timeout,
        )
    except Exception:
        ctx.routing.forget(name)  # a dead actor's handle is looked up again next time
        raise ApiError(503, "uploader_unavailable", "the uploader did not answer; try again") from None
    if "error" in got:
        raise CredentialsError(got["error"]["code"], got["error"]["message"])
    return dict(got)


@router.put(
    "/api/sites/{site}/destination",
    response_class=JSONResponse,
    summary="Choose where the site's conversions are sent (a destination's name; needs site:write)",
)
async def put_destination(site: str, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    site_id = await site_with_capability(request, principal, site, Capability.SITE_WRITE)
    body: DestinationBody = await _decode(request, DestinationBody)
    ctx = request.app.state.ctx
    try:
        async with ctx.pool.acquire() as conn:
            result = await delivery.set_destination(
                conn, site_id, site, body.destination, actor_type=ActorType.USER, actor_id=principal.user_id
            )
    except CredentialsError as exc:
        raise _delivery_error(exc) from None
    return json_response({"ok": True, "site": site, **result})


@router.get("/api/oci/queue", response_class=JSONResponse, summary="Queue counts by state, and breakers")
async def get_queue(
    request: Request, principal: CurrentPrincipal, site: Annotated[str, Query(max_length=64)]
) -> JSONResponse:
    site_id = await site_with_capability(request, principal, site, Capability.SITE_READ)
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        stats = await operator.queue_stats(conn, site_id)
    return json_response({"ok": True, "site": site, **stats})


@router.get("/api/oci/rows", response_class=JSONResponse, summary="Queue rows with their last error")
async def get_rows(
    request: Request,
    principal: CurrentPrincipal,
    site: Annotated[str, Query(max_length=64)],
    status: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    site_id = await site_with_capability(request, principal, site, Capability.SITE_READ)
    try:
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            rows = await operator.list_rows(conn, site_id, status.upper() if status else None, limit)
    except operator.OperatorError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    return json_response({"ok": True, "site": site, "rows": rows})


@router.get("/api/oci/ledger", response_class=JSONResponse, summary="Upload attempts (STARTED/FINISHED)")
async def get_ledger(
    request: Request,
    principal: CurrentPrincipal,
    site: Annotated[str, Query(max_length=64)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    site_id = await site_with_capability(request, principal, site, Capability.SITE_READ)
    async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
        data = await operator.ledger(conn, site_id, limit)
    return json_response({"ok": True, "site": site, **data})


@router.post("/api/oci/requeue", response_class=JSONResponse, summary="FAILED/BLOCKED rows back to QUEUED (audited)")
async def post_requeue(request: Request, principal: CurrentPrincipal) -> JSONResponse:
    body: RequeueBody = await _decode(request, RequeueBody)
    site_id = await site_with_capability(request, principal, body.site, Capability.QUEUE_OPERATE)
    try:
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            result = await operator.requeue(
                conn,
                site_id,
                ids=body.ids,
                status=body.status.upper() if body.status else None,
                actor_type=ActorType.USER,
                actor_id=principal.user_id,
            )
    except operator.OperatorError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    except asyncpg.UniqueViolationError:
        raise ApiError(409, "pending_conflict", "another conversion of the same session is pending") from None
    return json_response({"ok": True, "site": body.site, **result})


@router.post("/api/oci/breaker/reset", response_class=JSONResponse, summary="Close a site's breaker (audited)")
async def post_breaker_reset(request: Request, principal: CurrentPrincipal) -> JSONResponse:
    body: BreakerResetBody = await _decode(request, BreakerResetBody)
    site_id = await site_with_capability(request, principal, body.site, Capability.QUEUE_OPERATE)
    try:
        async with api_transaction(request.app.state.ctx.pool, principal.user_id) as conn:
            result = await operator.reset_breaker(
                conn, site_id, body.destination, actor_type=ActorType.USER, actor_id=principal.user_id
            )
    except operator.OperatorError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    return json_response({"ok": True, "site": body.site, **result})
