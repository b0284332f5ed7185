"""Export: everything held for a data subject as one JSON document, streamed.

The document is ``{"subject": ..., "sessions": [...], "events": [...], "consent_history":
[...], "calls": [...], "call_actions": [...], "conversations": [...], "sales": [...],
"offline_conversion_queue": [...], "dead_letters": [...], "meta": {"total_records",
"exported_at", ...}}``. ``meta`` comes last because ``total_records`` counts what was
actually written. Rows are read in keyset pages, each page in its own short transaction
(``tx``), so a slow reader never holds a connection or a snapshot for the whole download.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import msgspec

from opsmantik_stream.enums import ActorType
from opsmantik_stream.privacy.subject import Subject, SubjectRows, resolve_subject, subject_hash
from opsmantik_stream.queries import Q
from opsmantik_stream.tenancy import write_audit

__all__ = ["EXPORT_SECTIONS", "Transaction", "count_records", "export_document", "plan_export", "start_export"]

# A factory of short transactions: api_transaction under RLS for a user, a plain pool
# connection for the CLI.
Transaction = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]

EXPORT_SECTIONS = (
    "sessions",
    "events",
    "consent_history",
    "calls",
    "call_actions",
    "conversations",
    "sales",
    "offline_conversion_queue",
    "dead_letters",
)
_PAGE = 500
_NIL = uuid.UUID(int=0)


def _enc_hook(value: Any) -> Any:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return str(value)
    raise NotImplementedError(f"cannot export {type(value).__name__}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


async def plan_export(conn: asyncpg.Connection, subject: Subject) -> tuple[SubjectRows, dict[str, int]]:
    """The subject's rows and how many records each section will hold."""
    rows = await resolve_subject(conn, subject)
    return rows, await count_records(conn, rows)


async def start_export(
    tx: Transaction,
    subject: Subject,
    *,
    key: bytes,
    actor_type: ActorType,
    actor_id: str | None,
    site_label: str,
) -> tuple[SubjectRows, dict[str, int], dict[str, Any]]:
    """Find the subject's rows and audit the export (counts and keyed hash) before any row
    is sent; returns the rows, the counts and the document's ``subject`` section."""
    digest = subject_hash(key, subject)
    async with tx() as conn:
        rows, counts = await plan_export(conn, subject)
        await write_audit(
            conn,
            actor_type,
            actor_id,
            "privacy.export",
            "privacy_subject",
            digest,
            subject.site_id,
            {"identifier_type": subject.kind.value, "subject_hash": digest, "counts": counts},
        )
    return rows, counts, {"site": site_label, "identifier_type": subject.kind.value, "subject_hash": digest}


async def count_records(conn: asyncpg.Connection, rows: SubjectRows) -> dict[str, int]:
    site = rows.site_id
    sizes = rows.sizes()
    return {
        "sessions": sizes["sessions"],
        "events": int(await conn.fetchval(Q.privacy.count_events, site, rows.sessions)) if rows.sessions else 0,
        "consent_history": (
            int(await conn.fetchval(Q.privacy.count_consent_history, site, rows.sessions)) if rows.sessions else 0
        ),
        "calls": sizes["calls"],
        "call_actions": int(await conn.fetchval(Q.privacy.count_call_actions, site, rows.calls)) if rows.calls else 0,
        "conversations": sizes["conversations"],
        "sales": sizes["sales"],
        "offline_conversion_queue": sizes["offline_conversion_queue"],
        "dead_letters": sizes["dead_letters"],
    }


#: a section's (query, id list, keyset key of a row, first key)
_Source = tuple[str, list[Any], Callable[[asyncpg.Record], tuple[Any, ...]], tuple[Any, ...]]


def _sources(rows: SubjectRows) -> dict[str, _Source]:
    """section -> (query, id list, keyset key of a row, first key)."""
    by_id = (lambda r: (r["id"],), (_NIL,))
    by_serial = (lambda r: (r["id"],), (0,))
    return {
        "sessions": (Q.privacy.export_sessions, rows.sessions, *by_id),
        "events": (Q.privacy.export_events, rows.sessions, lambda r: (r["session_id"], r["id"]), (_NIL, _NIL)),
        "consent_history": (Q.privacy.export_consent_history, rows.sessions, *by_serial),
        "calls": (Q.privacy.export_calls, rows.calls, *by_id),
        "call_actions": (Q.privacy.export_call_actions, rows.calls, *by_serial),
        "conversations": (Q.privacy.export_conversations, rows.conversations, *by_id),
        "sales": (Q.privacy.export_sales, rows.sales, *by_id),
        "offline_conversion_queue": (Q.privacy.export_queue_rows, rows.queue_rows, *by_id),
        "dead_letters": (Q.privacy.export_dead_letters, rows.dead_letters, *by_serial),
    }


async def export_document(
    tx: Transaction,
    rows: SubjectRows,
    subject_info: dict[str, Any],
    *,
    exported_at: dt.datetime,
    page_size: int = _PAGE,
) -> AsyncIterator[bytes]:
    """The JSON document in chunks (one per page of rows)."""
    total = 0
    yield b'{"subject":' + _encoder.encode(subject_info)
    for section, (query, ids, key_of, first) in _sources(rows).items():
        yield b',"' + section.encode() + b'":['
        written = 0
        key: tuple[Any, ...] = first
        while ids:
            async with tx() as conn:
                page = await conn.fetch(query, rows.site_id, ids, *key, page_size)
            if not page:
                break
            chunk = b",".join(_encoder.encode(dict(r)) for r in page)
            yield (b"," if written else b"") + chunk
            written += len(page)
            key = key_of(page[-1])
            if len(page) < page_size:
                break
        total += written
        yield b"]"
    meta = {"total_records": total, "exported_at": exported_at.isoformat(), "sections": list(EXPORT_SECTIONS)}
    yield b',"meta":' + _encoder.encode(meta) + b"}"
