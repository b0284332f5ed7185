"""Pure helpers of the console views and the watchtower messages."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsmantik_stream.console.signin import csrf_matches, csrf_token
from opsmantik_stream.console.views import (
    CursorError,
    allowed_actions,
    conversion_state,
    decode_cursor,
    encode_cursor,
    mask_target,
    page_of,
    score_explanation,
)
from opsmantik_stream.enums import AlertEvent
from opsmantik_stream.ingest.scoring import lead_scores, score_parts
from opsmantik_stream.watchtower import message_text

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("target", "masked"),
    [
        ("tel:+905321234567", "tel:+9053••••••67"),
        ("wa:+905321234567", "wa:+9053••••••67"),
        ("wa:chat/AbCdEfGhIjK", "wa:chat/AbC••••••••"),
        ("wa:api.whatsapp.com/send/123", "wa:api.whatsapp.com/…"),
        ("form:/contact", "form:/contact"),
        ("form:+90 532 123", "form:+•• ••• •••"),
        (None, None),
        ("", ""),
    ],
)
def test_targets_are_masked(target: str | None, masked: str | None) -> None:
    assert mask_target(target) == masked


def test_pages_lose_their_query_and_fragment() -> None:
    assert page_of("https://shop.example.com/klima?gclid=CJ1&utm_source=google#top") == "https://shop.example.com/klima"
    assert page_of(None) is None and page_of("") == ""
    assert page_of("http://[::1") is None


def test_cursor_round_trip_and_rejects_what_it_did_not_make() -> None:
    ts, row_id = dt.datetime(2026, 12, 1, 9, 30, 1, 123456, tzinfo=dt.UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(ts, row_id)) == (ts, row_id)
    assert decode_cursor(None) == (None, None) and decode_cursor("") == (None, None)
    for bad in ("x", "bm90IGEgY3Vyc29y", encode_cursor(ts, row_id)[:-3], "a" * 300):
        with pytest.raises(CursorError):
            decode_cursor(bad)


@pytest.mark.parametrize(
    ("status", "last", "expected"),
    [
        ("intent", None, ["seal", "junk", "cancel"]),
        ("confirmed", "seal", ["junk", "cancel", "restore", "undo"]),
        ("junk", "junk", ["restore", "undo"]),
        ("junk", "undo", ["restore"]),
        ("suspicious", None, ["seal", "junk", "cancel", "restore"]),
    ],
)
def test_allowed_actions_follow_the_transition_table(status: str, last: str | None, expected: list[str]) -> None:
    assert allowed_actions(status, last) == expected


def test_conversion_state_names_the_queue_row_or_the_reason() -> None:
    sealed = {
        "status": "confirmed",
        "value_minor": 1000,
        "matched_session_id": uuid.uuid4(),
        "session_id": uuid.uuid4(),
        "gclid": "G",
        "wbraid": None,
        "gbraid": None,
        "consent_scopes": ["analytics"],
    }
    assert conversion_state(sealed) == {"queued": False, "status": None, "reason": "no_marketing_consent"}

    def reason(**change: object) -> object:
        state = conversion_state({**sealed, **change})
        assert state is not None
        return state["reason"]

    assert reason(value_minor=None) == "zero_value"
    assert reason(gclid=None) == "no_click_id"
    assert reason(session_id=None) == "session_not_found"
    assert reason(consent_scopes=["analytics", "marketing"]) is None
    assert conversion_state({**sealed, "status": "intent"}) is None
    voided = conversion_state({"conversion_status": "FAILED", "conversion_error_code": "VOIDED"})
    assert voided is not None and voided["withdrawn"] is True


def test_score_explanation_recomputes_the_event_parts() -> None:
    event = {
        "event_category": "conversion",
        "event_action": "phone_call",
        "event_value": None,
        "url": "https://shop.example.com/contact",
        "metadata": {"referrer": "https://www.google.com.tr/", "scroll_pct": 95, "attribution_source": "Ads Assisted"},
    }
    why = score_explanation({"lead_score": 100, "score_breakdown": {}}, event)
    reasons = [p["reason"] for p in why["parts"]]
    assert reasons == ["conversion", "scroll_50", "scroll_90", "google_referrer", "ads_assisted"]
    assert why["event"]["score"] == 100 and why["set_by_operator"] is False
    assert score_explanation({"lead_score": 40, "score_breakdown": {}}, event)["set_by_operator"] is True
    breakdown = {"conversion_points": 20, "interaction_points": 10, "max_event_score": 55, "raw_score": 85}
    call = score_explanation({"lead_score": 85, "score_breakdown": breakdown}, None)
    assert call["basis"] == "call_event" and sum(p["points"] for p in call["parts"]) == 85
    assert score_explanation({"lead_score": 0, "score_breakdown": {}}, None)["basis"] == "none"


@given(
    category=st.sampled_from(["conversion", "interaction", "system", "", None]),
    action=st.sampled_from(["phone_call", "scroll_depth", "hover_intent", "view", None]),
    value=st.none() | st.floats(min_value=0, max_value=100),
    scroll=st.none() | st.floats(min_value=0, max_value=100),
    hovers=st.none() | st.integers(min_value=0, max_value=5),
    google=st.booleans(),
    assisted=st.booleans(),
)
def test_lead_score_is_the_capped_sum_of_its_parts(
    category: str | None,
    action: str | None,
    value: float | None,
    scroll: float | None,
    hovers: int | None,
    google: bool,
    assisted: bool,
) -> None:
    kw: dict[str, Any] = {
        "category": category,
        "action": action,
        "value": value,
        "scroll_pct": scroll,
        "cta_hovers": hovers,
        "google_referrer": google,
    }
    score = lead_scores(**kw)[1 if assisted else 0]
    assert score == min(100, sum(points for _, points in score_parts(**kw, ads_assisted=assisted)))


def test_csrf_token_is_bound_to_the_session() -> None:
    a, b = "opsm_" + "a" * 43, "opsm_" + "b" * 43
    assert csrf_matches(a, csrf_token(a)) and not csrf_matches(b, csrf_token(a))
    assert not csrf_matches(a, None) and not csrf_matches(a, "")


def test_webhook_text_is_slack_compatible_plain_text() -> None:
    assert message_text(AlertEvent.RAISED, "3 BLOCKED") == "[OpsMantik ALERT] 3 BLOCKED"
    assert message_text(AlertEvent.RESOLVED, "3 BLOCKED", 125) == "[OpsMantik RESOLVED] 3 BLOCKED (open for 2 min)"
