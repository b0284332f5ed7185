"""Read-only views of one site for the console: the lead inbox, a lead's detail, sessions,
traffic by day and channel, sales with their conversions, alerts.

Every function takes a connection the caller opened with ``db.api_transaction`` (row-level
security applies) and the site's uuid it already checked the caller's capability on. Pages
are keyset-paged newest first: ``next_cursor`` is None on the last page.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from opsmantik_stream.console.views import (
    decode_cursor,
    encode_cursor,
    lead_card,
    page_of,
    score_explanation,
    site_zone,
)
from opsmantik_stream.queries import Q

__all__ = [
    "LeadFilters",
    "alerts",
    "lead_detail",
    "leads_page",
    "sales_page",
    "session_detail",
    "sessions_page",
    "traffic",
]

MAX_PAGE = 200
TIMELINE_EVENTS = 200


@dataclass(frozen=True)
class LeadFilters:
    status: str | None = None
    action: str | None = None
    traffic_source: str | None = None
    traffic_medium: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


def _page(rows: list[Any], limit: int, key: str) -> str | None:
    if len(rows) < limit:
        return None
    last = rows[-1]
    return encode_cursor(last[key], last["id"])


async def leads_page(
    conn: asyncpg.Connection, site_id: Any, filters: LeadFilters, cursor: str | None, limit: int
) -> dict[str, Any]:
    """One page of the inbox (raises ``CursorError`` for a bad cursor)."""
    ts, row_id = decode_cursor(cursor)
    limit = max(1, min(limit, MAX_PAGE))
    await conn.execute(Q.console.custom_plans)
    rows = await conn.fetch(
        Q.console.leads_page,
        site_id,
        filters.status,
        filters.action,
        filters.traffic_source,
        filters.traffic_medium,
        filters.start,
        filters.end,
        ts,
        row_id,
        limit,
        None,
    )
    return {"leads": [lead_card(r) for r in rows], "next_cursor": _page(rows, limit, "created_at")}


async def lead_detail(conn: asyncpg.Connection, site_id: Any, call_id: uuid.UUID) -> dict[str, Any] | None:
    """The lead card plus the score's parts, the session timeline, its action log and the
    sales made from it; None when the lead is not the site's (or not visible)."""
    await conn.execute(Q.console.custom_plans)
    row = await conn.fetchrow(Q.console.leads_page, site_id, None, None, None, None, None, None, None, None, 1, call_id)
    if row is None:
        return None
    card = lead_card(row)
    top = None
    timeline: list[dict[str, Any]] = []
    if row["session_id"] is not None:
        top = await conn.fetchrow(Q.console.lead_top_event, site_id, row["session_id"], row["matched_session_month"])
        timeline = _timeline(
            await conn.fetch(
                Q.console.session_events, site_id, row["session_id"], row["matched_session_month"], TIMELINE_EVENTS
            )
        )
    card["score"] = score_explanation(row, dict(top) if top is not None else None)
    card["timeline"] = timeline
    card["actions"] = [
        {k: _plain(v) for k, v in dict(r).items()} for r in await conn.fetch(Q.leads.list_call_actions, call_id)
    ]
    conversation = await conn.fetchrow(Q.console.lead_conversation, site_id, call_id)
    card["conversation"] = {"id": str(conversation["id"]), "status": conversation["status"]} if conversation else None
    card["sales"] = [
        {k: _plain(v) for k, v in dict(r).items()} for r in await conn.fetch(Q.console.lead_sales, site_id, call_id)
    ]
    return card


def _timeline(rows: list[Any]) -> list[dict[str, Any]]:
    return [{**dict(r), "url": page_of(r["url"])} for r in rows]


def _session(row: Any) -> dict[str, Any]:
    out = {k: _plain(v) for k, v in dict(row).items() if k not in {"gclid", "wbraid", "gbraid", "created_month"}}
    out["entry_page"], out["exit_page"] = page_of(row["entry_page"]), page_of(row["exit_page"])
    # the click id's type tells the story; its value is an identifier operators do not need
    out["click_id_type"] = next((k for k in ("gclid", "wbraid", "gbraid") if row[k]), None)
    return out


async def sessions_page(
    conn: asyncpg.Connection,
    site_id: Any,
    *,
    start: dt.datetime | None,
    end: dt.datetime | None,
    traffic_source: str | None,
    traffic_medium: str | None,
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    ts, row_id = decode_cursor(cursor)
    limit = max(1, min(limit, MAX_PAGE))
    await conn.execute(Q.console.custom_plans)
    rows = await conn.fetch(
        Q.console.sessions_page, site_id, start, end, ts, row_id, traffic_source, traffic_medium, limit, None
    )
    return {"sessions": [_session(r) for r in rows], "next_cursor": _page(rows, limit, "created_at")}


async def session_detail(conn: asyncpg.Connection, site_id: Any, session_id: uuid.UUID) -> dict[str, Any] | None:
    await conn.execute(Q.console.custom_plans)
    row = await conn.fetchrow(Q.console.sessions_page, site_id, None, None, None, None, None, None, 1, session_id)
    if row is None:
        return None
    out = _session(row)
    events = await conn.fetch(Q.console.session_events, site_id, session_id, row["created_month"], TIMELINE_EVENTS)
    out["timeline"] = _timeline(events)
    return out


async def traffic(conn: asyncpg.Connection, site_id: Any, *, days: int, now: dt.datetime) -> dict[str, Any]:
    """Sessions, intents, sealed leads and sales per local day for the last ``days`` days, by
    channel (traffic source/medium) and attribution source; the client sums what it shows.

    Closed days' sessions and intents come from the ``traffic_rollup`` job when it has stored
    them (they never change), the rest is counted live; sealed and sold are always live."""
    site = await conn.fetchrow(Q.console.site_basics, site_id)
    zone = site_zone(site["timezone"] if site else None)
    local_today = now.astimezone(ZoneInfo(zone)).date()
    first_day = local_today - dt.timedelta(days=days - 1)
    start = dt.datetime.combine(first_day, dt.time(), ZoneInfo(zone))
    end = dt.datetime.combine(local_today + dt.timedelta(days=1), dt.time(), ZoneInfo(zone))
    cells: dict[tuple[Any, ...], dict[str, Any]] = {}

    def cell(r: Any) -> dict[str, Any]:
        key = (r["day"], r["source"], r["medium"], r["attribution"])
        return cells.setdefault(key, {"sessions": 0, "intents": 0, "sealed": 0, "sold": 0, "sealed_value_minor": 0})

    for r in await conn.fetch(Q.console.traffic_counts, site_id, zone, first_day, local_today):
        c = cell(r)
        c["sessions"] += r["sessions"]
        c["intents"] += r["intents"]
    for r in await conn.fetch(Q.console.traffic_outcomes, site_id, start, end, zone):
        cell(r).update(sealed=r["sealed"], sold=r["sold"], sealed_value_minor=r["sealed_value_minor"])
    rows = [
        {"day": k[0].isoformat(), "source": k[1], "medium": k[2], "attribution": k[3], **v}
        for k, v in sorted(cells.items(), key=lambda kv: kv[0])
    ]
    return {
        "days": [(first_day + dt.timedelta(days=i)).isoformat() for i in range(days)],
        "timezone": zone,
        "currency": site["currency"] if site else None,
        "rows": rows,
    }


async def sales_page(
    conn: asyncpg.Connection, site_id: Any, *, status: str | None, cursor: str | None, limit: int
) -> dict[str, Any]:
    ts, row_id = decode_cursor(cursor)
    limit = max(1, min(limit, MAX_PAGE))
    await conn.execute(Q.console.custom_plans)
    rows = await conn.fetch(Q.console.sales_page, site_id, status, ts, row_id, limit)
    return {
        "sales": [{k: _plain(v) for k, v in dict(r).items()} for r in rows],
        "next_cursor": _page(rows, limit, "occurred_at"),
    }


async def alerts(conn: asyncpg.Connection, site_id: Any, *, include_resolved: bool, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(Q.console.site_alerts, site_id, include_resolved, max(1, min(limit, MAX_PAGE)))
    return [dict(r) for r in rows]
