"""Periodic jobs: plain async functions over a pool and an injected clock.

The Maintenance actor runs them on their intervals; ``opsmantik jobs run NAME`` and
``POST /api/jobs/{name}`` run one now. Each returns a JSON-able summary.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from opsmantik_stream.billing import invoice_freeze, ledger_retention, reconcile_usage
from opsmantik_stream.config import Settings
from opsmantik_stream.console.rollup import traffic_rollup
from opsmantik_stream.console.signin import expire_sessions
from opsmantik_stream.job_context import JobContext
from opsmantik_stream.leads.auto_approve import auto_approve
from opsmantik_stream.privacy.retention import privacy_retention
from opsmantik_stream.queries import Q
from opsmantik_stream.uploads.rescue import rescue_job
from opsmantik_stream.watchtower import watchtower

__all__ = ["JOBS", "Job", "JobContext", "run_job"]


@dataclass(frozen=True)
class Job:
    name: str
    interval_s: float
    run: Callable[[JobContext], Awaitable[dict[str, Any]]]
    description: str


async def ensure_partitions(ctx: JobContext) -> dict[str, Any]:
    """Create monthly sessions/events partitions from last month to three months ahead."""
    first = ctx.now.date().replace(day=1)
    created = []
    for offset in range(-1, 4):
        month = (first.month - 1 + offset) % 12 + 1
        year = first.year + (first.month - 1 + offset) // 12
        day = dt.date(year, month, 1)
        if await ctx.pool.fetchval(Q.runtime.ensure_month_partitions, day):
            created.append(day.isoformat()[:7])
    return {"created": created}


JOBS: dict[str, Job] = {
    "partitions": Job("partitions", 6 * 3600, ensure_partitions, "create monthly table partitions ahead"),
    "upload_rescue": Job("upload_rescue", 60, rescue_job, "stale PROCESSING uploads to retry policy"),
    "auto_approve": Job("auto_approve", 3600, auto_approve, "seal low-risk Ads intents older than 24 h"),
    "reconcile_usage": Job("reconcile_usage", 3600, reconcile_usage, "recount the billing ledger, record drift"),
    "invoice_freeze": Job("invoice_freeze", 6 * 3600, invoice_freeze, "freeze last month's invoice snapshots"),
    "ledger_retention": Job("ledger_retention", 24 * 3600, ledger_retention, "drop expired ledger rows (90 days)"),
    "privacy_retention": Job(
        "privacy_retention", 24 * 3600, privacy_retention, "anonymise consent-less sessions, redact old dead letters"
    ),
    "watchtower": Job("watchtower", 60, watchtower, "raise/resolve alerts and post them to the alert webhook"),
    "console_sessions": Job("console_sessions", 300, expire_sessions, "end expired console sessions, revoke tokens"),
    "traffic_rollup": Job("traffic_rollup", 300, traffic_rollup, "store closed days of traffic for the console"),
}


async def run_job(name: str, pool: asyncpg.Pool, settings: Settings, now: dt.datetime | None = None) -> dict[str, Any]:
    job = JOBS.get(name)
    if job is None:
        raise KeyError(name)
    ctx = JobContext(pool=pool, settings=settings, now=now or dt.datetime.now(dt.UTC))
    return await job.run(ctx)
