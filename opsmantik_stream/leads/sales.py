"""Sales (SPEC §5): create or upsert by external reference, list, and confirm with the
offline-conversion enqueue in the same transaction."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg

from opsmantik_stream.destinations.base import email_sha256, phone_sha256
from opsmantik_stream.enums import ActorType, QueueKind, SaleStatus, SourceKind
from opsmantik_stream.fields import is_currency_code, to_utc
from opsmantik_stream.leads.actions import session_of_call
from opsmantik_stream.leads.adjust import adjust_conversion
from opsmantik_stream.leads.enqueue import EnqueueResult, NotEnqueued, enqueue_conversion
from opsmantik_stream.leads.errors import LeadError
from opsmantik_stream.queries import Q
from opsmantik_stream.tenancy import write_audit

__all__ = [
    "cancel_sale",
    "confirm_sale",
    "list_sales",
    "parse_occurred_at",
    "restate_sale",
    "sale_dict",
    "session_of_sale",
    "upsert_sale",
]


#: columns never returned: the customer's hashed identifiers stay inside delivery
_HIDDEN = frozenset({"inserted", "notes", "email_sha256", "phone_sha256"})


def sale_dict(row: asyncpg.Record) -> dict[str, Any]:
    out = {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in dict(row).items() if k not in _HIDDEN}
    # whether delivery has identifiers for this sale, never what they are
    out["has_email"] = row.get("email_sha256") is not None
    out["has_phone"] = row.get("phone_sha256") is not None
    return out | {"notes": row["notes"]}


def parse_occurred_at(value: str) -> dt.datetime:
    """ISO 8601; a time without offset is taken as UTC. Unparseable, or out of the calendar's
    range once in UTC -> LeadError 400."""
    try:
        parsed = to_utc(dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
    except (ValueError, AttributeError):
        parsed = None
    if parsed is None:
        raise LeadError(400, "invalid_occurred_at", "occurred_at must be an ISO 8601 date-time") from None
    return parsed


async def upsert_sale(
    conn: asyncpg.Connection,
    *,
    site_id: uuid.UUID,
    amount_minor: int,
    currency: str | None,
    occurred_at: dt.datetime,
    external_ref: str | None,
    conversation_id: uuid.UUID | None,
    notes: str | None,
    user_id: str,
    email: str | None = None,
    phone: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """(sale, created). With an external_ref the sale is upserted (DRAFT only: rewriting a
    confirmed or canceled sale is 409). ``email`` / ``phone`` are kept only as Google's
    normalised SHA-256 (for enhanced conversions); the plain values are never stored."""
    if amount_minor < 0:
        raise LeadError(400, "invalid_amount", "amount_minor must be a non-negative integer")
    email_hash = email_sha256(email) if email else None
    if email and email_hash is None:
        raise LeadError(400, "invalid_email", "email is not an email address")
    phone_hash = phone_sha256(phone) if phone else None
    if phone and phone_hash is None:
        raise LeadError(400, "invalid_phone", "phone must be in international E.164 form, e.g. +905321234567")
    if conversation_id is not None:
        if await conn.fetchrow(Q.sales.conversation_for_sale, conversation_id, site_id) is None:
            raise LeadError(400, "ENTITY_SITE_MISMATCH", "the conversation does not belong to this site")
    if currency is None:
        currency = (await conn.fetchrow(Q.sales.site_destination, site_id))["currency"]
    ref = external_ref.strip() if external_ref and external_ref.strip() else None
    row = await conn.fetchrow(
        Q.sales.upsert_sale,
        site_id,
        conversation_id,
        ref,
        occurred_at,
        amount_minor,
        currency,
        notes,
        email_hash,
        phone_hash,
    )
    if row is None:
        existing = await conn.fetchrow(Q.sales.sale_by_external_ref, site_id, ref)
        raise LeadError(
            409,
            "sale_not_draft",
            f"the sale with this external_ref is {existing['status'] if existing else 'final'}",
        )
    created = bool(row["inserted"])
    await write_audit(
        conn,
        ActorType.USER,
        user_id,
        "sale.create" if created else "sale.update",
        "sale",
        str(row["id"]),
        site_id,
        {"amount_minor": amount_minor, "currency": currency},
    )
    return sale_dict(row), created


async def list_sales(
    conn: asyncpg.Connection,
    *,
    site_id: uuid.UUID,
    status: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    conversation_id: uuid.UUID | None,
    limit: int,
) -> list[dict[str, Any]]:
    if status is not None and status not in set(SaleStatus):
        raise LeadError(400, "invalid_status", "status must be DRAFT, CONFIRMED or CANCELED")
    rows = await conn.fetch(Q.sales.list_sales, site_id, status, start, end, conversation_id, limit)
    return [sale_dict(r) for r in rows]


async def session_of_sale(
    conn: asyncpg.Connection, sale: asyncpg.Record
) -> tuple[uuid.UUID | None, dt.date | None, str | None]:
    """(session id, month, reason if none): through the sale's conversation, its primary
    session, else its primary call's session, else the primary-source snapshot."""
    if sale["conversation_id"] is None:
        return None, None, NotEnqueued.NO_CONVERSATION
    conv = await conn.fetchrow(Q.sales.conversation_for_sale, sale["conversation_id"], sale["site_id"])
    if conv is None:
        return None, None, NotEnqueued.NO_CONVERSATION
    if conv["primary_session_id"] is not None:
        return conv["primary_session_id"], conv["primary_session_month"], None
    if conv["primary_call_id"] is not None:
        call = await conn.fetchrow(Q.sales.call_session, conv["primary_call_id"], sale["site_id"])
        if call is not None:
            sid, month = session_of_call({**dict(call), "intent_stamp": None})
            if sid is not None:
                return sid, month, None
    source = conv["primary_source"] or {}
    if source.get("session_id"):
        month = dt.date.fromisoformat(source["session_month"]) if source.get("session_month") else None
        return uuid.UUID(source["session_id"]), month, None
    return None, None, NotEnqueued.NO_SESSION


async def confirm_sale(conn: asyncpg.Connection, *, sale_id: uuid.UUID, user_id: str) -> dict[str, Any]:
    """Lock, require DRAFT (else 409), confirm, enqueue: all in the caller's transaction."""
    sale = await conn.fetchrow(Q.sales.lock_sale, sale_id)
    if sale is None:
        raise LeadError(404, "sale_not_found", "no such sale")
    if sale["status"] != SaleStatus.DRAFT:
        raise LeadError(409, "ALREADY_CONFIRMED_OR_CANCELED", f"the sale is {sale['status']}, not DRAFT")
    confirmed = await conn.fetchrow(Q.sales.confirm_sale, sale_id, uuid.UUID(user_id))
    if confirmed is None:
        raise LeadError(409, "ALREADY_CONFIRMED_OR_CANCELED", "the sale changed while confirming")
    session_id, month, reason = await session_of_sale(conn, confirmed)
    if reason is not None and confirmed["amount_minor"] > 0:
        result = EnqueueResult(False, reason)
    else:
        result = await enqueue_conversion(
            conn,
            site_id=confirmed["site_id"],
            source_kind=SourceKind.SALE,
            source_id=sale_id,
            session_id=session_id,
            session_month=month,
            conversion_time=confirmed["occurred_at"],
            value_minor=confirmed["amount_minor"],
            currency=confirmed["currency"],
            email_sha256=confirmed["email_sha256"],
            phone_sha256=confirmed["phone_sha256"],
        )
    await write_audit(
        conn,
        ActorType.USER,
        user_id,
        "sale.confirm",
        "sale",
        str(sale_id),
        confirmed["site_id"],
        {"enqueued": result.enqueued, "reason": result.reason, "conversion_id": result.conversion_id},
    )
    return {"sale": sale_dict(confirmed), **result.to_dict()}


async def cancel_sale(
    conn: asyncpg.Connection, *, sale_id: uuid.UUID, actor_type: ActorType, user_id: str | None
) -> dict[str, Any]:
    """Cancel a DRAFT or CONFIRMED sale and withdraw its conversion (voided before upload, a
    retraction after), in the caller's transaction; audited. A canceled sale answers 409."""
    sale = await conn.fetchrow(Q.sales.lock_sale, sale_id)
    if sale is None:
        raise LeadError(404, "sale_not_found", "no such sale")
    if sale["status"] == SaleStatus.CANCELED:
        raise LeadError(409, "sale_canceled", "the sale is already canceled")
    # the sale first: the queue's guard checks an adjustment against the source as it now is
    canceled = await conn.fetchrow(Q.sales.cancel_sale, sale_id)
    if canceled is None:
        raise LeadError(409, "sale_canceled", "the sale changed while canceling")
    adjusted = await adjust_conversion(
        conn,
        site_id=sale["site_id"],
        source_kind=SourceKind.SALE.value,
        source_id=sale_id,
        kind=QueueKind.RETRACTION,
        reason="sale canceled",
    )
    await write_audit(
        conn, actor_type, user_id, "sale.cancel", "sale", str(sale_id), sale["site_id"], adjusted.to_dict()
    )
    return {"sale": sale_dict(canceled), "conversion": adjusted.to_dict()}


async def restate_sale(
    conn: asyncpg.Connection,
    *,
    sale_id: uuid.UUID,
    amount_minor: int,
    currency: str | None,
    actor_type: ActorType,
    user_id: str | None,
) -> dict[str, Any]:
    """Change a CONFIRMED sale's value and its conversion's (before upload the queued figures,
    after upload a restatement), in the caller's transaction; audited."""
    if amount_minor <= 0:
        raise LeadError(
            400, "invalid_amount", "amount_minor must be a positive integer (cancel the sale to withdraw it)"
        )
    if currency is not None and not is_currency_code(currency):
        raise LeadError(400, "invalid_currency", "currency must be an ISO 4217 code such as EUR")
    sale = await conn.fetchrow(Q.sales.lock_sale, sale_id)
    if sale is None:
        raise LeadError(404, "sale_not_found", "no such sale")
    if sale["status"] != SaleStatus.CONFIRMED:
        raise LeadError(409, "sale_not_confirmed", f"the sale is {sale['status']}: only a confirmed sale is restated")
    cur = currency or sale["currency"]
    # the sale first: the queue's guard checks the new figures against the source as it now is
    restated = await conn.fetchrow(Q.sales.restate_sale, sale_id, amount_minor, cur)
    if restated is None:
        raise LeadError(409, "sale_not_confirmed", "the sale changed while restating")
    adjusted = await adjust_conversion(
        conn,
        site_id=sale["site_id"],
        source_kind=SourceKind.SALE.value,
        source_id=sale_id,
        kind=QueueKind.RESTATEMENT,
        value_minor=amount_minor,
        currency=cur,
        reason="sale restated",
    )
    await write_audit(
        conn,
        actor_type,
        user_id,
        "sale.restate",
        "sale",
        str(sale_id),
        sale["site_id"],
        {
            "amount_minor": amount_minor,
            "currency": cur,
            "previous_amount_minor": sale["amount_minor"],
            **adjusted.to_dict(),
        },
    )
    return {"sale": sale_dict(restated), "conversion": adjusted.to_dict()}
