"""Helpers shared by the leads/sales integration tests: sessions, events and intents are
written by the ingest partition in production; here they are created with plain SQL."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

import asyncpg

from opsmantik_stream.leads.signing import sign


def month_of(ts: dt.datetime) -> dt.date:
    return ts.astimezone(dt.UTC).date().replace(day=1)


async def make_session(
    pool: asyncpg.Pool,
    site_id: str,
    *,
    fingerprint: str | None = None,
    consent: tuple[str, ...] = ("analytics", "marketing"),
    gclid: str | None = "gclid-TEST-1",
    wbraid: str | None = None,
    gbraid: str | None = None,
    created_at: dt.datetime | None = None,
    last_activity_at: dt.datetime | None = None,
    event_count: int = 3,
    duration_s: int = 40,
    utm_source: str | None = "google",
) -> dict[str, Any]:
    sid = uuid.uuid4()
    created = created_at or dt.datetime.now(dt.UTC)
    await pool.execute(
        """INSERT INTO sessions (id, site_id, created_month, created_at, last_activity_at, fingerprint, gclid,
               wbraid, gbraid, consent_scopes, event_count, total_duration_sec, utm_source, utm_medium,
               utm_campaign)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'cpc', 'spring')""",
        sid,
        uuid.UUID(site_id),
        month_of(created),
        created,
        last_activity_at or created,
        fingerprint,
        gclid,
        wbraid,
        gbraid,
        list(consent),
        event_count,
        duration_s,
        utm_source,
    )
    return {"id": str(sid), "created_month": month_of(created), "created_at": created}


async def make_event(pool: asyncpg.Pool, site_id: str, session: dict[str, Any], category: str, score: int = 0) -> None:
    await pool.execute(
        """INSERT INTO events (session_id, session_month, site_id, url, event_category, event_action,
               metadata)
           VALUES ($1, $2, $3, 'https://shop.example.com/', $4, 'x', $5)""",
        uuid.UUID(session["id"]),
        session["created_month"],
        uuid.UUID(site_id),
        category,
        {"lead_score": score},
    )


async def make_intent(
    pool: asyncpg.Pool,
    site_id: str,
    session: dict[str, Any] | None,
    *,
    created_at: dt.datetime | None = None,
    score: int = 30,
    action: str = "phone",
) -> str:
    """A click intent as the ingest partition writes it (one per session)."""
    stamp = f"session:{session['id']}" if session else f"manual:{uuid.uuid4()}"
    return str(
        await pool.fetchval(
            """INSERT INTO calls (site_id, source, status, created_at, matched_session_id,
                   matched_session_month, lead_score, intent_stamp, intent_action, intent_target,
                   intent_phone_clicks, intent_last_at)
               VALUES ($1, 'click', 'intent', $2, $3, $4, $5, $6, $7, 'tel:+905551112233', 1, $2)
               RETURNING id""",
            uuid.UUID(site_id),
            created_at or dt.datetime.now(dt.UTC),
            uuid.UUID(session["id"]) if session else None,
            session["created_month"] if session else None,
            score,
            stamp,
            action,
        )
    )


def signed_headers(
    site: dict[str, Any], body: bytes, *, secret: str | None = None, ts: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    return {
        "X-Ops-Site-Id": site["public_id"],
        "X-Ops-Ts": str(ts),
        "X-Ops-Signature": sign(secret or site["secret"], ts, body),
        "Content-Type": "application/json",
    }


def call_body(site: dict[str, Any], fingerprint: str, **extra: Any) -> bytes:
    """A call-event body; a fresh ``event_id`` unless one is given (``event_id=None`` leaves
    it out, which the contract refuses)."""
    data = {
        "site_id": site["public_id"],
        "fingerprint": fingerprint,
        "event_id": str(uuid.uuid4()),
        "phone_number": "+90 555 111 22 33",
        "action": "phone",
        **extra,
    }
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
