"""Conversations (SPEC §5): a primary call or session, links to more entities of the same
site, resolution to WON/LOST/JUNK, and the primary-source snapshot (click ids, UTM)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from opsmantik_stream.enums import ActorType, ConversationStatus, LinkEntity
from opsmantik_stream.leads.actions import session_of_call
from opsmantik_stream.leads.errors import LeadError
from opsmantik_stream.queries import Q
from opsmantik_stream.tenancy import write_audit

__all__ = ["add_link", "conversation_dict", "create_conversation", "primary_source", "resolve_conversation"]

_SOURCE_KEYS = (
    "gclid",
    "wbraid",
    "gbraid",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "referrer_host",
    "attribution_source",
)


def conversation_dict(row: asyncpg.Record) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in dict(row).items()}


def _mismatch(entity: str) -> LeadError:
    return LeadError(400, "ENTITY_SITE_MISMATCH", f"the {entity} does not belong to this site")


def primary_source(session: asyncpg.Record | None, call: asyncpg.Record | None) -> dict[str, Any]:
    """The snapshot stored on the conversation: the session's click ids and UTM (the call's
    own click id fills in when the session has none)."""
    out: dict[str, Any] = {}
    if session is not None:
        out["session_id"] = str(session["id"])
        out["session_month"] = session["created_month"].isoformat()
        out.update({k: session[k] for k in _SOURCE_KEYS if session[k] is not None})
        out["consent_scopes"] = list(session["consent_scopes"] or [])
    if call is not None:
        out["call_id"] = str(call["id"])
        if call["click_id"] and call["click_id_type"] and not any(out.get(k) for k in ("gclid", "wbraid", "gbraid")):
            out[call["click_id_type"]] = call["click_id"]
    return out


async def create_conversation(
    conn: asyncpg.Connection,
    *,
    site_id: uuid.UUID,
    primary_call_id: uuid.UUID | None,
    primary_session_id: uuid.UUID | None,
    note: str | None,
    user_id: str,
) -> tuple[dict[str, Any], bool]:
    """(conversation, created). A second create for the same primary call returns the
    existing one (idempotent)."""
    if (primary_call_id is None) == (primary_session_id is None):
        raise LeadError(400, "exactly_one_primary", "give exactly one of primary_call_id or primary_session_id")
    call = None
    session = None
    if primary_call_id is not None:
        call = await conn.fetchrow(Q.leads.conversation_call_in_site, primary_call_id, site_id)
        if call is None:
            raise _mismatch("call")
        sid, month = session_of_call(call)
        if sid is not None:
            session = await conn.fetchrow(Q.leads.session_in_site, sid, site_id, month)
    else:
        session = await conn.fetchrow(Q.leads.session_in_site, primary_session_id, site_id, None)
        if session is None:
            raise _mismatch("session")
    source = primary_source(session, call)
    row = await conn.fetchrow(
        Q.leads.insert_conversation,
        site_id,
        primary_call_id,
        session["id"] if session is not None and call is None else None,
        session["created_month"] if session is not None and call is None else None,
        source,
        note,
        uuid.UUID(user_id),
    )
    if row is None:
        existing = await conn.fetchrow(Q.leads.conversation_by_primary_call, site_id, primary_call_id)
        return conversation_dict(existing), False
    entity = (LinkEntity.CALL, primary_call_id) if call is not None else (LinkEntity.SESSION, primary_session_id)
    await conn.execute(Q.leads.insert_link, row["id"], site_id, entity[0].value, entity[1])
    await write_audit(
        conn,
        ActorType.USER,
        user_id,
        "conversation.create",
        "conversation",
        str(row["id"]),
        site_id,
        {"primary": entity[0].value},
    )
    return conversation_dict(row), True


async def add_link(
    conn: asyncpg.Connection,
    *,
    conversation_id: uuid.UUID,
    site_id: uuid.UUID,
    entity_type: str,
    entity_id: uuid.UUID,
    user_id: str,
) -> tuple[dict[str, Any], bool]:
    """(link, created): a duplicate link is not an error."""
    try:
        kind = LinkEntity(entity_type)
    except ValueError:
        raise LeadError(400, "invalid_entity_type", "entity_type must be session, call, event or sale") from None
    lookup = {
        LinkEntity.CALL: Q.leads.conversation_call_in_site,
        LinkEntity.SESSION: None,
        LinkEntity.EVENT: Q.leads.event_in_site,
        LinkEntity.SALE: Q.leads.sale_in_site,
    }[kind]
    if kind == LinkEntity.SESSION:
        found = await conn.fetchrow(Q.leads.session_in_site, entity_id, site_id, None)
    else:
        assert lookup is not None
        found = await conn.fetchrow(lookup, entity_id, site_id)
    if found is None:
        raise _mismatch(kind.value)
    row = await conn.fetchrow(Q.leads.insert_link, conversation_id, site_id, kind.value, entity_id)
    created = row is not None
    if row is None:
        row = await conn.fetchrow(Q.leads.link_by_entity, conversation_id, kind.value, entity_id)
    else:
        await write_audit(
            conn,
            ActorType.USER,
            user_id,
            "conversation.link",
            "conversation",
            str(conversation_id),
            site_id,
            {"entity_type": kind.value, "entity_id": str(entity_id)},
        )
    link = {
        "id": row["id"],
        "conversation_id": str(conversation_id),
        "entity_type": kind.value,
        "entity_id": str(entity_id),
        "created_at": row["created_at"],
    }
    return link, created


async def resolve_conversation(
    conn: asyncpg.Connection,
    *,
    conversation_id: uuid.UUID,
    site_id: uuid.UUID,
    status: str,
    note: str | None,
    sale_id: uuid.UUID | None,
    user_id: str,
) -> tuple[dict[str, Any], bool]:
    """(conversation, changed). Resolving again to the same status is a no-op; to another
    status it is 409 (a resolved conversation is final)."""
    if status not in {ConversationStatus.WON, ConversationStatus.LOST, ConversationStatus.JUNK}:
        raise LeadError(400, "invalid_status", "status must be WON, LOST or JUNK")
    current = await conn.fetchrow(Q.leads.lock_conversation, conversation_id)
    if current is None:
        raise LeadError(404, "conversation_not_found", "no such conversation")
    if sale_id is not None:
        sale = await conn.fetchrow(Q.leads.sale_in_site, sale_id, site_id)
        if sale is None:
            raise _mismatch("sale")
        if sale["conversation_id"] not in (None, conversation_id):
            raise LeadError(409, "sale_already_linked_elsewhere", "the sale belongs to another conversation")
    if current["status"] != ConversationStatus.OPEN:
        if current["status"] == status:
            return conversation_dict(current), False
        raise LeadError(409, "conversation_already_resolved", f"the conversation is already {current['status']}")
    row = await conn.fetchrow(Q.leads.resolve_conversation, conversation_id, status, note)
    if sale_id is not None:
        await conn.execute(Q.leads.attach_sale_to_conversation, sale_id, conversation_id, site_id)
        await conn.execute(Q.leads.insert_link, conversation_id, site_id, LinkEntity.SALE.value, sale_id)
    await write_audit(
        conn,
        ActorType.USER,
        user_id,
        "conversation.resolve",
        "conversation",
        str(conversation_id),
        site_id,
        {"status": status, "sale_id": str(sale_id) if sale_id else None},
    )
    return conversation_dict(row), True
