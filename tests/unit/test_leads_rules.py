"""Pure rules of the leads package: score, click-id choice, order id, strict
body, transitions."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from opsmantik_stream.clickids import choose_click_id
from opsmantik_stream.enums import CallAction, CallStatus
from opsmantik_stream.leads.actions import ALLOWED_FROM
from opsmantik_stream.leads.call_events import CallEventBody, compute_lead_score, parse_client_value
from opsmantik_stream.leads.enqueue import order_id_for

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("conv", "inter", "max_score", "expected"),
    [(0, 0, 0, 0), (1, 2, 15, 45), (2, 3, 50, 100), (5, 5, 90, 100), (0, 1, -3, 5), (0, 0, 33.9, 33)],
)
def test_lead_score_formula(conv: int, inter: int, max_score: float, expected: int) -> None:
    score, breakdown = compute_lead_score(conv, inter, max_score)
    assert score == expected
    assert breakdown["final_score"] == expected
    assert breakdown["capped_at_100"] is (breakdown["raw_score"] > 100)


def test_click_id_precedence() -> None:
    assert choose_click_id("g", "w", "b") == ("gclid", "g")
    assert choose_click_id(None, "w", "b") == ("wbraid", "w")
    assert choose_click_id("  ", None, "b") == ("gbraid", "b")
    assert choose_click_id(None, "", None) is None


def test_order_id_is_deterministic_and_distinct_per_source() -> None:
    site, sale = uuid.uuid4(), uuid.uuid4()
    first = order_id_for(site, "sale", sale)
    assert first == order_id_for(str(site), "sale", str(sale))
    assert first != order_id_for(site, "call", sale)
    assert first != order_id_for(uuid.uuid4(), "sale", sale)
    assert first.startswith("om_") and len(first) == 35


def test_client_value_parsing() -> None:
    assert parse_client_value("12.5") == 12.5
    assert parse_client_value(3) == 3.0
    assert parse_client_value("nan") is None
    assert parse_client_value("abc") is None
    assert parse_client_value(None) is None


_EID = b'"event_id":"4b7ad0c6-5d0e-4a8e-9a65-3a6f2f9c1d10"'


def test_body_is_strict() -> None:
    ok = msgspec.json.decode(b'{"site_id":"a","fingerprint":"f","value":"9",' + _EID + b"}", type=CallEventBody)
    assert ok.value == "9"
    with pytest.raises(msgspec.ValidationError, match="consent"):
        msgspec.json.decode(
            b'{"site_id":"a","fingerprint":"f","consent":["analytics"],' + _EID + b"}", type=CallEventBody
        )
    # event_id is required: a retry signed again must be recognised as the same call
    with pytest.raises(msgspec.ValidationError, match="event_id"):
        msgspec.json.decode(b'{"site_id":"a","fingerprint":"f"}', type=CallEventBody)
    # PostgreSQL text cannot hold NUL: refused here rather than failing in the partition
    with pytest.raises(msgspec.ValidationError, match="fingerprint"):
        msgspec.json.decode(b'{"site_id":"a","fingerprint":"f\u0000",' + _EID + b"}", type=CallEventBody)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"site_id":"a","fingerprint":""}', type=CallEventBody)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"site_id":"a","fingerprint":"f","event_id":"not-a-uuid"}', type=CallEventBody)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"site_id":"a","fingerprint":"' + b"x" * 129 + b'"}', type=CallEventBody)


def test_transitions_are_guarded() -> None:
    assert CallStatus.CONFIRMED not in ALLOWED_FROM[CallAction.SEAL]
    assert CallStatus.JUNK not in ALLOWED_FROM[CallAction.SEAL]
    assert CallStatus.INTENT not in ALLOWED_FROM[CallAction.RESTORE]
