"""Constrained field types for operator and call-event bodies (msgspec), one place for the
limits the database imposes on what a client sends:

- text PostgreSQL can store: no NUL character (a ``text`` value cannot hold one, so a NUL
  would reach the database and fail there as a 5xx instead of a clear 4xx);
- integers that fit their column: money in minor units is a ``bigint``, but no real amount
  comes near 2**63, so the bound is a sane business ceiling well inside the column;
- site public ids: 32 lower-case hex characters (the ``sites.public_id`` CHECK), checked
  before any query so a malformed id never costs a database round trip.

The same constraints appear in the OpenAPI description, because msgspec derives the JSON
schema from these annotations.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

import msgspec

__all__ = [
    "CURRENCY_PATTERN",
    "MAX_MINOR_UNITS",
    "NO_NUL_PATTERN",
    "SITE_PUBLIC_ID_PATTERN",
    "CurrencyCode",
    "MinorUnits",
    "Note",
    "SitePublicId",
    "Text32",
    "Text64",
    "Text128",
    "Text256",
    "Text512",
    "Text2048",
    "is_site_public_id",
    "to_utc",
]

# regex (re.search semantics) matching strings without a NUL character
NO_NUL_PATTERN = "^[^\\x00]*$"
SITE_PUBLIC_ID_PATTERN = "^[0-9a-f]{32}$"
# an ISO 4217 code as sites, sales and Google take it: three upper-case letters
CURRENCY_PATTERN = "^[A-Z]{3}$"
# 10**15 minor units: ten trillion in a two-decimal currency; far below bigint's 2**63 - 1
MAX_MINOR_UNITS = 10**15

_SITE_RE = re.compile(SITE_PUBLIC_ID_PATTERN)
_CURRENCY_RE = re.compile(CURRENCY_PATTERN)

MinorUnits = Annotated[int, msgspec.Meta(ge=0, le=MAX_MINOR_UNITS)]
SitePublicId = Annotated[str, msgspec.Meta(pattern=SITE_PUBLIC_ID_PATTERN)]
CurrencyCode = Annotated[str, msgspec.Meta(pattern=CURRENCY_PATTERN)]


# strings of at most N characters that PostgreSQL can store
Text32 = Annotated[str, msgspec.Meta(max_length=32, pattern=NO_NUL_PATTERN)]
Text64 = Annotated[str, msgspec.Meta(max_length=64, pattern=NO_NUL_PATTERN)]
Text128 = Annotated[str, msgspec.Meta(max_length=128, pattern=NO_NUL_PATTERN)]
Text256 = Annotated[str, msgspec.Meta(max_length=256, pattern=NO_NUL_PATTERN)]
Text512 = Annotated[str, msgspec.Meta(max_length=512, pattern=NO_NUL_PATTERN)]
Text2048 = Annotated[str, msgspec.Meta(max_length=2048, pattern=NO_NUL_PATTERN)]
# operator notes on calls, conversations and sales
Note = Annotated[str, msgspec.Meta(max_length=2000, pattern=NO_NUL_PATTERN)]


def is_currency_code(value: str) -> bool:
    """True for a currency code as ``CURRENCY_PATTERN`` has it (``TRY``, ``EUR``)."""
    return bool(_CURRENCY_RE.fullmatch(value))


def is_site_public_id(value: str) -> bool:
    """True for a well-formed site public id (no query needed to refuse anything else)."""
    return bool(_SITE_RE.match(value))


# PostgreSQL's timestamptz reaches far beyond these, Python's datetime does not: an offset
# pushes year 1 or year 9999 out of range when converted to UTC.
_MIN_UTC = dt.datetime(1, 1, 2, tzinfo=dt.UTC)
_MAX_UTC = dt.datetime(9999, 12, 30, tzinfo=dt.UTC)


def to_utc(value: dt.datetime) -> dt.datetime | None:
    """``value`` in UTC (naive means UTC), or None when it lies outside what can be stored
    and compared safely (the first and last day of Python's calendar)."""
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    try:
        utc = aware.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        return None
    return utc if _MIN_UTC <= utc <= _MAX_UTC else None
