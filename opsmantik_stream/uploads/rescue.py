"""Rescue of lost upload attempts (run by the Maintenance actor as job ``upload_rescue``).

- Rows ``PROCESSING`` for longer than ``settings.upload_stale_after_s`` belong to an uploader
  that died or hangs. They go back through the same retry policy as a transient failure
  (``PROCESSING_STALE``): RETRY after the backoff, or FAILED ``MAX_ATTEMPTS`` at the cap. The
  update is guarded by the claim and attempt, so a row finished meanwhile is left alone, and
  the lost uploader's own late finish afterwards matches nothing. Re-sending is safe because
  every row carries its deterministic order id.
- Each rescued claim is ledgered: its STARTED row is written if the uploader never got that far,
  and a FINISHED row records the rescue (``error_code = PROCESSING_STALE``).
- Any other STARTED ledger row without FINISHED older than the threshold is reported and closed
  with ``UPLOADER_LOST``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from opsmantik_stream.config import Settings
from opsmantik_stream.destinations.base import RowOutcome
from opsmantik_stream.enums import ErrorCategory, OutcomeKind
from opsmantik_stream.queries import Q
from opsmantik_stream.retry import RetryPolicy
from opsmantik_stream.uploads import store

__all__ = ["RESCUE_CODE", "rescue_job", "rescue_stale"]

RESCUE_CODE = "PROCESSING_STALE"
LOST_CODE = "UPLOADER_LOST"


async def rescue_stale(
    pool: asyncpg.Pool,
    settings: Settings,
    now: datetime,
    *,
    policy: RetryPolicy | None = None,
    limit: int = 5000,
) -> dict[str, Any]:
    """Rescue stale PROCESSING rows and close orphan STARTED ledger rows; returns a summary."""
    if policy is None:
        policy = RetryPolicy(
            base_delay_s=settings.upload_retry_base_delay_s, jitter_max_s=settings.upload_retry_jitter_s
        )
    stale_s = settings.upload_stale_after_s
    cutoff = now - timedelta(seconds=stale_s)
    message = f"claim older than {stale_s} s (uploader lost); re-sent later with the same order id"
    summary: dict[str, Any] = {
        "rescued": 0,
        "retry": 0,
        "failed": 0,
        "orphans_closed": 0,
        "orphan_batches": [],
    }
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(Q.uploads.stale_processing, cutoff, limit)
        if rows:
            ids, attempts, batches, statuses, delays, codes, cats, errors = ([] for _ in range(8))
            for r in rows:
                outcome = RowOutcome(str(r["id"]), 0, OutcomeKind.RETRY, RESCUE_CODE, ErrorCategory.TRANSIENT, message)
                d = policy.decide(outcome, int(r["attempt"]), now)
                ids.append(r["id"])
                attempts.append(int(r["attempt"]))
                batches.append(r["claim_batch_id"])
                statuses.append(d.status.value)
                delays.append(float(d.delay_s or 0.0))
                codes.append(d.error_code)
                cats.append(d.error_category.value if d.error_category else None)
                errors.append(message)
            changed = await conn.fetch(
                Q.uploads.rescue_rows, ids, attempts, batches, statuses, delays, codes, cats, errors
            )
            by_batch: dict[tuple[Any, Any, str, str], list[Any]] = defaultdict(list)
            for c in changed:
                key = (c["claim_batch_id"], c["site_id"], c["destination"], c["claimed_by"] or "unknown")
                by_batch[key].append(c)
            for (batch_id, site_id, destination, uploader), group in by_batch.items():
                counts = store.FinishCounts.of([g["status"] for g in group])
                attempt = max(int(g["attempt"]) for g in group)
                bid = batch_id or uuid.uuid4()
                await store.insert_started(conn, bid, site_id, destination, uploader, attempt, len(group))
                await store.insert_finished(
                    conn,
                    batch_id=bid,
                    site_id=site_id,
                    destination=destination,
                    uploader_id=uploader,
                    attempt=attempt,
                    row_count=len(group),
                    counts=counts,
                    http_status=None,
                    request_id=None,
                    error_code=RESCUE_CODE,
                    error_category=ErrorCategory.TRANSIENT.value,
                    duration_ms=None,
                    breaker_state=None,
                )
                await store.add_metrics(conn, site_id, destination, len(group), counts)
                summary["retry"] += counts.retry
                summary["failed"] += counts.failed
            summary["rescued"] = len(changed)
    async with pool.acquire() as conn, conn.transaction():
        for o in await conn.fetch(Q.uploads.orphan_started, cutoff, limit):
            closed = await store.insert_finished(
                conn,
                batch_id=o["batch_id"],
                site_id=o["site_id"],
                destination=o["destination"],
                uploader_id=o["uploader_id"],
                attempt=o["attempt"],
                row_count=o["row_count"],
                counts=store.FinishCounts(),
                http_status=None,
                request_id=None,
                error_code=LOST_CODE,
                error_category=ErrorCategory.TRANSIENT.value,
                duration_ms=None,
                breaker_state=None,
            )
            if closed:
                summary["orphans_closed"] += 1
                summary["orphan_batches"].append(str(o["batch_id"]))
    return summary


async def rescue_job(ctx: Any) -> dict[str, Any]:
    """``JOBS['upload_rescue']``: ``ctx`` is a ``jobs.JobContext`` (pool, settings, now)."""
    return await rescue_stale(ctx.pool, ctx.settings, ctx.now)
