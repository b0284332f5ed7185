"""Call-event request signing (pure): HMAC-SHA256 over ``"<ts>.<raw body>"``.

The gateway checks the header formats, the time window (300 s old / 60 s ahead, against an
injected clock) and the signature against the site's current secret and then its next one
(rotation), always comparing in constant time. Every failure is reported as one boolean so
the caller answers one identical 401 and leaks nothing about which check failed.
"""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = [
    "MAX_AGE_S",
    "MAX_FUTURE_S",
    "parse_timestamp",
    "sign",
    "signature_sha256",
    "verify_signature",
    "within_window",
]

MAX_AGE_S = 300
MAX_FUTURE_S = 60

_TS_RE = re.compile(r"^\d{9,12}$")
_SIG_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def sign(secret: str, ts: int | str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<ts>.<body>"`` with ``secret`` (what clients send)."""
    msg = str(ts).encode() + b"." + body
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def parse_timestamp(value: str | None) -> int | None:
    """Unix seconds from the ``X-Ops-Ts`` header, or None when malformed."""
    if value is None or not _TS_RE.match(value):
        return None
    return int(value)


def within_window(ts: int, now: float, max_age_s: int = MAX_AGE_S, max_future_s: int = MAX_FUTURE_S) -> bool:
    """True when ``ts`` is at most ``max_age_s`` old and at most ``max_future_s`` ahead of ``now``.

    Both edges are inclusive: exactly 300 s old or exactly 60 s ahead still passes.
    """
    return -max_future_s <= now - ts <= max_age_s


def verify_signature(
    secrets: list[str | None] | tuple[str | None, ...],
    ts_header: str | None,
    signature_header: str | None,
    body: bytes,
    now: float,
) -> bool:
    """The whole check: formats, window, then HMAC against each configured secret.

    Every secret is compared (no early exit on the first match) so the time taken does not
    depend on which secret matched.
    """
    ts = parse_timestamp(ts_header)
    if ts is None or signature_header is None or not _SIG_RE.match(signature_header):
        return False
    if not within_window(ts, now):
        return False
    given = signature_header.lower().encode()
    ok = False
    for secret in secrets:
        if not secret:
            continue
        expected = sign(secret, ts_header or "", body).encode()
        ok = hmac.compare_digest(expected, given) | ok
    return ok


def signature_sha256(signature_header: str) -> str:
    """The stored idempotency key of a signature: sha256 of its lower-case hex."""
    return hashlib.sha256(signature_header.lower().encode()).hexdigest()
