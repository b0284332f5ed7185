"""A data subject: how a request names it, and every row of one site tied to it.

A request names the subject by one identifier (``PrivacyIdentifier``): a session id, a
device fingerprint, a phone number or an e-mail address. ``resolve_subject`` follows the
links the schema has, always within one site:

- the subject's sessions: by id; by fingerprint; by the e-mail address a site sent as event
  metadata; by phone, the sessions that call events with that number matched;
- calls of those sessions, call events matched to the fingerprint, calls with the number;
- conversations whose primary call/session or links point at those, and their sales;
- queue rows of those sessions, calls and sales (and, by phone, rows with its hash);
- dead letters carrying the sessions' ids, the fingerprint, the address or the number;
- operator notes (calls, conversations, sales) that spell out the address or the number.

The same resolution serves erase, export and retention, so the three never disagree about
what belongs to a subject.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from opsmantik_stream.destinations.base import email_sha256
from opsmantik_stream.destinations.google.mapping import hash_phone_e164
from opsmantik_stream.enums import PrivacyIdentifier
from opsmantik_stream.errors import DomainError
from opsmantik_stream.ingest.store import session_uuid
from opsmantik_stream.queries import Q
from opsmantik_stream.targets import normalize_phone

__all__ = [
    "MAX_IDENTIFIER_LENGTH",
    "PrivacyError",
    "Subject",
    "SubjectRows",
    "expand",
    "normalize_identifier",
    "resolve_subject",
    "subject_hash",
]

MAX_IDENTIFIER_LENGTH = 320
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class PrivacyError(DomainError):
    """A privacy request that cannot be done as asked (bad identifier, unknown site, ...)."""


@dataclass(frozen=True)
class Subject:
    """A normalised identifier of one site's data subject."""

    site_id: uuid.UUID
    kind: PrivacyIdentifier
    value: str  # normalised: UUID text, fingerprint, E.164 number, lower-case address

    @property
    def phone_digits(self) -> str | None:
        """The last ten digits of the number (how it is searched in free text)."""
        return self.value.lstrip("+")[-10:] if self.kind == PrivacyIdentifier.PHONE else None

    @property
    def email(self) -> str | None:
        return self.value if self.kind == PrivacyIdentifier.EMAIL else None

    @property
    def fingerprint(self) -> str | None:
        return self.value if self.kind == PrivacyIdentifier.FINGERPRINT else None


@dataclass
class SubjectRows:
    """Ids of every row tied to a subject, per table (one site)."""

    site_id: uuid.UUID
    sessions: list[uuid.UUID] = field(default_factory=list)
    calls: list[uuid.UUID] = field(default_factory=list)
    conversations: list[uuid.UUID] = field(default_factory=list)
    sales: list[uuid.UUID] = field(default_factory=list)
    queue_rows: list[uuid.UUID] = field(default_factory=list)
    dead_letters: list[int] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        return {
            "sessions": len(self.sessions),
            "calls": len(self.calls),
            "conversations": len(self.conversations),
            "sales": len(self.sales),
            "offline_conversion_queue": len(self.queue_rows),
            "dead_letters": len(self.dead_letters),
        }


def normalize_identifier(site_id: uuid.UUID | str, kind: str, value: str) -> Subject:
    """The subject as stored values look: a session id as the UUID ingest gave it, a phone
    number in E.164 (Turkish national forms become +90, as for call targets), an address in
    lower case. 400 ``invalid_identifier`` when the value cannot name anything."""
    try:
        ident = PrivacyIdentifier(kind)
    except ValueError:
        kinds = ", ".join(k.value for k in PrivacyIdentifier)
        raise PrivacyError(400, "invalid_identifier_type", f"identifier_type must be one of {kinds}") from None
    raw = (value or "").replace("\x00", "").strip()
    if not raw or len(raw) > MAX_IDENTIFIER_LENGTH:
        raise PrivacyError(400, "invalid_identifier", f"identifier_value must be 1-{MAX_IDENTIFIER_LENGTH} characters")
    site = uuid.UUID(str(site_id))
    if ident == PrivacyIdentifier.SESSION_ID:
        # the same mapping ingest applies to a tracker's session id
        normalized = str(session_uuid(str(site), raw, None, dt.date.today(), ""))
    elif ident == PrivacyIdentifier.PHONE:
        target = normalize_phone(raw)
        if target == "tel:unknown" or len(target) < len("tel:+") + 7:
            raise PrivacyError(400, "invalid_identifier", "identifier_value is not a phone number")
        normalized = target.removeprefix("tel:")
    elif ident == PrivacyIdentifier.EMAIL:
        normalized = raw.lower()
        if not _EMAIL.match(normalized):
            raise PrivacyError(400, "invalid_identifier", "identifier_value is not an e-mail address")
    else:
        normalized = raw
    return Subject(site_id=site, kind=ident, value=normalized)


def subject_hash(key: bytes, subject: Subject) -> str:
    """HMAC-SHA256 of site, kind and normalised value under the database's privacy key:
    what audit entries carry instead of the identifier."""
    msg = f"{subject.site_id}|{subject.kind.value}|{subject.value}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


async def _ids(conn: asyncpg.Connection, query: str, *args: Any) -> list[Any]:
    return [r[0] for r in await conn.fetch(query, *args)]


async def resolve_subject(conn: asyncpg.Connection, subject: Subject) -> SubjectRows:
    """Every row of the subject's site tied to the subject (read only)."""
    site = subject.site_id
    call_ids: list[uuid.UUID] = []
    if subject.kind == PrivacyIdentifier.SESSION_ID:
        sessions = await _ids(conn, Q.privacy.sessions_by_id, site, [uuid.UUID(subject.value)])
    elif subject.kind == PrivacyIdentifier.FINGERPRINT:
        sessions = await _ids(conn, Q.privacy.sessions_by_fingerprint, site, subject.value)
    elif subject.kind == PrivacyIdentifier.EMAIL:
        sessions = await _ids(conn, Q.privacy.sessions_by_email, site, subject.value)
        # a form that opted in to enhanced conversions left only the address's hash
        sessions += await _ids(conn, Q.privacy.sessions_by_captured_identifier, site, email_sha256(subject.value), None)
    else:
        # stored numbers are as the phone system sent them: narrow by the last digits, then
        # keep those that normalise to the subject's number (the one rule, normalize_phone)
        candidates = await conn.fetch(Q.privacy.phone_call_candidates, site, subject.value[-7:])
        call_ids = [r["id"] for r in candidates if normalize_phone(r["phone_number"]) == f"tel:{subject.value}"]
        sessions = await _ids(conn, Q.privacy.sessions_of_calls, site, call_ids) if call_ids else []
        sessions += await _ids(
            conn, Q.privacy.sessions_by_captured_identifier, site, None, hash_phone_e164(subject.value)
        )
    return await expand(conn, site, sessions, call_ids, subject)


async def expand(
    conn: asyncpg.Connection,
    site: uuid.UUID,
    sessions: list[uuid.UUID],
    call_ids: list[uuid.UUID],
    subject: Subject | None = None,
) -> SubjectRows:
    """From a site's sessions (and calls named directly) to every row tied to them.

    ``subject`` adds what only an identifier finds (call events matched to a fingerprint,
    an address or number in notes and dead letters, a phone hash on queue rows); retention
    passes a batch of sessions without one.
    """
    fp = subject.fingerprint if subject else None
    email = subject.email if subject else None
    digits = subject.phone_digits if subject else None
    calls = await _ids(conn, Q.privacy.related_calls, site, sessions, call_ids, fp, email, digits)
    conversations = await _ids(conn, Q.privacy.related_conversations, site, sessions, calls, email, digits)
    phone_hash = hash_phone_e164(subject.value) if subject and subject.kind == PrivacyIdentifier.PHONE else None
    # an address is hashed by Google's rule, as sales store it for enhanced conversions
    email_hash = email_sha256(email) if email else None
    sales = await _ids(conn, Q.privacy.related_sales, site, conversations, email, digits, email_hash, phone_hash)
    queue_rows = await _ids(conn, Q.privacy.related_queue_rows, site, sessions, calls, sales, phone_hash, email_hash)
    sids = {str(s) for s in sessions}
    if sessions:
        sids.update(await _ids(conn, Q.privacy.client_session_ids, site, sessions))
    dead = await _ids(conn, Q.privacy.related_dead_letters, site, sorted(sids), [fp] if fp else [], email, digits)
    return SubjectRows(
        site_id=site,
        sessions=sorted(set(sessions)),
        calls=sorted(set(calls)),
        conversations=sorted(set(conversations)),
        sales=sorted(set(sales)),
        queue_rows=sorted(set(queue_rows)),
        dead_letters=sorted(set(dead)),
    )
