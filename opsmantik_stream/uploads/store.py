"""Queue, lease and ledger operations as plain functions over an asyncpg connection.

Every write is guarded by the state it expects (SPEC §6 "Transitions are guarded"): a claim
takes only due QUEUED/RETRY rows with ``SKIP LOCKED``; a finish changes only rows still
``PROCESSING`` under the same uploader, claim (batch id) and attempt number.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from opsmantik_stream.queries import Q
from opsmantik_stream.uploads.plan import FinishCounts, RowUpdate

__all__ = [
    "FinishCounts",
    "RowUpdate",
    "acquire_lease",
    "claim_rows",
    "finish_rows",
    "insert_finished",
    "insert_started",
    "list_groups",
    "lower_max_batch",
    "mark_gate_ledgered",
    "pause_account",
    "release_lease",
    "start_request",
]


async def list_groups(
    conn: asyncpg.Connection, now: datetime | None = None, *, probe_stale_s: float, limit: int = 100
) -> list[asyncpg.Record]:
    """Due (site, destination) groups, oldest due first, with their gate (breaker), the
    account's pause and batch size. ``now`` ``None`` means the database's clock."""
    return list(await conn.fetch(Q.uploads.list_groups, now, limit, probe_stale_s))


async def claim_rows(
    conn: asyncpg.Connection,
    site_id: Any,
    destination: str,
    uploader_id: str,
    batch_id: uuid.UUID,
    limit: int,
    now: datetime | None = None,
) -> list[asyncpg.Record]:
    """Claim up to ``limit`` due rows of one group in one statement (bumps ``attempt``)."""
    return list(await conn.fetch(Q.uploads.claim_rows, site_id, destination, uploader_id, batch_id, limit, now))


async def pause_account(
    conn: asyncpg.Connection,
    destination: str,
    account_id: str,
    seconds: float,
    reason: str | None,
    now: datetime | None = None,
) -> datetime:
    """Pause the account for every uploader of the pool (never shortens a longer pause)."""
    return await conn.fetchval(Q.uploads.pause_account, destination, account_id, float(seconds), now, reason)  # type: ignore[no-any-return]


async def start_request(
    conn: asyncpg.Connection,
    batch_id: uuid.UUID,
    site_id: Any,
    destination: str,
    uploader_id: str,
    attempt: int,
    row_count: int,
    account_id: str,
    now: datetime | None = None,
) -> datetime | None:
    """Commit the attempt's STARTED row (once) and return the end of the account's pause when
    one runs (then the request must not leave), in one round trip."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        Q.uploads.start_request, batch_id, site_id, destination, uploader_id, attempt, row_count, account_id, now
    )


async def lower_max_batch(conn: asyncpg.Connection, destination: str, account_id: str, size: int) -> int:
    """Lower the account's batch size for the whole pool and for good; returns the size now."""
    return int(await conn.fetchval(Q.uploads.lower_max_batch, destination, account_id, max(1, size)))


async def mark_gate_ledgered(
    conn: asyncpg.Connection, site_id: Any, destination: str, interval_s: float, now: datetime | None = None
) -> bool:
    """``True`` when this caller may ledger a gated attempt for the group now (at most one
    per ``interval_s``)."""
    return await conn.fetchval(Q.uploads.mark_gate_ledgered, site_id, destination, float(interval_s), now) is not None


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
            [u.refund for u in updates],
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
