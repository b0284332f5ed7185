"""Pure helpers behind the console's read views: keyset cursors, masked targets, the lead
card (session summary and conversion state) and the score's "why". No I/O here."""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opsmantik_stream.clickids import choose_click_id
from opsmantik_stream.enums import CallAction, CallStatus, QueueStatus
from opsmantik_stream.ingest import attribution as attr
from opsmantik_stream.ingest.scoring import score_parts
from opsmantik_stream.leads.actions import ALLOWED_FROM
from opsmantik_stream.leads.enqueue import not_enqueued_reason

__all__ = [
    "CursorError",
    "allowed_actions",
    "conversion_state",
    "decode_cursor",
    "encode_cursor",
    "lead_card",
    "mask_target",
    "page_of",
    "score_explanation",
    "session_card",
    "site_zone",
]

_DIGITS = re.compile(r"\d")


class CursorError(ValueError):
    """A ``cursor`` parameter that this server did not hand out."""


def encode_cursor(ts: dt.datetime, row_id: Any) -> str:
    """An opaque keyset position: the (time, id) of the last row of a page."""
    raw = f"{ts.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[dt.datetime | None, uuid.UUID | None]:
    """(None, None) for the first page; raises :class:`CursorError` for anything malformed."""
    if not cursor:
        return None, None
    if len(cursor) > 200:
        raise CursorError("cursor too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts_text, _, id_text = raw.partition("|")
        ts = dt.datetime.fromisoformat(ts_text)
        if ts.tzinfo is None:
            raise ValueError("naive time")
        return ts, uuid.UUID(id_text)
    except (ValueError, UnicodeDecodeError):
        raise CursorError("not a cursor from this server") from None


def _mask_digits(text: str, keep_head: int, keep_tail: int) -> str:
    """Digits beyond the first ``keep_head`` and last ``keep_tail`` become "•"."""
    positions = [m.start() for m in _DIGITS.finditer(text)]
    hidden = set(positions[keep_head : max(keep_head, len(positions) - keep_tail)])
    return "".join("•" if i in hidden else ch for i, ch in enumerate(text))


def mask_target(target: str | None) -> str | None:
    """A normalised intent target with the personal part hidden: ``tel:+905321234567`` ->
    ``tel:+9053•••••••67``; a WhatsApp chat code keeps three characters; a URL keeps its host."""
    if not target:
        return target
    if target.startswith(("tel:", "wa:+")):
        return _mask_digits(target, 4, 2)
    if target.startswith("wa:chat/"):
        code = target[len("wa:chat/") :]
        return "wa:chat/" + code[:3] + "•" * max(0, min(len(code) - 3, 8))
    if target.startswith("wa:"):
        host = target[3:].split("/", 1)[0]
        return f"wa:{host}/…" if "/" in target[3:] else target
    # form targets and anything else: digits could be a number typed into a field
    return _mask_digits(target, 0, 0)


def allowed_actions(status: str, last_action: str | None) -> list[str]:
    """The operator actions the API would accept for a call now (the transition table of
    ``leads.actions``; undo needs a last action that is not itself an undo)."""
    actions = [a for a, states in ALLOWED_FROM.items() if status in states]
    if last_action is not None and last_action != CallAction.UNDO:
        actions.append(CallAction.UNDO.value)
    return [str(a) for a in actions]


def site_zone(name: str | None) -> str:
    """The site's time zone when it names a real one, else UTC (days are counted in it)."""
    try:
        ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return "UTC"
    return name or "UTC"


def page_of(url: str | None) -> str | None:
    """A URL without its query and fragment: views show which page, while the query carries
    click ids and campaign tags that the session fields already report."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def conversion_state(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """What happened to a lead's offline conversion: its queue row, or why there is none.

    ``row`` carries the call's status and value, the queue row's columns prefixed
    ``conversion_`` and the session's click ids and consent. None for a lead that is not
    sealed and has no conversion.
    """
    status = row.get("conversion_status")
    if status is not None:
        return {
            "queued": True,
            "status": status,
            "error_code": row.get("conversion_error_code"),
            "error_category": row.get("conversion_error_category"),
            "last_error": row.get("conversion_last_error"),
            "next_retry_at": row.get("conversion_next_retry_at"),
            "uploaded_at": row.get("conversion_uploaded_at"),
            # VOIDED: withdrawn before it was sent (the seal was undone)
            "withdrawn": status == QueueStatus.FAILED and row.get("conversion_error_code") == "VOIDED",
        }
    if row.get("status") != CallStatus.CONFIRMED:
        return None
    has_session = row.get("matched_session_id") is not None
    found = row.get("session_id") is not None
    click = choose_click_id(row.get("gclid"), row.get("wbraid"), row.get("gbraid")) if found else None
    reason = not_enqueued_reason(row.get("value_minor"), has_session, found, click, row.get("consent_scopes"))
    return {"queued": False, "status": None, "reason": reason}


def session_card(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The session summary a lead card shows (no fingerprint, IP or click id value)."""
    if row.get("session_id") is None:
        return None
    click = choose_click_id(row.get("gclid"), row.get("wbraid"), row.get("gbraid"))
    return {
        "id": str(row["session_id"]),
        "entry_page": page_of(row.get("entry_page")),
        "attribution_source": row.get("attribution_source"),
        "traffic_source": row.get("traffic_source"),
        "traffic_medium": row.get("traffic_medium"),
        "utm_campaign": row.get("utm_campaign"),
        "pages": row.get("pages"),
        "events": row.get("event_count"),
        "duration_sec": row.get("total_duration_sec"),
        "returning": row.get("is_returning"),
        "previous_visits": row.get("previous_visit_count"),
        "device_type": row.get("device_type"),
        "click_id_type": click[0] if click else None,
        "marketing_consent": "marketing" in (row.get("consent_scopes") or []),
    }


def lead_card(row: Mapping[str, Any]) -> dict[str, Any]:
    """One inbox row: the lead, its masked target, session summary and conversion state."""
    return {
        "id": str(row["id"]),
        "source": row["source"],
        "status": row["status"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "lead_score": row["lead_score"],
        "action": row["intent_action"],
        "target": mask_target(row["intent_target"]),
        "page_url": page_of(row["intent_page_url"]),
        "clicks": {
            "phone": row["intent_phone_clicks"],
            "whatsapp": row["intent_whatsapp_clicks"],
            "form": row["intent_form_submits"],
        },
        "last_action_at": row["intent_last_at"],
        "click_id_type": row["click_id_type"],
        "value_minor": row["value_minor"],
        "currency": row["currency"],
        "confirmed_at": row["confirmed_at"],
        "cancelled_at": row["cancelled_at"],
        "note": row["note"],
        "last_action": row["last_action"],
        "allowed_actions": allowed_actions(row["status"], row["last_action"]),
        "session": session_card(row),
        "conversion": conversion_state(row),
    }


def score_explanation(call: Mapping[str, Any], top_event: Mapping[str, Any] | None) -> dict[str, Any]:
    """The lead score and its parts.

    A call event carries its breakdown (``score_breakdown``); a click intent's score is the
    best score among its session's intent events, so the parts of that event are recomputed
    with the ingest rule (:func:`~opsmantik_stream.ingest.scoring.score_parts`).
    """
    breakdown = call.get("score_breakdown") or {}
    if breakdown:
        parts = [
            {"reason": key, "points": value}
            for key, value in breakdown.items()
            if key.endswith("_points") or key == "max_event_score"
        ]
        return {"score": call["lead_score"], "basis": "call_event", "parts": parts, "details": breakdown}
    if top_event is None:
        return {"score": call["lead_score"], "basis": "none", "parts": []}
    meta = top_event.get("metadata") or {}
    url = top_event.get("url")
    referrer = meta.get("referrer")
    ref_host = attr.referrer_host(
        referrer if isinstance(referrer, str) else None, url if isinstance(url, str) else None
    )
    scored = score_parts(
        category=top_event.get("event_category"),
        action=top_event.get("event_action"),
        value=_number(top_event.get("event_value")),
        scroll_pct=_number(meta.get("scroll_pct")),
        cta_hovers=int(n) if (n := _number(meta.get("cta_hovers"))) is not None else None,
        google_referrer=attr.is_google_host(ref_host),
        ads_assisted=meta.get("attribution_source") == attr.Attribution.ADS_ASSISTED,
    )
    event_score = min(100, sum(points for _, points in scored))
    return {
        "score": call["lead_score"],
        "basis": "event",
        "event": {"action": top_event.get("event_action"), "at": top_event.get("created_at"), "score": event_score},
        "parts": [{"reason": reason, "points": points} for reason, points in scored],
        # an operator may set the score when sealing; then it differs from the event's
        "set_by_operator": call["lead_score"] != event_score,
    }


def _number(value: Any) -> float | None:
    """A JSON or numeric column value as a float; anything else (bool, text, null) is None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
