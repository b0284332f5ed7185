"""Google click-id precedence (SPEC §3 step 8): gclid, else wbraid, else gbraid.

The one Python statement of the rule; the ingest SQL has its twin, ``click_id_rank`` and
``best_click_id`` in migrations/0006_ingest_batch.sql, and tests/integration/test_click_ids.py
checks that both give the same answer on the same table. The order itself is the order of
``ClickIdType``.
"""

from __future__ import annotations

from opsmantik_stream.enums import ClickIdType

__all__ = ["CLICK_ID_PRECEDENCE", "best_click_id", "choose_click_id", "click_id_rank"]

CLICK_ID_PRECEDENCE: tuple[str, ...] = tuple(t.value for t in ClickIdType)
_UNRANKED = len(CLICK_ID_PRECEDENCE) + 1


def click_id_rank(click_type: str | None) -> int:
    """1 for gclid, 2 wbraid, 3 gbraid, 4 for anything else (SQL ``click_id_rank``)."""
    try:
        return CLICK_ID_PRECEDENCE.index(click_type) + 1 if click_type is not None else _UNRANKED
    except ValueError:
        return _UNRANKED


def best_click_id(
    own_id: str | None,
    own_type: str | None,
    gclid: str | None,
    wbraid: str | None,
    gbraid: str | None,
) -> tuple[str | None, str | None]:
    """(id, type) of the best click id among an event's own and its session's, or
    (None, None): the lowest rank wins, the event's own on a tie (SQL ``best_click_id``).
    ``None`` is absent; callers clean blank values first."""
    candidates = [(own_id, own_type, 0), (gclid, "gclid", 1), (wbraid, "wbraid", 1), (gbraid, "gbraid", 1)]
    present = [c for c in candidates if c[0] is not None]
    if not present:
        return None, None
    value, kind, _ = min(present, key=lambda c: (click_id_rank(c[1]), c[2]))
    return value, kind


def _clean(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def choose_click_id(gclid: str | None, wbraid: str | None, gbraid: str | None) -> tuple[str, str] | None:
    """(type, value) of a session's click id to upload, blank values ignored, or None."""
    value, kind = best_click_id(None, None, _clean(gclid), _clean(wbraid), _clean(gbraid))
    return (kind, value) if value is not None and kind is not None else None
