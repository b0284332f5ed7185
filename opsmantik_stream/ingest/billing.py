"""Billable classification and the monthly quota decision (SPEC.md §3 steps 2-3, §7).

The invoice for a site and UTC month is the count of billable ``ingest_idempotency`` rows;
these rules decide which rows are billable and which are refused over quota.
"""

from __future__ import annotations

import datetime as dt
import math
from enum import StrEnum

import msgspec

__all__ = [
    "DEFAULT_PLAN",
    "BillingReason",
    "Plan",
    "QuotaDecision",
    "classify_billable",
    "decide_quota",
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


class Plan(msgspec.Struct, frozen=True):
    monthly_limit: int
    soft_limit: bool = False
    hard_cap_multiplier: float = 2.0

    @property
    def hard_cap(self) -> int:
        """The most billable events a month may hold (the limit itself without a soft limit)."""
        if not self.soft_limit:
            return self.monthly_limit
        return math.floor(self.monthly_limit * self.hard_cap_multiplier)


# Used when a site has no plan row (create_site always writes one).
DEFAULT_PLAN = Plan(monthly_limit=100_000, soft_limit=False, hard_cap_multiplier=2.0)


class QuotaDecision(msgspec.Struct, frozen=True):
    accepted: bool
    overage: bool
    remaining: int  # billable events still inside the limit after this one (never negative)


def decide_quota(plan: Plan, used: int) -> QuotaDecision:
    """Decide one billable event when ``used`` billable events were already accepted this month.

    Exactly ``monthly_limit`` events are accepted (event number ``limit`` is the last one,
    no off-by-one); with a soft limit the next ones are accepted as overage until the month
    holds ``floor(limit * hard_cap_multiplier)``.
    """
    if used < plan.monthly_limit:
        return QuotaDecision(accepted=True, overage=False, remaining=plan.monthly_limit - used - 1)
    if plan.soft_limit and used < plan.hard_cap:
        return QuotaDecision(accepted=True, overage=True, remaining=0)
    return QuotaDecision(accepted=False, overage=False, remaining=0)


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
