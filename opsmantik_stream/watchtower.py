"""Watchtower (SPEC §9): periodic checks that raise one alert per condition and post it to a
webhook once when raised and once when resolved.

The job (``watchtower``, every minute in the Maintenance actor; ``opsmantik jobs run
watchtower``; ``POST /api/jobs/watchtower``) runs in three steps:

1. **Checks** read the current conditions: no sessions in the last hour on a site that had
   traffic the day before; no click ids for 3 h on a site that usually has them; pending dead
   letters; billing drift; uploads stuck in PROCESSING; open breakers; BLOCKED rows; due rows
   waiting too long. A check that fails (database error) leaves its alerts as they are.
2. **Reconcile**, in one transaction: a new condition opens an alert (site, kind, subject,
   first/last seen) and writes its "raised" message to the outbox; a condition still present
   moves ``last_seen_at``; an open alert whose condition is gone is resolved and writes its
   "resolved" message. The outbox is unique per (alert, event), so each alert sends exactly one
   message of each kind however often the job runs.
3. **Deliver** due messages to ``OPSMANTIK_ALERT_WEBHOOK_URL`` (a deployment setting, never
   tenant input): JSON with a Slack-compatible ``text``. Each request has a timeout; the first
   failure ends delivery for this run and the message backs off (30 s doubling to 1 h, with
   jitter) - the checks have already been committed, so a dead webhook never stops them. A
   message nobody accepted for a day is abandoned. Delivery is at least once: a crash between
   the POST and its bookkeeping resends the message after a lease.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx

from opsmantik_stream.billing import month_of, previous_month
from opsmantik_stream.enums import AlertEvent, AlertKind
from opsmantik_stream.queries import Q
from opsmantik_stream.retry import RetryPolicy

if TYPE_CHECKING:
    from opsmantik_stream.job_context import JobContext

__all__ = ["LAST_RUN_KEY", "Condition", "deliver_notifications", "message_text", "run_checks", "watchtower"]

log = logging.getLogger(__name__)

LAST_RUN_KEY = "watchtower.last_run"
# a message is given up when no attempt succeeded for this long
GIVE_UP_AFTER = dt.timedelta(days=1)
MAX_MESSAGES_PER_RUN = 50
_BACKOFF = RetryPolicy(base_delay_s=30.0, max_delay_s=3600.0, jitter_max_s=10.0)


@dataclass(frozen=True)
class Condition:
    """One condition that holds now; (kind, site_id, subject) identifies its alert."""

    kind: AlertKind
    site_id: uuid.UUID | None
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    subject: str = ""

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.kind.value, str(self.site_id) if self.site_id else None, self.subject)


def _site(row: Any) -> str:
    if row["public_id"] is None:
        return "no known site"
    return f"{row['name']} ({row['public_id'][:8]})"


def _base(row: Any) -> dict[str, Any]:
    return {"site": row["public_id"], "site_name": row["name"]}


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime | dt.date) else value


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


Check = Callable[[asyncpg.Connection, "JobContext"], Awaitable[list[Condition]]]


async def _no_sessions(conn: asyncpg.Connection, ctx: JobContext) -> list[Condition]:
    rows = await conn.fetch(Q.watchtower.check_no_sessions, ctx.now, ctx.settings.watchtower_traffic_min_sessions)
    return [
        Condition(
            AlertKind.NO_SESSIONS,
            r["site_id"],
            f"No sessions in the last hour on {_site(r)}, which had {r['sessions_day_before']}+ the day before",
            {**_base(r), "sessions_day_before_at_least": r["sessions_day_before"]},
        )
        for r in rows
    ]


async def _no_click_ids(conn: asyncpg.Connection, ctx: JobContext) -> list[Condition]:
    rows = await conn.fetch(Q.watchtower.check_no_click_ids, ctx.now, ctx.settings.watchtower_click_min_sessions)
    return [
        Condition(
            AlertKind.NO_CLICK_IDS,
            r["site_id"],
            f"No click ids (gclid/wbraid/gbraid) for 3 h on {_site(r)}, which had "
            f"{r['click_sessions_week_before']}+ click-id sessions in the week before",
            {**_base(r), "click_sessions_week_before_at_least": r["click_sessions_week_before"]},
        )
        for r in rows
    ]


async def _dead_letters(conn: asyncpg.Connection, ctx: JobContext) -> list[Condition]:
    rows = await conn.fetch(Q.watchtower.check_dead_letters)
    return [
        Condition(
            AlertKind.DEAD_LETTERS,
            r["site_id"],
            f"{r['pending']} dead letter(s) pending for {_site(r)}",
            {**_base(r), "pending": r["pending"], "oldest": _iso(r["oldest"])},
        )
        for r in rows
    ]


async def _billing_drift(conn: asyncpg.Connection, ctx: JobContext) -> list[Condition]:
    months = [month_of(ctx.now), previous_month(ctx.now)]
    rows = await conn.fetch(Q.watchtower.check_billing_drift, months)
    out = []
    for r in rows:
        drift = {k: int(v) for k, v in sorted(r["drift_by_month"].items()) if int(v) != 0}
        text = ", ".join(f"{m}: {d:+d}" for m, d in drift.items())
        out.append(
            Condition(
                AlertKind.BILLING_DRIFT,
                r["site_id"],
                f"Billing drift on {_site(r)} (ledger minus usage counter: {text})",
                {**_base(r), "drift_by_month": drift},
            )
        )
    return out


async def _stuck_uploads(conn: asyncpg.Connection, ctx: JobContext) -> list[Condition]:
    stale = ctx.settings.upload_stale_after_s
    rows = await conn.fetch(Q.watchtower.check_stuck_uploads, ctx.now - dt.timedelta(seconds=stale))
    return [
        Condition(
            AlertKind.STUCK_UPLOADS,
            r["site_id"],
            f"{r['rows']} upload(s) stuck in PROCESSING for more than {_duration(stale)} on {_site(r)}",
            {**_base(r), "rows": r["rows"], "oldest_claim": _iso(r["oldest_claim"]), "stale_after_s": stale},
        )
        for r in rows
    ]


async def _breakers_open(conn: asyncpg.Connection, ctx: JobContext) -> list[Condition]:
    rows = await conn.fetch(Q.watchtower.check_breakers_open)
    return [
        Condition(
            AlertKind.BREAKER_OPEN,
            r["site_id"],
            f"Circuit breaker OPEN for {r['destination']} uploads on {_site(r)}",
            {
                **_base(r),
                "destination": r["destination"],
                "opened_at": _iso(r["opened_at"]),
                "next_probe_at": _iso(r["next_probe_at"]),
                "failure_count": r["failure_count"],
            },
            subject=r["destination"],
        )
        for r in rows
    ]


async def _blocked_rows(conn: asyncpg.Connection, ctx: JobContext) -> list[Condition]:
    rows = await conn.fetch(Q.watchtower.check_blocked_rows)
    out = []
    for r in rows:
        codes = list(r["error_codes"] or [])
        out.append(
            Condition(
                AlertKind.BLOCKED_ROWS,
                r["site_id"],
                f"{r['rows']} conversion(s) BLOCKED on {_site(r)}" + (f" ({', '.join(codes)})" if codes else ""),
                {**_base(r), "rows": r["rows"], "error_codes": codes},
            )
        )
    return out


async def _queue_age(conn: asyncpg.Connection, ctx: JobContext) -> list[Condition]:
    limit = ctx.settings.watchtower_queue_age_max_s
    rows = await conn.fetch(Q.watchtower.check_queue_age, ctx.now, float(limit))
    return [
        Condition(
            AlertKind.QUEUE_AGE,
            r["site_id"],
            f"{r['rows']} conversion(s) due for more than {_duration(limit)} and not sent on {_site(r)}",
            {**_base(r), "rows": r["rows"], "oldest_due": _iso(r["oldest_due"]), "max_age_s": limit},
        )
        for r in rows
    ]


CHECKS: dict[AlertKind, Check] = {
    AlertKind.NO_SESSIONS: _no_sessions,
    AlertKind.NO_CLICK_IDS: _no_click_ids,
    AlertKind.DEAD_LETTERS: _dead_letters,
    AlertKind.BILLING_DRIFT: _billing_drift,
    AlertKind.STUCK_UPLOADS: _stuck_uploads,
    AlertKind.BREAKER_OPEN: _breakers_open,
    AlertKind.BLOCKED_ROWS: _blocked_rows,
    AlertKind.QUEUE_AGE: _queue_age,
}


async def run_checks(
    conn: asyncpg.Connection, ctx: JobContext
) -> tuple[dict[tuple[Any, ...], Condition], dict[str, str]]:
    """(conditions by alert key, kinds whose check failed -> error name)."""
    found: dict[tuple[Any, ...], Condition] = {}
    failed: dict[str, str] = {}
    for kind, check in CHECKS.items():
        try:
            for cond in await check(conn, ctx):
                found[cond.key] = cond
        except (asyncpg.PostgresError, OSError) as exc:
            # a check that could not run must not resolve its alerts, nor stop the others
            failed[kind.value] = type(exc).__name__
            log.warning("watchtower check failed", extra={"check": kind.value, "error": type(exc).__name__})
    return found, failed


def message_text(event: AlertEvent, summary: str, opened_for_s: float | None = None) -> str:
    """The Slack-compatible ``text`` of a webhook message."""
    if event == AlertEvent.RAISED:
        return f"[OpsMantik ALERT] {summary}"
    return f"[OpsMantik RESOLVED] {summary}" + (
        f" (open for {_duration(opened_for_s)})" if opened_for_s is not None else ""
    )


def _payload(event: AlertEvent, alert: dict[str, Any], opened_for_s: float | None = None) -> dict[str, Any]:
    return {
        "text": message_text(event, alert["summary"], opened_for_s),
        "event": event.value,
        "source": "opsmantik-watchtower",
        "alert": {k: _iso(v) for k, v in alert.items()},
    }


async def _reconcile(
    conn: asyncpg.Connection, ctx: JobContext, found: dict[tuple[Any, ...], Condition], failed: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    notify = ctx.settings.alert_webhook_url is not None
    raised: list[dict[str, Any]] = []
    resolved: list[dict[str, Any]] = []
    async with conn.transaction():
        await conn.execute(Q.watchtower.lock_run)
        open_rows = {
            (r["kind"], str(r["site_id"]) if r["site_id"] else None, r["subject"]): r
            for r in await conn.fetch(Q.watchtower.open_alerts)
        }
        for key, cond in found.items():
            row = open_rows.get(key)
            if row is not None:
                await conn.execute(Q.watchtower.touch_alert, row["id"], ctx.now, cond.summary, cond.details)
                continue
            new = await conn.fetchrow(
                Q.watchtower.insert_alert,
                cond.site_id,
                cond.kind.value,
                cond.subject,
                cond.summary,
                cond.details,
                ctx.now,
            )
            alert = {
                "id": new["id"],
                "kind": cond.kind.value,
                "subject": cond.subject,
                "summary": cond.summary,
                "details": cond.details,
                "first_seen_at": new["first_seen_at"],
            }
            raised.append(alert)
            if notify:
                await conn.execute(
                    Q.watchtower.insert_notification,
                    new["id"],
                    AlertEvent.RAISED.value,
                    _payload(AlertEvent.RAISED, alert),
                    ctx.now,
                )
        for key, row in open_rows.items():
            if key in found or key[0] in failed:
                continue
            resolved_at = await conn.fetchval(Q.watchtower.resolve_alert, row["id"], ctx.now)
            if resolved_at is None:
                continue
            alert = {
                "id": row["id"],
                "kind": row["kind"],
                "subject": row["subject"],
                "summary": row["summary"],
                "details": row["details"],
                "first_seen_at": row["first_seen_at"],
                "resolved_at": resolved_at,
            }
            resolved.append(alert)
            if notify:
                opened_for = (resolved_at - row["first_seen_at"]).total_seconds()
                await conn.execute(
                    Q.watchtower.insert_notification,
                    row["id"],
                    AlertEvent.RESOLVED.value,
                    _payload(AlertEvent.RESOLVED, alert, opened_for),
                    ctx.now,
                )
    return {"raised": raised, "resolved": resolved}


async def deliver_notifications(
    pool: asyncpg.Pool, url: str | None, timeout_s: float, now: dt.datetime, client: httpx.AsyncClient | None = None
) -> dict[str, Any]:
    """Send due outbox messages in order until one fails (see the module docstring)."""
    if url is None:
        return {"delivered": 0, "failed": 0}
    delivered = failed = 0
    own = client is None
    http = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
    try:
        for _ in range(MAX_MESSAGES_PER_RUN):
            async with pool.acquire() as conn:
                msg = await conn.fetchrow(Q.watchtower.claim_notification, now, timeout_s + 30.0)
            if msg is None:
                break
            error = None
            try:
                resp = await http.post(url, json=msg["payload"], timeout=timeout_s)
                if not 200 <= resp.status_code < 300:
                    error = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                # the exception text may carry the URL, which can hold a secret (Slack): name only
                error = type(exc).__name__
            async with pool.acquire() as conn:
                if error is None:
                    await conn.execute(Q.watchtower.notification_delivered, msg["id"], now)
                    delivered += 1
                    continue
                give_up = now - msg["created_at"] >= GIVE_UP_AFTER
                retry_at = now + dt.timedelta(seconds=_BACKOFF.transient_delay_s(msg["attempts"]))
                await conn.execute(Q.watchtower.notification_failed, msg["id"], retry_at, error, give_up)
            failed += 1
            log.warning(
                "watchtower webhook failed",
                extra={"notification_id": msg["id"], "error": error, "attempt": msg["attempts"]},
            )
            # the receiver is down: later messages wait for the next run instead of piling up timeouts
            break
    finally:
        if own:
            await http.aclose()
    return {"delivered": delivered, "failed": failed}


async def watchtower(ctx: JobContext) -> dict[str, Any]:
    """The job: checks, reconcile, deliver; returns what changed."""
    async with ctx.pool.acquire() as conn:
        found, failed = await run_checks(conn, ctx)
        changes = await _reconcile(conn, ctx, found, failed)
    delivery = await deliver_notifications(
        ctx.pool, ctx.settings.alert_webhook_url, ctx.settings.alert_webhook_timeout_s, ctx.now
    )
    summary = {
        "checked_at": ctx.now.isoformat(),
        "checks": sorted(k.value for k in CHECKS),
        "failed_checks": failed,
        "conditions": len(found),
        "raised": [{"kind": a["kind"], "id": a["id"], "summary": a["summary"]} for a in changes["raised"]],
        "resolved": [{"kind": a["kind"], "id": a["id"], "summary": a["summary"]} for a in changes["resolved"]],
        "webhook": {"configured": ctx.settings.alert_webhook_url is not None, **delivery},
    }
    await ctx.pool.execute(Q.runtime.put_state, LAST_RUN_KEY, summary)
    return summary
