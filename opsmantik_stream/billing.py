"""Billing jobs over the ledger: usage reconciliation, invoice freeze, ledger retention.

The billing authority is the count of billable ``ingest_idempotency`` rows per site and UTC
month. Partitions keep ``site_usage_monthly`` in step inside each batch transaction, so the
reconciliation is expected to find a drift of 0; it records every run so a drift is visible.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import msgspec

from opsmantik_stream.job_context import JobContext
from opsmantik_stream.queries import Q

__all__ = ["invoice_freeze", "ledger_retention", "month_of", "previous_month", "reconcile_usage"]

RETENTION_CHUNK = 5000


def month_of(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).strftime("%Y-%m")


def previous_month(ts: dt.datetime) -> str:
    first = ts.astimezone(dt.UTC).replace(day=1)
    return month_of(first - dt.timedelta(days=1))


async def reconcile_usage(ctx: JobContext) -> dict[str, Any]:
    """Recount the ledger for the current and previous month and record the drift per site."""
    summary: dict[str, Any] = {}
    for ym in (month_of(ctx.now), previous_month(ctx.now)):
        async with ctx.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(Q.billing.reconcile_month, ym)
            if rows:
                await conn.execute(
                    Q.billing.record_reconciliation,
                    [r["site_id"] for r in rows],
                    ym,
                    [r["ledger_count"] for r in rows],
                    [r["usage_count"] for r in rows],
                )
        drifted = {
            str(r["site_id"]): r["ledger_count"] - r["usage_count"]
            for r in rows
            if r["ledger_count"] != r["usage_count"]
        }
        summary[ym] = {"sites": len(rows), "drift": drifted}
    return summary


def _figures_hash(figures: dict[str, Any]) -> str:
    return hashlib.sha256(msgspec.json.encode(figures, order="sorted")).hexdigest()


async def invoice_freeze(ctx: JobContext) -> dict[str, Any]:
    """Write the immutable invoice snapshot of the previous month for every site with a ledger."""
    ym = previous_month(ctx.now)
    frozen = []
    async with ctx.pool.acquire() as conn:
        for row in await conn.fetch(Q.billing.sites_with_ledger, ym):
            site_id = row["site_id"]
            fig = dict(await conn.fetchrow(Q.billing.month_figures, site_id, ym))
            figures = {"site_id": str(site_id), "year_month": ym, **fig}
            inserted = await conn.fetchval(
                Q.billing.insert_invoice,
                site_id,
                ym,
                fig["event_count"],
                fig["overage_count"],
                figures,
                _figures_hash(figures),
            )
            if inserted is not None:
                frozen.append(str(site_id))
    return {"year_month": ym, "frozen": frozen}


async def ledger_retention(ctx: JobContext) -> dict[str, Any]:
    """Delete expired ledger rows (90 days), never of the current or the previous month."""
    keep = [month_of(ctx.now), previous_month(ctx.now)]
    deleted = 0
    while True:
        status = await ctx.pool.execute(Q.billing.delete_expired_ledger, ctx.now, keep, RETENTION_CHUNK)
        n = int(status.split()[-1])
        deleted += n
        if n < RETENTION_CHUNK:
            return {"deleted": deleted, "kept_months": keep}
