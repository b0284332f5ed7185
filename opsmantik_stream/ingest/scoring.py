"""Lead score of one event, 0-100 (SPEC.md §3 step 6), and the parts it is made of."""

from __future__ import annotations

from functools import lru_cache

__all__ = ["lead_scores", "score_parts"]


def score_parts(
    *,
    category: str | None,
    action: str | None,
    value: float | None,
    scroll_pct: float | None,
    cta_hovers: int | None,
    google_referrer: bool,
    ads_assisted: bool,
) -> list[tuple[str, int]]:
    """The reasons an event scores, as ``(reason, points)`` in rule order (the console shows
    them as the score's "why"): conversion +50, interaction +10, scroll >= 50 +10 and >= 90
    +20 more, CTA hover +15, Google referrer +5, Ads Assisted +25.

    Scroll depth is the larger of a ``scroll_depth`` event's value and the pulse field
    ``meta.scroll_pct``; a CTA hover is a ``hover_intent`` event or ``meta.cta_hovers >= 1``.
    """
    cat = (category or "").strip().lower()
    act = (action or "").strip().lower()
    parts: list[tuple[str, int]] = []
    if cat == "conversion":
        parts.append(("conversion", 50))
    elif cat == "interaction":
        parts.append(("interaction", 10))
    depth = max(value if act == "scroll_depth" and value is not None else 0.0, scroll_pct or 0.0)
    if depth >= 50:
        parts.append(("scroll_50", 10))
    if depth >= 90:
        parts.append(("scroll_90", 20))
    if act == "hover_intent" or (cta_hovers or 0) >= 1:
        parts.append(("cta_hover", 15))
    if google_referrer:
        parts.append(("google_referrer", 5))
    if ads_assisted:
        parts.append(("ads_assisted", 25))
    return parts


def lead_scores(
    *,
    category: str | None,
    action: str | None,
    value: float | None,
    scroll_pct: float | None,
    cta_hovers: int | None,
    google_referrer: bool,
) -> tuple[int, int]:
    """The event's score without and with Ads Assisted: the sum of :func:`score_parts`, capped
    to 0-100, from one pass over the rules (the partition needs both for every Google-referred
    event; the database picks one once it knows whether an earlier session had a click)."""
    return _lead_scores(category, action, value, scroll_pct, cta_hovers, google_referrer)


# Memo bound of scores (partition process): most events are page views and clicks of a few
# kinds with no scroll depth or hover count, so a few entries answer them; the key is six
# short values (category and action are at most 256 characters), ~0.8 KB per entry with its
# value, at most ~0.8 MB.
SCORE_MEMO_SIZE = 1024


@lru_cache(maxsize=SCORE_MEMO_SIZE)
def _lead_scores(
    category: str | None,
    action: str | None,
    value: float | None,
    scroll_pct: float | None,
    cta_hovers: int | None,
    google_referrer: bool,
) -> tuple[int, int]:
    parts = score_parts(
        category=category,
        action=action,
        value=value,
        scroll_pct=scroll_pct,
        cta_hovers=cta_hovers,
        google_referrer=google_referrer,
        ads_assisted=True,
    )
    total = sum(points for _, points in parts)
    assisted = max(0, min(100, total))
    without = max(0, min(100, total - parts[-1][1]))  # Ads Assisted is always the last part
    return without, assisted
