"""Bearer-token authentication and per-site capability checks for operator routes."""

from __future__ import annotations

import uuid
from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from gateway.errors import ApiError
from opsmantik_stream.fields import is_site_public_id
from opsmantik_stream.rbac import Capability
from opsmantik_stream.tenancy import Principal, TenancyError, get_site, resolve_token

__all__ = ["CurrentPrincipal", "require_capability", "require_principal", "site_uuid", "site_with_capability"]

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


async def require_principal(request: Request) -> Principal:
    """401 without a valid bearer token; otherwise the caller with roles per site."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "a bearer token is required", headers=_UNAUTHORIZED)
    ctx = request.app.state.ctx
    async with ctx.pool.acquire() as conn:
        principal = await resolve_token(conn, token.strip())
    if principal is None:
        raise ApiError(401, "unauthorized", "the bearer token is not valid", headers=_UNAUTHORIZED)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(require_principal)]


def require_capability(principal: Principal, public_id: str, capability: Capability) -> str:
    """The site's uuid when the caller holds ``capability`` on it; 403 otherwise.

    A site the caller cannot see at all also answers 403 (not 404), so site ids cannot be
    probed by strangers. A malformed id names no site: the same answers, without a query.
    """
    if not is_site_public_id(public_id) and principal.is_platform_admin:
        raise ApiError(404, "site_not_found", "no such site")
    if not principal.can(public_id, capability):
        raise ApiError(403, "forbidden", f"missing capability {capability.value} on this site")
    access = principal.sites.get(public_id)
    if access is None:
        # platform admins reach sites they are not members of; callers resolve the id
        return ""
    return access.site_id


async def site_uuid(conn: asyncpg.Connection, principal: Principal, public_id: str, cap: Capability) -> uuid.UUID:
    """403 without ``cap`` on the site; else its uuid (looked up for platform admins: 404
    when there is no such site)."""
    known = require_capability(principal, public_id, cap)
    if known:
        return uuid.UUID(known)
    try:
        return uuid.UUID((await get_site(conn, public_id))["site_id"])
    except TenancyError:
        raise ApiError(404, "site_not_found", "no such site") from None


async def site_with_capability(request: Request, principal: Principal, public_id: str, capability: Capability) -> str:
    """The uuid of site ``public_id`` when the caller holds ``capability`` on it (as
    ``site_uuid``); members resolve from their token's memberships without a query."""
    site_id = require_capability(principal, public_id, capability)
    if site_id:
        return site_id
    async with request.app.state.ctx.pool.acquire() as conn:
        return str(await site_uuid(conn, principal, public_id, capability))
