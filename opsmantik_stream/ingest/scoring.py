"""Lead score of one event, 0-100 (SPEC.md §3 step 6)."""

from __future__ import annotations

__all__ = ["lead_score"]


def lead_score(
    *,
    category: str | None,
    action: str | None,
    value: float | None,
    scroll_pct: float | None,
    cta_hovers: int | None,
    google_referrer: bool,
    ads_assisted: bool,
) -> int:
    """conversion +50, interaction +10, scroll >= 50 +10 and >= 90 +20 more, CTA hover +15,
    Google referrer +5, Ads Assisted +25; capped at 100.

    Scroll depth is the larger of a ``scroll_depth`` event's value and the pulse field
    ``meta.scroll_pct``; a CTA hover is a ``hover_intent`` event or ``meta.cta_hovers >= 1``.
    """
    cat = (category or "").strip().lower()
    act = (action or "").strip().lower()
    score = 0
    if cat == "conversion":
        score += 50
    elif cat == "interaction":
        score += 10
    depth = max(value if act == "scroll_depth" and value is not None else 0.0, scroll_pct or 0.0)
    if depth >= 50:
        score += 10
    if depth >= 90:
        score += 20
    if act == "hover_intent" or (cta_hovers or 0) >= 1:
        score += 15
    if google_referrer:
        score += 5
    if ads_assisted:
        score += 25
    return max(0, min(100, score))
