"""Signed call events (SPEC §4): the strict body, and the partition-side processing.

The gateway authenticates the request (``leads.signing``), decodes the body with
``CallEventBody`` and sends a ``CallEventJob`` (msgspec bytes) to the site's partition,
whose ``call_event`` method calls ``process_call_event``. That function matches the newest
session of the fingerprint on the site, scores it, and records the call idempotently:
the schema's unique keys on (site, event_id), (site, signature hash) and (site, stamp)
make a replay, a Ray retry or five concurrent copies end in exactly one row.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from typing import Annotated, Any

import asyncpg
import msgspec

from opsmantik_stream.clickids import choose_click_id
from opsmantik_stream.config import Settings
from opsmantik_stream.enums import CallStatus
from opsmantik_stream.fields import NO_NUL_PATTERN, Text32, Text64, Text256, Text512, Text2048
from opsmantik_stream.queries import Q
from opsmantik_stream.targets import infer_action, normalize_target

__all__ = [
    "MAX_BODY_BYTES",
    "SUSPICIOUS_SKEW_S",
    "CallEventBody",
    "CallEventJob",
    "CallEventResult",
    "compute_lead_score",
    "parse_client_value",
    "process_call_event",
]

MAX_BODY_BYTES = 64 * 1024
# A session that began more than this after the call cannot have caused it (clock skew
# between the phone system and the tracker is allowed up to this much).
SUSPICIOUS_SKEW_S = 120


class CallEventBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The strict call-event body: unknown keys (e.g. consent fields) are rejected.

    ``event_id`` is required (SPEC §4): without it a client's retry, signed again with a new
    timestamp, would not be recognised and would record a second call. Text fields refuse a
    NUL character, which PostgreSQL cannot store (a 422 here instead of a failed insert)."""

    site_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL_PATTERN)]
    fingerprint: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=NO_NUL_PATTERN)]
    event_id: uuid.UUID
    phone_number: Text256 | None = None
    action: Text32 | None = None
    url: Text2048 | None = None
    ua: Text512 | None = None
    value: float | Text64 | None = None
    intent_action: Text32 | None = None
    intent_target: Text512 | None = None
    intent_stamp: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=NO_NUL_PATTERN)] | None = None
    intent_page_url: Text2048 | None = None
    click_id: Text256 | None = None


class CallEventJob(msgspec.Struct, kw_only=True):
    """What the gateway sends to the partition (already authenticated)."""

    site_id: str
    call_at: float  # unix seconds: the signed X-Ops-Ts
    signature_sha256: str
    body: CallEventBody
    referer: str | None = None


class CallEventResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    # matched | unmatched | noop | no_consent
    status: str
    call_id: str | None = None
    session_id: str | None = None
    lead_score: int | None = None
    call_status: str | None = None


_job_decoder = msgspec.msgpack.Decoder(CallEventJob)
_encoder = msgspec.msgpack.Encoder()
_result_decoder = msgspec.msgpack.Decoder(CallEventResult)


def encode_job(job: CallEventJob) -> bytes:
    return _encoder.encode(job)


def decode_result(data: bytes) -> CallEventResult:
    return _result_decoder.decode(data)


def compute_lead_score(conversions: int, interactions: int, max_event_score: float) -> tuple[int, dict[str, Any]]:
    """``min(100, 20·conversions + 5·interactions + max event score)`` and its breakdown."""
    bonus = max(0, math.floor(max_event_score))
    raw = 20 * conversions + 5 * interactions + bonus
    final = min(100, raw)
    return final, {
        "conversion_points": 20 * conversions,
        "interaction_points": 5 * interactions,
        "max_event_score": bonus,
        "raw_score": raw,
        "final_score": final,
        "capped_at_100": raw > 100,
    }


def parse_client_value(value: float | str | None) -> float | None:
    """The body's ``value`` as a finite number, else None (never an error)."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _noop(row: asyncpg.Record) -> CallEventResult:
    return CallEventResult(
        status="noop",
        call_id=str(row["id"]),
        session_id=str(row["matched_session_id"]) if row["matched_session_id"] else None,
        lead_score=row["lead_score"],
        call_status=row["status"],
    )


async def _existing(conn: asyncpg.Connection, site_id: uuid.UUID, job: CallEventJob) -> asyncpg.Record | None:
    row = await conn.fetchrow(Q.leads.call_by_idempotency, site_id, job.body.event_id, job.signature_sha256)
    if row is None and job.body.intent_stamp:
        row = await conn.fetchrow(Q.leads.call_by_stamp, site_id, job.body.intent_stamp)
    return row


async def process_call_event(pool: asyncpg.Pool, payload: bytes, settings: Settings, caches: Any = None) -> bytes:
    """Match, score and record one authenticated call event; msgpack ``CallEventResult``.

    ``caches`` (the partition's session cache) is accepted for the partition's convenience
    but PostgreSQL stays the authority: the match reads committed sessions.
    """
    job = _job_decoder.decode(payload)
    site_id = uuid.UUID(job.site_id)
    body = job.body
    call_at = dt.datetime.fromtimestamp(job.call_at, dt.UTC)
    async with pool.acquire() as conn:
        existing = await _existing(conn, site_id, job)
        if existing is not None:
            return _encoder.encode(_noop(existing))
        window = dt.timedelta(minutes=settings.session_match_window_min)
        session = await conn.fetchrow(Q.leads.match_session, site_id, body.fingerprint, call_at, window)
        if session is None or "analytics" not in (session["consent_scopes"] or []):
            # nothing may be stored without an analytics-consented session (SPEC §4, §8)
            return _encoder.encode(CallEventResult(status="no_consent"))
        inputs = await conn.fetchrow(Q.leads.session_score_inputs, site_id, session["id"], session["created_month"])
        score, breakdown = compute_lead_score(
            int(inputs["conversions"]), int(inputs["interactions"]), float(inputs["max_event_score"])
        )
        client_value = parse_client_value(body.value)
        if client_value is not None:
            breakdown["client_value"] = client_value
        suspicious = session["created_at"] > call_at + dt.timedelta(seconds=SUSPICIOUS_SKEW_S)
        status = CallStatus.SUSPICIOUS if suspicious else CallStatus.INTENT
        action = infer_action(body.intent_action, body.phone_number)
        target = body.intent_target.strip() if body.intent_target and body.intent_target.strip() else None
        target = target or normalize_target(action, body.phone_number)
        click_id: str | None
        click_type: str | None
        if body.click_id and body.click_id.strip():
            click_id, click_type = body.click_id.strip(), None
        else:
            chosen = choose_click_id(session["gclid"], session["wbraid"], session["gbraid"])
            click_type, click_id = chosen if chosen else (None, None)
        row = await conn.fetchrow(
            Q.leads.insert_call_event,
            site_id,
            status.value,
            body.phone_number,
            session["id"],
            session["created_month"],
            body.fingerprint,
            score,
            breakdown,
            body.intent_stamp,
            action.value,
            target,
            body.intent_page_url or body.url or job.referer,
            call_at,
            click_id,
            click_type,
            body.event_id,
            job.signature_sha256,
        )
        if row is None:
            # lost a race with an identical request (or a Ray retry): answer with its call
            existing = await _existing(conn, site_id, job)
            if existing is None:
                raise RuntimeError("call event conflicted but no existing call was found")
            return _encoder.encode(_noop(existing))
    return _encoder.encode(
        CallEventResult(
            status="matched",
            call_id=str(row["id"]),
            session_id=str(row["matched_session_id"]),
            lead_score=row["lead_score"],
            call_status=row["status"],
        )
    )
