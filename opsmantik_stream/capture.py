"""Email and phone captured by a site's form, for enhanced conversions for leads (issue 13 §1).

A form opts in with ``data-om-capture="email,phone"`` (never by default, and the tracker
sends them only with ``marketing`` consent): its form-submit event then carries the visitor's
address and number as ``meta.om_email`` / ``meta.om_phone``. Only their normalised SHA-256
is kept, in the event's metadata as ``email_sha256`` / ``phone_sha256`` (Google's rules, the
one normalisation in :mod:`opsmantik_stream.destinations.base`); the plain values are never
stored, logged or returned. A conversion of the session is enqueued with them when its source
has none of its own (SQL ``session_captured_identifiers``, migration 0012), and erase finds the
session by them.

Ingest calls :func:`form_identifiers` once per event and stores what it returns in the
event's metadata (and nothing of the plain values, dead letters included).
"""

from __future__ import annotations

from opsmantik_stream.destinations.base import email_sha256, phone_sha256
from opsmantik_stream.enums import IntentAction

__all__ = ["MAX_EMAIL_LENGTH", "MAX_PHONE_LENGTH", "PLAIN_META_KEYS", "form_identifiers"]

#: what the tracker may send (longer values are not addresses or numbers)
MAX_EMAIL_LENGTH = 320
MAX_PHONE_LENGTH = 64
#: the meta keys that carry plain values: never stored, anywhere
PLAIN_META_KEYS = ("om_email", "om_phone")


def form_identifiers(intent: IntentAction | None, email: str | None, phone: str | None) -> dict[str, str]:
    """The metadata to store for one event: ``email_sha256`` / ``phone_sha256`` of what a form
    captured, for a form intent only; a value that is not an address, or a number that is not
    in international (E.164) form, is dropped (a country code is never guessed)."""
    if intent is not IntentAction.FORM:
        return {}
    out: dict[str, str] = {}
    e = email_sha256(email) if email and len(email) <= MAX_EMAIL_LENGTH else None
    if e is not None:
        out["email_sha256"] = e
    p = phone_sha256(phone) if phone and len(phone) <= MAX_PHONE_LENGTH else None
    if p is not None:
        out["phone_sha256"] = p
    return out
