"""Erase: anonymise (never delete) every row of one site tied to a data subject.

Rows stay so that billing, invoices, the upload ledger and Google's order-id dedupe keep
adding up; what identifies a person goes. ``anonymize`` is shared with the retention job,
so both remove exactly the same fields (listed in docs/privacy.md).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from opsmantik_stream.enums import ActorType, VoidReason
from opsmantik_stream.privacy.subject import Subject, SubjectRows, resolve_subject, subject_hash
from opsmantik_stream.queries import Q
from opsmantik_stream.tenancy import write_audit

__all__ = ["ERASE_TABLES", "anonymize", "erase_subject", "privacy_key"]

# The per-table counts an erase answers, in this order.
ERASE_TABLES = (
    "sessions",
    "events",
    "calls",
    "call_actions",
    "conversations",
    "sales",
    "offline_conversion_queue",
    "offline_conversion_queue_voided",
    "dead_letters",
)

_keys: dict[int, bytes] = {}


async def privacy_key(pool: asyncpg.Pool) -> bytes:
    """The database's privacy key (for keyed hashes), read once per pool."""
    key = _keys.get(id(pool))
    if key is None:
        key = _keys[id(pool)] = bytes(await pool.fetchval(Q.privacy.privacy_key))
    return key


def _count(status: str) -> int:
    # asyncpg's command tag: "UPDATE 3"
    return int(status.rsplit(" ", 1)[-1])


async def anonymize(
    conn: asyncpg.Connection, rows: SubjectRows, *, reason: VoidReason | str, now: dt.datetime
) -> dict[str, int]:
    """Anonymise the given rows (one site) in the caller's transaction; rows changed per table.

    Pending conversions are voided first (FAILED with ``reason``, audited), then every queue
    row loses its click ids and phone hash.
    """
    site = rows.site_id
    counts = dict.fromkeys(ERASE_TABLES, 0)
    if rows.sessions:
        counts["sessions"] = _count(await conn.execute(Q.privacy.anonymize_sessions, site, rows.sessions, now))
        # (not counted: an index of the fingerprints of sessions with a click id, see migration 0019)
        await conn.execute(Q.privacy.forget_session_clicks, site, rows.sessions)
        counts["events"] = _count(await conn.execute(Q.privacy.anonymize_events, site, rows.sessions, now))
    if rows.calls:
        counts["calls"] = _count(await conn.execute(Q.privacy.anonymize_calls, site, rows.calls, now))
        counts["call_actions"] = _count(await conn.execute(Q.privacy.anonymize_call_actions, site, rows.calls))
    if rows.conversations:
        counts["conversations"] = _count(
            await conn.execute(Q.privacy.anonymize_conversations, site, rows.conversations)
        )
    if rows.sales:
        counts["sales"] = _count(await conn.execute(Q.privacy.anonymize_sales, site, rows.sales))
    if rows.queue_rows:
        detail = f"{reason}: personal data anonymised; not uploaded"
        counts["offline_conversion_queue_voided"] = int(
            await conn.fetchval(Q.privacy.void_conversions, site, rows.queue_rows, str(reason), detail)
        )
        counts["offline_conversion_queue"] = _count(
            await conn.execute(Q.privacy.anonymize_queue_rows, site, rows.queue_rows, now)
        )
    if rows.dead_letters:
        counts["dead_letters"] = _count(
            await conn.execute(Q.privacy.redact_dead_letters, site, rows.dead_letters, now, str(reason))
        )
    return counts


async def erase_subject(
    pool: asyncpg.Pool,
    subject: Subject,
    *,
    actor_type: ActorType,
    actor_id: str | None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Find and anonymise everything of ``subject``'s site tied to it, in one transaction on
    the service role (the API role may not rewrite tracking rows); audited with the counts
    and the subject's keyed hash. Safe to repeat: a second run changes nothing and says 0."""
    when = now or dt.datetime.now(dt.UTC)
    digest = subject_hash(await privacy_key(pool), subject)
    async with pool.acquire() as conn, conn.transaction():
        rows = await resolve_subject(conn, subject)
        counts = await anonymize(conn, rows, reason=VoidReason.ERASED, now=when)
        await write_audit(
            conn,
            actor_type,
            actor_id,
            "privacy.erase",
            "privacy_subject",
            digest,
            subject.site_id,
            {"identifier_type": subject.kind.value, "subject_hash": digest, "counts": counts},
        )
    return {
        "identifier_type": subject.kind.value,
        "subject_hash": digest,
        "counts": counts,
        "total": sum(v for k, v in counts.items() if k != "offline_conversion_queue_voided"),
        "erased_at": when.isoformat(),
    }
