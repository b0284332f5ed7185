"""Billable classification and UTC months (SPEC.md §3 steps 2-3, §7).

The invoice for a site and UTC month is the count of billable ``ingest_idempotency`` rows;
these rules decide which rows are billable. The quota decision itself runs in PostgreSQL,
next to the month's usage it reads under a row lock (``ingest_quota`` in migration 0006).
"""

from __future__ import annotations

import datetime as dt
import math
from enum import StrEnum

__all__ = [
    "BillingReason",
    "classify_billable",
    "month_start",
    "next_month_start",
    "seconds_to_next_month",
    "year_month",
]


class BillingReason(StrEnum):
    CONVERSION = "conversion"
    INTERACTION_VIEW = "interaction_view"
    SCROLL_DEPTH = "scroll_depth"
    SYSTEM = "system"
    DEFAULT_BILLABLE = "default_billable"
    REJECTED_QUOTA = "rejected_quota"
    DEAD_LETTER = "dead_letter"


def classify_billable(ec: str | None, ea: str | None) -> tuple[bool, BillingReason]:
    """Conversions, page views and unknown kinds are billable; scroll depth and system/* not."""
    cat = (ec or "").strip().lower()
    act = (ea or "").strip().lower()
    if cat == "conversion":
        return True, BillingReason.CONVERSION
    if cat == "system":
        return False, BillingReason.SYSTEM
    if act == "scroll_depth":
        return False, BillingReason.SCROLL_DEPTH
    if (cat in {"interaction", "page", ""} and act in {"view", "page_view"}) or (cat == "page" and not act):
        return True, BillingReason.INTERACTION_VIEW
    return True, BillingReason.DEFAULT_BILLABLE


def month_start(now: dt.datetime) -> dt.date:
    """The first day of ``now``'s UTC month."""
    return now.astimezone(dt.UTC).date().replace(day=1)


def next_month_start(now: dt.datetime) -> dt.datetime:
    first = month_start(now)
    year, month = (first.year + 1, 1) if first.month == 12 else (first.year, first.month + 1)
    return dt.datetime(year, month, 1, tzinfo=dt.UTC)


def year_month(now: dt.datetime) -> str:
    """``YYYY-MM`` of the UTC month (the ledger's and the usage table's month key)."""
    return month_start(now).strftime("%Y-%m")


def seconds_to_next_month(now: dt.datetime) -> int:
    """Retry-After for a quota refusal: whole seconds until the next UTC month (at least 1)."""
    return max(1, math.ceil((next_month_start(now) - now.astimezone(dt.UTC)).total_seconds()))
