"""A data subject's footprint on a site, written with plain SQL as ingest, call events,
operators and uploaders would leave it: the privacy tests erase, export and retain it."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tests.integration._leads_support import make_session, month_of

# Recognisable values: a test asserts none of them survives an erase, by searching the rows'
# text, so none may turn up by chance inside a UUID or a hash: each holds a character outside
# 0-9a-f, but the phone's ten digits (one chance in 16**10 per place).
FINGERPRINT = "fp-subject-7f3a9c"
PHONE_RAW = "0532 123 45 67"
PHONE_E164 = "+905321234567"
EMAIL = "ayse.yilmaz@example.com"
GCLID = "Cj0KCQ-subject-gclid"
IP = "203.0.113.77"
FBCLID = "IwAR-subject-fbclid"


@dataclass
class Footprint:
    site_id: str
    sessions: list[str] = field(default_factory=list)  # the subject's (fingerprint FINGERPRINT)
    other_session: str = ""  # another visitor of the same site
    call_event: str = ""  # a call event with the subject's number, matched to sessions[0]
    intent: str = ""  # the click intent of sessions[0]
    conversation: str = ""
    sale: str = ""
    queued: str = ""  # a pending conversion of the sale
    uploaded: str = ""  # an uploaded conversion of the call event
    dead_letter: int = 0


async def seed_subject(pool: asyncpg.Pool, site: dict[str, Any], at: dt.datetime | None = None) -> Footprint:
    """Two sessions of the subject (one with events, a call event, a conversation, a sale and
    conversions), and one session of someone else, on ``site``; the main session started
    ``at`` (default now)."""
    site_id = site["site_id"]
    fp = Footprint(site_id=site_id)
    now = at or dt.datetime.now(dt.UTC)
    for age_days in (0, 3):
        s = await make_session(
            pool, site_id, fingerprint=FINGERPRINT, gclid=GCLID, created_at=now - dt.timedelta(days=age_days)
        )
        fp.sessions.append(s["id"])
    main = uuid.UUID(fp.sessions[0])
    month = month_of(now)
    await pool.execute(
        """UPDATE sessions SET ip_address = $2, city = 'Istanbul', district = 'Kadikoy', browser = 'Chrome',
               entry_page = 'https://shop.example.com/?gclid=' || $3,
               other_click_ids = jsonb_build_object('fbclid', $4::text)
           WHERE id = $1""",
        main,
        IP,
        GCLID,
        FBCLID,
    )
    other = await make_session(pool, site_id, fingerprint="fp-someone-else", gclid="Cj0-other", created_at=now)
    fp.other_session = other["id"]
    for sid in (main, uuid.UUID(other["id"])):
        await pool.execute(
            """INSERT INTO events (session_id, session_month, site_id, url, event_category, event_action,
                   event_label, metadata)
               VALUES ($1, $2, $3, 'https://shop.example.com/contact?email=' || $4, 'conversion', 'form_submit',
                       'contact-form', $5)""",
            sid,
            month,
            uuid.UUID(site_id),
            EMAIL,
            {
                "fingerprint": FINGERPRINT if sid == main else "fp-someone-else",
                "email": EMAIL if sid == main else "other@example.com",
                "client_sid": str(sid),
                "lead_score": 50,
                "gclid": GCLID,
            },
        )
    fp.intent = str(
        await pool.fetchval(
            """INSERT INTO calls (site_id, source, status, matched_session_id, matched_session_month, phone_number,
                   intent_stamp, intent_action, intent_target, intent_page_url, intent_phone_clicks, click_id,
                   click_id_type)
               VALUES ($1, 'click', 'intent', $2::uuid, $3, '+902120000000', 'session:' || $2::text, 'phone',
                       'tel:+902120000000', 'https://shop.example.com/?gclid=x', 1, $4, 'gclid')
               RETURNING id""",
            uuid.UUID(site_id),
            main,
            month,
            GCLID,
        )
    )
    fp.call_event = str(
        await pool.fetchval(
            """INSERT INTO calls (site_id, source, status, phone_number, matched_session_id, matched_session_month,
                   matched_fingerprint, matched_at, intent_action, intent_target, click_id, click_id_type,
                   event_id, note)
               VALUES ($1, 'call_event', 'confirmed', $2, $3, $4, $5, now(), 'phone', $6, $7, 'gclid',
                       gen_random_uuid(), 'called back')
               RETURNING id""",
            uuid.UUID(site_id),
            PHONE_RAW,
            main,
            month,
            FINGERPRINT,
            f"tel:{PHONE_E164}",
            GCLID,
        )
    )
    snapshot = await pool.fetchval("SELECT to_jsonb(c) FROM calls c WHERE id = $1", uuid.UUID(fp.call_event))
    await pool.execute(
        """INSERT INTO call_actions (call_id, site_id, action_type, actor_type, previous_status, new_status,
               revert_snapshot)
           VALUES ($1, $2, 'seal', 'user', 'intent', 'confirmed', $3)""",
        uuid.UUID(fp.call_event),
        uuid.UUID(site_id),
        snapshot,
    )
    fp.conversation = str(
        await pool.fetchval(
            """INSERT INTO conversations (site_id, primary_call_id, primary_source, note)
               VALUES ($1, $2, $3, $4) RETURNING id""",
            uuid.UUID(site_id),
            uuid.UUID(fp.call_event),
            {"gclid": GCLID, "session_id": str(main)},
            f"Customer called from {PHONE_RAW}",
        )
    )
    fp.sale = str(
        await pool.fetchval(
            """INSERT INTO sales (site_id, conversation_id, occurred_at, amount_minor, currency, status, notes)
               VALUES ($1, $2, now(), 250000, 'TRY', 'CONFIRMED', $3) RETURNING id""",
            uuid.UUID(site_id),
            uuid.UUID(fp.conversation),
            f"invoice to {EMAIL}",
        )
    )
    fp.queued = str(
        await pool.fetchval(
            """INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, session_id,
                   order_id, gclid, conversion_time, value_minor, currency, phone_sha256)
               VALUES ($1, 'google_ads', 'sale', $2, $3, 'om_' || md5(random()::text), $4, now(), 250000, 'TRY',
                       'ab' || md5('x'))
               RETURNING id""",
            uuid.UUID(site_id),
            uuid.UUID(fp.sale),
            main,
            GCLID,
        )
    )
    fp.uploaded = str(
        await pool.fetchval(
            """INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, order_id,
                   gclid, conversion_time, value_minor, currency, status, uploaded_at)
               VALUES ($1, 'google_ads', 'call', $2, 'om_' || md5(random()::text), $3, now(), 1000, 'TRY',
                       'COMPLETED', now())
               RETURNING id""",
            uuid.UUID(site_id),
            uuid.UUID(fp.call_event),
            GCLID,
        )
    )
    fp.dead_letter = int(
        await pool.fetchval(
            """INSERT INTO dead_letters (site_id, source, stage, reason, payload)
               VALUES ($1, 'ingest', 'write', 'DataError', $2) RETURNING id""",
            uuid.UUID(site_id),
            {"sid": str(main), "url": "https://shop.example.com/", "meta": {"fp": FINGERPRINT, "email": EMAIL}},
        )
    )
    return fp


async def site_dump(pool: asyncpg.Pool, site_id: str) -> str:
    """Every tenant row of a site as text (to search for a value, or compare two moments)."""
    parts = []
    for table in (
        "sessions",
        "events",
        "calls",
        "call_actions",
        "conversations",
        "sales",
        "offline_conversion_queue",
        "dead_letters",
    ):
        rows = await pool.fetch(
            f"SELECT to_jsonb(t) AS j FROM {table} t WHERE site_id = $1 ORDER BY to_jsonb(t)::text",
            uuid.UUID(site_id),
        )
        parts.append(f"{table}: " + json.dumps([r["j"] for r in rows], sort_keys=True, default=str))
    return "\n".join(parts)
