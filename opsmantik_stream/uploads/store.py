"""Queue, lease and ledger operations as plain functions over an asyncpg connection.

Every write is guarded by the state it expects (SPEC §6 "Transitions are guarded"): a claim
takes only due QUEUED/RETRY rows with ``SKIP LOCKED``; a finish changes only rows still
``PROCESSING`` under the same uploader, claim (batch id) and attempt number.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from opsmantik_stream.queries import Q

__all__ = [
    "FinishCounts",
    "RowUpdate",
    "acquire_lease",
    "claim_rows",
    "finish_rows",
    "insert_finished",
    "insert_started",
    "list_groups",
    "release_lease",
]


async def list_groups(conn: asyncpg.Connection, limit: int = 100) -> list[asyncpg.Record]:
    """Due (site, destination) groups with backlog and breaker state, oldest due first."""
    return list(await conn.fetch(Q.uploads.list_groups, limit))


async def claim_rows(
    conn: asyncpg.Connection,
    site_id: Any,
    destination: str,
    uploader_id: str,
    batch_id: uuid.UUID,
    limit: int,
) -> list[asyncpg.Record]:
    """Claim up to ``limit`` due rows of one group in one statement (bumps ``attempt``)."""
    return list(await conn.fetch(Q.uploads.claim_rows, site_id, destination, uploader_id, batch_id, limit))


async def acquire_lease(
    conn: asyncpg.Connection,
    site_id: Any,
    destination: str,
    account_id: str,
    holder: str,
    *,
    ttl_s: float,
    site_limit: int,
    account_limit: int,
) -> uuid.UUID | None:
    """A lease id, or ``None`` when the site or the account already has its limit of uploads."""
    lease = await conn.fetchval(
        Q.uploads.acquire_lease, site_id, destination, account_id, holder, ttl_s, site_limit, account_limit
    )
    return lease if lease is None else uuid.UUID(str(lease))


async def release_lease(conn: asyncpg.Connection, lease_id: uuid.UUID) -> None:
    await conn.execute(Q.uploads.release_lease, lease_id)


async def insert_started(
    conn: asyncpg.Connection,
    batch_id: uuid.UUID,
    site_id: Any,
    destination: str,
    uploader_id: str,
    attempt: int,
    row_count: int,
) -> None:
    await conn.execute(Q.uploads.insert_started, batch_id, site_id, destination, uploader_id, attempt, row_count)


@dataclass(frozen=True, slots=True)
class RowUpdate:
    """The next state of one claimed row."""

    id: Any
    attempt: int
    status: str
    next_retry_at: datetime | None = None
    error_code: str | None = None
    error_category: str | None = None
    last_error: str | None = None
    request_id: str | None = None


@dataclass(slots=True)
class FinishCounts:
    completed: int = 0
    failed: int = 0
    retry: int = 0
    blocked: int = 0

    @classmethod
    def of(cls, statuses: Sequence[str]) -> FinishCounts:
        c = cls()
        for s in statuses:
            if s == "COMPLETED":
                c.completed += 1
            elif s == "FAILED":
                c.failed += 1
            elif s == "BLOCKED":
                c.blocked += 1
            else:  # RETRY, QUEUED (split batch / collateral)
                c.retry += 1
        return c


async def finish_rows(
    conn: asyncpg.Connection, uploader_id: str, batch_id: uuid.UUID, updates: Sequence[RowUpdate]
) -> list[asyncpg.Record]:
    """Guarded transitions; returns the rows that really changed (empty for a late finish)."""
    if not updates:
        return []
    return list(
        await conn.fetch(
            Q.uploads.finish_rows,
            [u.id for u in updates],
            [u.attempt for u in updates],
            [u.status for u in updates],
            [u.next_retry_at for u in updates],
            [u.error_code for u in updates],
            [u.error_category for u in updates],
            [(u.last_error or None) and u.last_error[:1000] for u in updates],
            [u.request_id for u in updates],
            uploader_id,
            batch_id,
        )
    )


async def insert_finished(
    conn: asyncpg.Connection,
    *,
    batch_id: uuid.UUID,
    site_id: Any,
    destination: str,
    uploader_id: str,
    attempt: int,
    row_count: int,
    counts: FinishCounts,
    http_status: int | None,
    request_id: str | None,
    error_code: str | None,
    error_category: str | None,
    duration_ms: int | None,
    breaker_state: str | None,
) -> bool:
    """The FINISHED ledger row; ``False`` when the attempt was already closed (by the rescue)."""
    inserted = await conn.fetchval(
        Q.uploads.insert_finished,
        batch_id,
        site_id,
        destination,
        uploader_id,
        attempt,
        row_count,
        counts.completed,
        counts.failed,
        counts.retry,
        counts.blocked,
        http_status,
        request_id,
        error_code,
        error_category,
        duration_ms,
        breaker_state,
    )
    return inserted is not None


async def add_metrics(
    conn: asyncpg.Connection, site_id: Any, destination: str, attempts: int, counts: FinishCounts
) -> None:
    await conn.execute(
        Q.uploads.add_metrics,
        site_id,
        destination,
        attempts,
        counts.completed,
        counts.failed,
        counts.retry,
        counts.blocked,
    )
