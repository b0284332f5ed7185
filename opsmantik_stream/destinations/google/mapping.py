"""Mapping rows to Google's wire formats, and reading Google's proto-JSON error bodies.

Shared by both Google destinations (reference/google-apis.md §1-§2): money in major units by the
currency's ISO 4217 exponent, the two timestamp formats, the one click id sent per row, hashed
phone numbers, protobuf Durations, both casings of proto-JSON keys, and the REST error envelope.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from opsmantik_stream.destinations.base import Conversion, IdentifierKind, normalize_e164, phone_sha256

__all__ = [
    "currency_exponent",
    "email_hash",
    "error_envelope",
    "format_ads_datetime",
    "format_rfc3339",
    "get_either",
    "has_identifier",
    "hash_phone_e164",
    "minor_to_major",
    "normalize_e164",
    "parse_duration",
    "phone_hash",
    "pick_click_id",
    "request_id_from_headers",
    "type_is",
]

# ISO 4217 minor-unit exponents that differ from the default of 2.
_CURRENCY_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        (
            "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG",
            "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
        ),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4,
    "UYW": 4,
}  # fmt: skip

_SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def currency_exponent(currency: str) -> int:
    """ISO 4217 minor-unit exponent: JPY 0, KWD/BHD 3, most currencies 2."""
    return _CURRENCY_EXPONENTS.get(currency.upper(), 2)


def minor_to_major(value_minor: int, currency: str) -> float:
    """Convert minor units (cents) to the major-unit double Google expects."""
    exp = currency_exponent(currency)
    return round(value_minor / 10.0**exp, exp)


def format_ads_datetime(dt: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS+00:00`` in UTC, as Google Ads requires (no ``T``, no ``Z``).

    Raises ``ValueError`` for a naive datetime: guessing a timezone would shift conversions.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("conversion_time must be timezone-aware")
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00:00")


def format_rfc3339(dt: datetime) -> str:
    """RFC 3339 UTC timestamp with second precision (``2026-11-02T13:05:09Z``)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("conversion_time must be timezone-aware")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pick_click_id(conv: Conversion) -> tuple[str, str] | None:
    """The single click id to send as ``(field, value)``: gclid > wbraid > gbraid."""
    for name, value in (("gclid", conv.gclid), ("wbraid", conv.wbraid), ("gbraid", conv.gbraid)):
        if value is not None and value.strip():
            return name, value.strip()
    return None


def hash_phone_e164(phone: str) -> str | None:
    """Lowercase hex SHA-256 of the E.164 phone number, or ``None`` if it is not E.164."""
    return phone_sha256(phone)


def _hashed(conv: Conversion, kind: IdentifierKind) -> str | None:
    h = conv.identifier(kind)
    if h is None:
        return None
    h = h.strip().lower()
    return h if _SHA256_HEX_RE.match(h) else None


def phone_hash(conv: Conversion) -> str | None:
    """The row's hashed phone, when it carries a well-formed one."""
    return _hashed(conv, IdentifierKind.PHONE_SHA256)


def email_hash(conv: Conversion) -> str | None:
    """The row's hashed email, when it carries a well-formed one."""
    return _hashed(conv, IdentifierKind.EMAIL_SHA256)


def has_identifier(conv: Conversion) -> bool:
    """Whether the row carries a usable hashed identifier (enough without a click id)."""
    return phone_hash(conv) is not None or email_hash(conv) is not None


def parse_duration(value: Any) -> float | None:
    """Parse a protobuf Duration JSON string (``"40591s"``, ``"1.5s"``) to seconds."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1))
    if isinstance(value, Mapping):
        # Some clients render Duration as {"seconds": "40", "nanos": 0}.
        try:
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            return None
    return None


def get_either(d: Mapping[str, Any], camel: str, snake: str) -> Any:
    """Read a key in either proto-JSON casing (Google emits camelCase; mocks often snake)."""
    v = d.get(camel)
    return d.get(snake) if v is None else v


def request_id_from_headers(headers: httpx.Headers) -> str | None:
    for name in ("request-id", "x-request-id", "x-goog-request-id"):
        v = headers.get(name)
        if v:
            return str(v)
    return None


def error_envelope(body: Any) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
    """The ``error`` object and its ``details`` list of a Google REST error, or empties."""
    err = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(err, Mapping):
        return {}, []
    details = err.get("details")
    return err, [d for d in details if isinstance(d, Mapping)] if isinstance(details, list) else []


def type_is(detail: Mapping[str, Any], suffix: str) -> bool:
    """Whether an error detail's ``@type`` ends with ``suffix`` (e.g. ``google.rpc.RetryInfo``)."""
    t = detail.get("@type")
    return isinstance(t, str) and t.endswith(suffix)
