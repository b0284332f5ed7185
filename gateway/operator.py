"""Helpers of the operator routes (calls, sales, conversations): parameters, rows under
row-level security, and lead errors as answers (the caller's site: ``gateway.auth``)."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

from gateway.errors import ApiError
from opsmantik_stream.fields import to_utc
from opsmantik_stream.rbac import Capability
from opsmantik_stream.tenancy import Principal

__all__ = ["parse_time_param", "parse_uuid_or_404", "require_on_row_site"]


def parse_uuid_or_404(value: str, what: str) -> uuid.UUID:
    """A path id as a uuid; a malformed one names no ``what``: 404 ``<what>_not_found``."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, f"{what}_not_found", f"no such {what}") from None


def parse_time_param(value: str | None, name: str) -> dt.datetime | None:
    """An ISO 8601 date or date-time query parameter in UTC; 400 ``invalid_<name>``."""
    if value is None or value == "":
        return None
    try:
        parsed = to_utc(dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
    except ValueError:
        parsed = None
    if parsed is None:
        raise ApiError(400, f"invalid_{name}", f"{name} must be an ISO 8601 date or date-time") from None
    return parsed


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
