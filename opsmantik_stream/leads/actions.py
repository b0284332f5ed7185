"""Operator actions on calls: seal, junk, cancel, restore, undo (SPEC §5).

Each action locks the call, checks the transition from the state read under the lock,
changes only the operator column set (a trigger enforces that for the API role), appends
a ``call_actions`` row with the actor and the full pre-action snapshot, and audits. Sealing
with a value enqueues the offline conversion in the same transaction; leaving the sealed
state withdraws a conversion that is still unclaimed.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import asyncpg

from opsmantik_stream.destinations.base import phone_sha256
from opsmantik_stream.enums import ActorType, CallAction, CallSource, CallStatus, QueueKind, SourceKind
from opsmantik_stream.leads.adjust import adjust_conversion
from opsmantik_stream.leads.enqueue import EnqueueResult, enqueue_conversion
from opsmantik_stream.leads.errors import LeadError
from opsmantik_stream.queries import Q
from opsmantik_stream.tenancy import write_audit

__all__ = ["ALLOWED_FROM", "OPERATOR_ACTIONS", "apply_call_action", "call_dict", "session_of_call"]

S = CallStatus
# action -> states it may start from (guarded transitions; everything else answers 409)
ALLOWED_FROM: dict[str, frozenset[str]] = {
    CallAction.SEAL: frozenset({S.INTENT, S.SUSPICIOUS}),
    CallAction.JUNK: frozenset({S.INTENT, S.SUSPICIOUS, S.CONFIRMED}),
    CallAction.CANCEL: frozenset({S.INTENT, S.SUSPICIOUS, S.CONFIRMED}),
    CallAction.RESTORE: frozenset({S.JUNK, S.CANCELLED, S.CONFIRMED, S.SUSPICIOUS}),
}
OPERATOR_ACTIONS = frozenset({CallAction.SEAL, CallAction.JUNK, CallAction.CANCEL, CallAction.RESTORE, CallAction.UNDO})

_STAMP_RE = re.compile(r"^session:([0-9a-fA-F-]{36})$")

_CALL_FIELDS = (
    "id",
    "site_id",
    "source",
    "status",
    "created_at",
    "updated_at",
    "matched_session_id",
    "matched_at",
    "lead_score",
    "intent_action",
    "intent_target",
    "intent_page_url",
    "intent_phone_clicks",
    "intent_whatsapp_clicks",
    "intent_form_submits",
    "intent_last_at",
    "click_id",
    "click_id_type",
    "value_minor",
    "currency",
    "confirmed_at",
    "cancelled_at",
    "note",
)


def call_dict(row: asyncpg.Record) -> dict[str, Any]:
    """The API view of a call (no phone number, fingerprint or signature)."""
    out: dict[str, Any] = {}
    for key in _CALL_FIELDS:
        if key in row:
            value = row[key]
            out[key] = str(value) if isinstance(value, uuid.UUID) else value
    return out


def session_of_call(row: Any) -> tuple[uuid.UUID | None, dt.date | None]:
    """The call's session: the matched one, else the one named by a ``session:<id>`` stamp."""
    if row["matched_session_id"] is not None:
        return row["matched_session_id"], row["matched_session_month"]
    match = _STAMP_RE.match(row["intent_stamp"] or "")
    return (uuid.UUID(match.group(1)), None) if match else (None, None)


async def apply_call_action(
    conn: asyncpg.Connection,
    *,
    call_id: uuid.UUID,
    action: str,
    actor_type: ActorType,
    actor_id: str | None,
    value_minor: int | None = None,
    currency: str | None = None,
    score: int | None = None,
    note: str | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Run one action in the caller's transaction. Returns the call after the action, the
    ``call_actions`` id, and for a seal the enqueue answer. Raises ``LeadError``."""
    if action not in OPERATOR_ACTIONS:
        raise LeadError(400, "unknown_action", f"action must be one of {', '.join(sorted(OPERATOR_ACTIONS))}")
    now = now or dt.datetime.now(dt.UTC)
    row = await conn.fetchrow(Q.leads.lock_call, call_id)
    if row is None:
        raise LeadError(404, "call_not_found", "no such call")
    previous = row["status"]
    snapshot = row["snapshot"]
    user_uuid = uuid.UUID(actor_id) if actor_type == ActorType.USER and actor_id else None
    if action == CallAction.UNDO:
        last = await conn.fetchrow(Q.leads.last_call_action, call_id)
        if last is None:
            raise LeadError(409, "nothing_to_undo", "the call has no action to undo")
        if last["action_type"] == CallAction.UNDO:
            raise LeadError(409, "last_action_is_undo", "the last action is already an undo")
        updated = await conn.fetchrow(Q.leads.restore_call_snapshot, call_id, previous, last["revert_snapshot"])
        undone = last["action_type"]
    else:
        if previous not in ALLOWED_FROM[action]:
            raise LeadError(409, "invalid_transition", f"cannot {action} a call in state {previous}")
        undone = None
        keep_score = row["lead_score"] if score is None else score
        values: tuple[CallStatus, int | None, str | None, int, dt.datetime | None, uuid.UUID | None, dt.datetime | None]
        if action == CallAction.SEAL:
            if value_minor is not None and currency is None:
                currency = (
                    row["currency"] or (await conn.fetchrow(Q.sales.site_destination, row["site_id"]))["currency"]
                )
            values = (S.CONFIRMED, value_minor, currency or row["currency"], keep_score, now, user_uuid, None)
        elif action == CallAction.JUNK:
            values = (S.JUNK, None, row["currency"], keep_score, None, None, None)
        elif action == CallAction.CANCEL:
            values = (S.CANCELLED, None, row["currency"], keep_score, None, None, now)
        else:  # restore
            values = (S.INTENT, None, row["currency"], keep_score, None, None, None)
        new_status, v_minor, cur, lead_score, confirmed_at, confirmed_by, cancelled_at = values
        updated = await conn.fetchrow(
            Q.leads.apply_call_action,
            call_id,
            previous,
            new_status.value,
            v_minor,
            cur,
            lead_score,
            confirmed_at,
            confirmed_by,
            cancelled_at,
            note if note is not None else row["note"],
        )
    if updated is None:
        # the lock makes this unreachable unless the guard and the lock disagree
        raise LeadError(409, "concurrent_change", "the call changed while the action ran")
    payload = {"value_minor": value_minor, "currency": currency, "score": score}
    if undone:
        payload["undone_action"] = undone
    action_row = await conn.fetchrow(
        Q.leads.insert_call_action,
        call_id,
        row["site_id"],
        action,
        actor_type.value,
        actor_id,
        previous,
        updated["status"],
        snapshot,
        {k: v for k, v in payload.items() if v is not None},
    )
    conversion, voided, retracted = await _follow_up_conversion(conn, row, updated, previous, action, now)
    await write_audit(
        conn,
        actor_type,
        actor_id,
        f"call.{action}",
        "call",
        str(call_id),
        row["site_id"],
        {
            "call_action_id": action_row["id"],
            "previous_status": previous,
            "new_status": updated["status"],
            "enqueued": conversion.enqueued if conversion else None,
            "conversion_voided": voided,
            "conversion_retracted": retracted,
        },
    )
    return {
        "call": call_dict(updated),
        "action_id": action_row["id"],
        "previous_status": previous,
        "conversion": conversion.to_dict() if conversion else None,
        "conversion_voided": voided,
        "conversion_retracted": retracted,
    }


async def _follow_up_conversion(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    updated: asyncpg.Record,
    previous: str,
    action: str,
    now: dt.datetime,
) -> tuple[EnqueueResult | None, bool, bool]:
    """What a call's new state means for its conversion, in the action's transaction:
    (the enqueue answer of a seal, voided before upload, retracted after upload)."""
    call_id = row["id"]
    conversion: EnqueueResult | None = None
    voided = False
    retracted = False
    if updated["status"] == S.CONFIRMED and previous != S.CONFIRMED:
        session_id, session_month = session_of_call(row)
        conversion = await enqueue_conversion(
            conn,
            site_id=row["site_id"],
            source_kind=SourceKind.CALL,
            source_id=call_id,
            session_id=session_id,
            session_month=session_month,
            conversion_time=updated["confirmed_at"] or now,
            value_minor=updated["value_minor"],
            currency=updated["currency"] or "TRY",
            # a phone system's call event carries the caller's number: only its hash is queued
            phone_sha256=phone_sha256(row["phone_number"])
            if row["source"] == CallSource.CALL_EVENT and row["phone_number"]
            else None,
        )
    elif previous == S.CONFIRMED and updated["status"] != S.CONFIRMED:
        voided = bool(
            await conn.fetch(Q.sales.void_pending_conversion, SourceKind.CALL.value, call_id, f"call {action}")
        )
        if not voided:
            # already uploaded (or being uploaded: 409, the action rolls back): retract it there
            retraction = await adjust_conversion(
                conn,
                site_id=row["site_id"],
                source_kind=SourceKind.CALL.value,
                source_id=call_id,
                kind=QueueKind.RETRACTION,
                reason=f"call {action}",
            )
            retracted = retraction.outcome == "adjustment_queued"
    return conversion, voided, retracted
