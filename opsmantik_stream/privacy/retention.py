"""The ``privacy_retention`` job: anonymise what has no consent to be kept.

- Sessions without ``analytics`` consent (withdrawn, or never given) whose last activity is
  older than ``privacy_retention_days`` (30-365, default 90) are anonymised with everything
  tied to them, exactly as an erase would (``erase.anonymize``).
- Dead-letter payloads older than ``privacy_dead_letter_days`` (default 30) are replaced by
  the redaction marker.

Work goes in batches of ``privacy_retention_batch`` rows, each in its own short transaction
(rows another transaction holds are skipped until the next run), so the job never holds long
locks. A dry run only counts. A real run records its summary in ``runtime_state`` (what
``opsmantik status`` and ``/metrics`` show) and in the audit log.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg

from opsmantik_stream.enums import ActorType, VoidReason
from opsmantik_stream.job_context import JobContext
from opsmantik_stream.privacy.erase import ERASE_TABLES, anonymize
from opsmantik_stream.privacy.subject import expand
from opsmantik_stream.queries import Q
from opsmantik_stream.tenancy import write_audit

__all__ = ["LAST_RUN_KEY", "MAX_BATCHES", "last_run", "privacy_retention", "run_retention"]

LAST_RUN_KEY = "privacy_retention.last_run"
# a run stops after this many batches of each kind; the next run goes on where it stopped
MAX_BATCHES = 200


def _month_start(ts: dt.datetime) -> dt.date:
    return ts.astimezone(dt.UTC).date().replace(day=1)


async def run_retention(
    pool: asyncpg.Pool,
    *,
    now: dt.datetime,
    days: int,
    dead_letter_days: int,
    batch: int,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Anonymise (or, with ``dry_run``, count) what the retention rules cover at ``now``."""
    if not 30 <= days <= 365:
        raise ValueError("the retention period must be 30-365 days")
    cutoff = now - dt.timedelta(days=days)
    dl_cutoff = now - dt.timedelta(days=dead_letter_days)
    summary: dict[str, Any] = {
        "dry_run": dry_run,
        "days": days,
        "dead_letter_days": dead_letter_days,
        "cutoff": cutoff.isoformat(),
    }
    if dry_run:
        async with pool.acquire() as conn:
            found = await conn.fetchrow(Q.privacy.retention_count_sessions, cutoff, _month_start(cutoff))
            summary["would_anonymize"] = {
                "sessions": int(found["sessions"]),
                "events": int(found["events"]),
                "dead_letters": int(await conn.fetchval(Q.privacy.retention_count_dead_letters, dl_cutoff)),
            }
        return summary

    counts = dict.fromkeys(ERASE_TABLES, 0)
    batches = 0
    for _ in range(MAX_BATCHES):
        async with pool.acquire() as conn, conn.transaction():
            picked = await conn.fetch(Q.privacy.retention_sessions, cutoff, _month_start(cutoff), batch)
            by_site: dict[uuid.UUID, list[uuid.UUID]] = {}
            for r in picked:
                by_site.setdefault(r["site_id"], []).append(r["id"])
            for site, sessions in by_site.items():
                rows = await expand(conn, site, sessions, [])
                for table, n in (await anonymize(conn, rows, reason=VoidReason.RETENTION, now=now)).items():
                    counts[table] += n
        batches += 1
        if len(picked) < batch:
            break
    redacted = 0
    for _ in range(MAX_BATCHES):
        async with pool.acquire() as conn, conn.transaction():
            n = len(await conn.fetch(Q.privacy.retention_dead_letters, dl_cutoff, batch, now))
        redacted += n
        if n < batch:
            break
    # dead letters of the anonymised sessions were redacted with them; old ones on their own
    counts["dead_letters"] += redacted
    summary.update({"finished_at": now.isoformat(), "batches": batches, "counts": counts})
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.runtime.put_state, LAST_RUN_KEY, summary)
        await write_audit(conn, ActorType.SYSTEM, None, "privacy.retention", "job", "privacy_retention", None, summary)
    return summary


async def privacy_retention(ctx: JobContext) -> dict[str, Any]:
    """The periodic job (Maintenance, ``opsmantik jobs run privacy_retention``,
    ``POST /api/jobs/privacy_retention``) with the configured periods."""
    s = ctx.settings
    return await run_retention(
        ctx.pool,
        now=ctx.now,
        days=s.privacy_retention_days,
        dead_letter_days=s.privacy_dead_letter_days,
        batch=s.privacy_retention_batch,
    )


async def last_run(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """The summary of the last real run, or None before the first."""
    value = await conn.fetchval(Q.runtime.get_state, LAST_RUN_KEY)
    return dict(value) if value is not None else None
