"""The ``traffic_rollup`` job: store each site's closed days of traffic for the console.

A local day (in the site's time zone) is closed once it ended ``GRACE`` ago (a batch that was
received before midnight has committed by then). Its sessions and intents per channel and
attribution never change afterwards, so they are stored once (``console_traffic_daily`` and a
marker in ``console_traffic_days``, one statement per day, a concurrent run stores nothing).
The traffic view then reads a month as ~30 small row sets instead of scanning every session and
intent; the open day and days not yet stored are counted live. Sealed and sold figures change
with the operators' work and are never stored.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from opsmantik_stream.console.views import site_zone
from opsmantik_stream.queries import Q

if TYPE_CHECKING:
    from opsmantik_stream.job_context import JobContext

__all__ = ["GRACE", "KEEP_DAYS", "closed_days", "traffic_rollup"]

GRACE = dt.timedelta(minutes=10)
# how far back days are stored (the view shows at most 90)
KEEP_DAYS = 90
# a first run on a large installation catches up over several runs
MAX_DAYS_PER_RUN = 500


def closed_days(now: dt.datetime, zone: str, keep_days: int = KEEP_DAYS) -> list[dt.date]:
    """The site-local days of the last ``keep_days`` that ended at least ``GRACE`` before ``now``."""
    tz = ZoneInfo(zone)
    today = now.astimezone(tz).date()
    days = []
    for back in range(keep_days, 0, -1):
        day = today - dt.timedelta(days=back)
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz)
        if end + GRACE <= now:
            days.append(day)
    return days


async def traffic_rollup(ctx: JobContext) -> dict[str, Any]:
    """Store every closed day of the last ``KEEP_DAYS`` that is not stored yet."""
    stored = 0
    pending = 0
    async with ctx.pool.acquire() as conn:
        for site in await conn.fetch(Q.console.rollup_sites):
            zone = site_zone(site["timezone"])
            await conn.execute(Q.console.rollup_forget_zone, site["id"], zone)
            days = closed_days(ctx.now, zone)
            if not days:
                continue
            have = {r["day"] for r in await conn.fetch(Q.console.rollup_done_days, site["id"], zone, days[0])}
            for day in days:
                if day in have:
                    continue
                if stored >= MAX_DAYS_PER_RUN:
                    pending += 1
                    continue
                await conn.execute(Q.console.rollup_day, site["id"], zone, day)
                stored += 1
    return {"stored_days": stored, "pending_days": pending}
