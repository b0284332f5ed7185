"""Consent updates from a site's back end or consent platform (``POST /api/consent``).

The request is signed like a call event (the gateway checks it); this module decodes the
strict body and sets the scopes of the matching sessions. The partition caches no consent,
so a direct UPDATE of ``sessions`` is safe; the trigger on ``sessions`` records the change
in ``consent_changes`` and, when ``marketing`` goes, voids the session's pending
conversions (migration 0007) — the same rule the tracker's ``system/consent`` event hits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import asyncpg
import msgspec

from opsmantik_stream.enums import ConsentScope, ConsentSource, PrivacyIdentifier
from opsmantik_stream.privacy.subject import MAX_IDENTIFIER_LENGTH, PrivacyError, normalize_identifier
from opsmantik_stream.queries import Q

__all__ = ["MAX_BODY_BYTES", "MAX_FUTURE_S", "ConsentBody", "apply_consent", "normalize_scopes"]

MAX_BODY_BYTES = 16 * 1024
# a decision may be reported late, never from the future (beyond clock skew)
MAX_FUTURE_S = 60


class ConsentBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``{site_id, identifier_type, identifier_value, scopes, consent_at}``; unknown keys are
    refused. ``consent_at`` (ISO 8601) is when the visitor decided; default: now."""

    site_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    identifier_type: Literal["session_id", "fingerprint"]
    identifier_value: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IDENTIFIER_LENGTH)]
    scopes: Annotated[list[str], msgspec.Meta(max_length=8)]
    consent_at: dt.datetime | None = None


def normalize_scopes(scopes: list[str]) -> list[str]:
    """Known scopes, lower case, sorted and unique (the form ingest stores); 400 otherwise."""
    out = set()
    for raw in scopes:
        value = raw.strip().lower()
        try:
            out.add(ConsentScope(value).value)
        except ValueError:
            known = ", ".join(s.value for s in ConsentScope)
            raise PrivacyError(400, "invalid_scope", f"unknown consent scope (known: {known})") from None
    return sorted(out)


async def apply_consent(
    conn: asyncpg.Connection, site_id: uuid.UUID, body: ConsentBody, now: dt.datetime
) -> dict[str, Any]:
    """Set the scopes on the subject's sessions of this site (in one transaction) and say
    what is recorded now. A decision older than the recorded one changes nothing."""
    scopes = normalize_scopes(body.scopes)
    at = body.consent_at or now
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    if (at - now).total_seconds() > MAX_FUTURE_S:
        raise PrivacyError(400, "invalid_consent_at", "consent_at lies in the future")
    subject = normalize_identifier(site_id, body.identifier_type, body.identifier_value)
    async with conn.transaction():
        await conn.execute(Q.privacy.mark_consent_source, ConsentSource.API.value)
        if subject.kind == PrivacyIdentifier.SESSION_ID:
            ids = [uuid.UUID(subject.value)]
            updated = await conn.fetch(Q.privacy.set_consent_by_session, site_id, ids, scopes, at)
            recorded = await conn.fetch(Q.privacy.consent_by_session, site_id, ids)
        else:
            updated = await conn.fetch(Q.privacy.set_consent_by_fingerprint, site_id, subject.value, scopes, at)
            recorded = await conn.fetch(Q.privacy.consent_by_fingerprint, site_id, subject.value)
    newest = recorded[0] if recorded else None
    return {
        "ok": True,
        "matched_sessions": len(recorded),
        "updated_sessions": len(updated),
        # what the subject's newest session holds now (the request's scopes, unless a newer
        # decision was already recorded)
        "scopes": list(newest["consent_scopes"]) if newest else scopes,
        "consent_at": newest["consent_updated_at"].isoformat() if newest and newest["consent_updated_at"] else None,
    }
