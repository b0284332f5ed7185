"""Operator surface shared by the API and the CLI: queue stats, rows, ledger, requeue and
breaker reset. Functions take a connection; the API passes one under RLS
(``db.api_transaction``), the CLI the service connection. Actions write an audit entry in the
same transaction, with ids and counts only.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from opsmantik_stream.destinations import registry
from opsmantik_stream.enums import ActorType, QueueStatus
from opsmantik_stream.queries import Q
from opsmantik_stream.tenancy import write_audit

__all__ = ["OperatorError", "ledger", "list_rows", "queue_stats", "requeue", "reset_breaker"]

REQUEUEABLE = (QueueStatus.FAILED.value, QueueStatus.BLOCKED.value)


class OperatorError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _iso(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else v


def _record(r: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, uuid.UUID) else _iso(v)) for k, v in dict(r).items()}


async def queue_stats(conn: asyncpg.Connection, site_id: Any) -> dict[str, Any]:
    """Counts by state (and destination), and the site's breakers."""
    by_state = {s.value: 0 for s in QueueStatus}
    by_destination: dict[str, dict[str, int]] = {}
    for r in await conn.fetch(Q.uploads.queue_stats, site_id):
        by_state[r["status"]] = by_state.get(r["status"], 0) + int(r["n"])
        by_destination.setdefault(r["destination"], {})[r["status"]] = int(r["n"])
    breakers = [_record(r) for r in await conn.fetch(Q.uploads.breakers_for_site, site_id)]
    return {"counts": by_state, "by_destination": by_destination, "breakers": breakers}


async def list_rows(
    conn: asyncpg.Connection, site_id: Any, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    if status is not None and status not in {s.value for s in QueueStatus}:
        raise OperatorError("invalid_status", f"status must be one of {', '.join(s.value for s in QueueStatus)}")
    return [_record(r) for r in await conn.fetch(Q.uploads.list_rows, site_id, status, max(1, min(limit, 1000)))]


async def ledger(conn: asyncpg.Connection, site_id: Any, limit: int = 100) -> dict[str, Any]:
    """Newest ledger rows; ``unfinished`` marks a STARTED row that has no FINISHED twin."""
    rows = [_record(r) for r in await conn.fetch(Q.uploads.list_ledger, site_id, max(1, min(limit, 1000)))]
    return {"attempts": rows, "unfinished": sum(1 for r in rows if r["unfinished"])}


async def requeue(
    conn: asyncpg.Connection,
    site_id: Any,
    *,
    ids: list[str] | None,
    status: str | None,
    actor_type: ActorType,
    actor_id: str | None,
) -> dict[str, Any]:
    """FAILED/BLOCKED -> QUEUED with a fresh attempt budget, moved to the site's current
    destination (the fix may have been choosing another one); audited. Call in a transaction."""
    if status is not None and status not in REQUEUEABLE:
        raise OperatorError("invalid_status", "only FAILED or BLOCKED rows can be requeued")
    if ids is None and status is None:
        raise OperatorError("missing_selection", "give row ids, a status, or both")
    parsed: list[uuid.UUID] | None = None
    if ids is not None:
        try:
            parsed = [uuid.UUID(str(i)) for i in ids]
        except ValueError:
            raise OperatorError("invalid_id", "row ids must be UUIDs") from None
        if not parsed or len(parsed) > 10000:
            raise OperatorError("invalid_id", "give between 1 and 10000 row ids")
    done = await conn.fetch(Q.uploads.requeue_rows, site_id, parsed, status)
    requeued = [str(r["id"]) for r in done]
    destinations: dict[str, int] = {}
    for r in done:
        destinations[r["destination"]] = destinations.get(r["destination"], 0) + 1
    await write_audit(
        conn,
        actor_type,
        actor_id,
        "oci.requeue",
        "offline_conversion_queue",
        None,
        site_id,
        {
            "requested": len(parsed) if parsed is not None else None,
            "status": status,
            "requeued": len(requeued),
            "destinations": destinations,
            "ids": requeued[:1000],
        },
    )
    return {"requeued": len(requeued), "ids": requeued, "destinations": destinations}


async def reset_breaker(
    conn: asyncpg.Connection,
    site_id: Any,
    destination: str | None,
    *,
    actor_type: ActorType,
    actor_id: str | None,
) -> dict[str, Any]:
    """Close the site's breaker(s) now; audited. Call in a transaction."""
    names = registry.names()
    if destination is not None and destination not in names:
        raise OperatorError("invalid_destination", f"destination must be one of {', '.join(names)}")
    targets = [destination] if destination else names
    for d in targets:
        await conn.fetchval(Q.uploads.reset_breaker, site_id, d)
    await write_audit(
        conn,
        actor_type,
        actor_id,
        "oci.breaker_reset",
        "provider_health_state",
        None,
        site_id,
        {"destinations": targets},
    )
    return {"reset": targets, "state": "CLOSED"}
