"""Enqueue one offline conversion for a confirmed sale or a sealed call.

Both paths (``POST /api/sales/{id}/confirm`` and sealing a call with a value) call
``enqueue_conversion`` inside their own transaction, so the state change and the queue row
commit together or not at all. The answer always says whether a row was enqueued and, if
not, why (``EnqueueResult.reason``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import asyncpg
import msgspec

from opsmantik_stream.clickids import choose_click_id
from opsmantik_stream.enums import ClickIdType, SourceKind
from opsmantik_stream.queries import Q

__all__ = [
    "EnqueueResult",
    "NotEnqueued",
    "enqueue_conversion",
    "not_enqueued_reason",
    "order_id_for",
]


class NotEnqueued:
    """Reasons a conversion was not enqueued (stable strings; clients may branch on them)."""

    ZERO_VALUE = "zero_value"
    NO_CONVERSATION = "no_conversation"
    NO_SESSION = "no_session"
    SESSION_NOT_FOUND = "session_not_found"
    NO_CLICK_ID = "no_click_id"
    #: no click id, identifiers present, but the site has not opted in to identifier-only uploads
    ENHANCED_CONVERSIONS_OFF = "no_click_id_enhanced_conversions_off"
    NO_MARKETING_CONSENT = "no_marketing_consent"
    ALREADY_ENQUEUED = "already_enqueued"
    PENDING_FOR_SESSION = "pending_conversion_for_session"


class EnqueueResult(msgspec.Struct, frozen=True):
    enqueued: bool
    reason: str | None = None
    conversion_id: str | None = None
    order_id: str | None = None
    click_id_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


def order_id_for(site_id: Any, source_kind: str, source_id: Any) -> str:
    """Deterministic order id: the same sale or call always gives the same id, so Google
    deduplicates a re-upload. 32 hex chars of sha256(site | kind | id), prefixed."""
    digest = hashlib.sha256(f"{site_id}|{source_kind}|{source_id}".encode()).hexdigest()
    return "om_" + digest[:32]


def not_enqueued_reason(
    value_minor: int | None,
    has_session: bool,
    session_found: bool,
    click: tuple[str, str] | None,
    consent_scopes: list[str] | None,
    *,
    has_identifier: bool = False,
    enhanced_conversions: bool = False,
) -> str | None:
    """Why a conversion of this source cannot be enqueued (a ``NotEnqueued`` reason), or
    None when it can. The enqueue and the console's "not queued: ..." read this one rule.
    Without a click id a hashed identifier is enough on a site with enhanced conversions on."""
    if value_minor is None or value_minor <= 0:
        return NotEnqueued.ZERO_VALUE
    if not has_session:
        return NotEnqueued.NO_SESSION
    if not session_found:
        return NotEnqueued.SESSION_NOT_FOUND
    if click is None:
        if not has_identifier:
            return NotEnqueued.NO_CLICK_ID
        if not enhanced_conversions:
            return NotEnqueued.ENHANCED_CONVERSIONS_OFF
    if "marketing" not in (consent_scopes or []):
        return NotEnqueued.NO_MARKETING_CONSENT
    return None


async def enqueue_conversion(
    conn: asyncpg.Connection,
    *,
    site_id: Any,
    source_kind: SourceKind | str,
    source_id: Any,
    session_id: Any,
    session_month: dt.date | None,
    conversion_time: dt.datetime,
    value_minor: int | None,
    currency: str,
    email_sha256: str | None = None,
    phone_sha256: str | None = None,
) -> EnqueueResult:
    """Enqueue (in the caller's transaction) when the session has ``marketing`` consent and a
    click id, or, on a site that opted in to enhanced conversions for leads, a hashed email or
    phone instead. Identifiers (already normalised and hashed: the source's own, else those a
    form captured on the session, see ``opsmantik_stream.capture``) go with the row either way. Never
    raises for a business reason; see ``EnqueueResult``."""
    kind = SourceKind(source_kind).value
    session = None
    if value_minor is not None and value_minor > 0 and session_id is not None:
        session = await conn.fetchrow(Q.sales.session_for_conversion, site_id, session_id, session_month)
    click = choose_click_id(session["gclid"], session["wbraid"], session["gbraid"]) if session else None
    if session is not None and (email_sha256 is None or phone_sha256 is None):
        # what the source lacks, a form that opted in may have captured on the session
        captured = await conn.fetchrow(Q.sales.session_captured_identifiers, site_id, session["id"])
        email_sha256 = email_sha256 or captured["email_sha256"]
        phone_sha256 = phone_sha256 or captured["phone_sha256"]
    site = await conn.fetchrow(Q.sales.site_destination, site_id)
    reason = not_enqueued_reason(
        value_minor,
        session_id is not None,
        session is not None,
        click,
        session["consent_scopes"] if session else None,
        has_identifier=email_sha256 is not None or phone_sha256 is not None,
        enhanced_conversions=bool(site["enhanced_conversions"]),
    )
    if reason is not None:
        return EnqueueResult(False, reason)
    assert session is not None
    destination = site["default_destination"]
    click_type, click_value = click if click is not None else (None, None)
    # exactly one click id is stored: the uploader sends what it finds
    ids = {t.value: (click_value if t.value == click_type else None) for t in ClickIdType}
    order_id = order_id_for(site_id, kind, source_id)
    # the consent goes with the conversion: Google is told what the visitor said (uploads)
    consent = list(session["consent_scopes"] or [])
    row = await conn.fetchrow(
        Q.sales.insert_conversion,
        site_id,
        destination,
        kind,
        source_id,
        session["id"],
        order_id,
        ids["gclid"],
        ids["wbraid"],
        ids["gbraid"],
        conversion_time,
        value_minor,
        currency,
        consent,
        email_sha256,
        phone_sha256,
    )
    if row is not None:
        return EnqueueResult(True, None, str(row["id"]), row["order_id"], click_type)
    existing = await conn.fetchrow(Q.sales.conversion_by_source, kind, source_id)
    if existing is not None and existing["status"] == "FAILED" and existing["error_code"] == "VOIDED":
        lead_waits = kind == SourceKind.CALL and (
            await conn.fetchrow(Q.sales.pending_lead_for_session, site_id, session["id"]) is not None
        )
        if not lead_waits:
            revived = await conn.fetchrow(
                Q.sales.revive_voided_conversion,
                kind,
                source_id,
                ids["gclid"],
                ids["wbraid"],
                ids["gbraid"],
                conversion_time,
                value_minor,
                currency,
                destination,
                consent,
                email_sha256,
                phone_sha256,
            )
            if revived is not None:
                return EnqueueResult(True, None, str(revived["id"]), revived["order_id"], click_type)
        return EnqueueResult(False, NotEnqueued.PENDING_FOR_SESSION, order_id=order_id)
    if existing is not None:
        return EnqueueResult(False, NotEnqueued.ALREADY_ENQUEUED, str(existing["id"]), existing["order_id"])
    return EnqueueResult(False, NotEnqueued.PENDING_FOR_SESSION, order_id=order_id)
