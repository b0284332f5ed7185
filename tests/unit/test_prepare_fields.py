"""``prepare`` builds a ``BatchEvent`` by position (63 fields, keyword arguments were a sixth
of its time): every field must still hold what its name says. Events whose values are all
different from each other, so a value in the wrong place shows up under another name."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from opsmantik_stream.ingest.schema import MetaIn, WireEvent, clean_text, decode_body
from opsmantik_stream.ingest.store import SESSION_TEMPLATE_KEYS, BatchEvent, event_row_id, prepare

SITE = str(uuid.uuid4())
SID = str(uuid.uuid4())
DAY = dt.date(2026, 12, 3)
TEMPLATE = {key: f"{key}-value" for key in SESSION_TEMPLATE_KEYS}


def rich_event(*, url_params: bool, referrer: str = "https://www.google.com.tr/search") -> WireEvent:
    query = "&".join(f"{k}={v}" for k, v in TEMPLATE.items()) + "&fbclid=fb-1"
    meta = MetaIn(
        fp="fp-rich",
        lan="tr-TR",
        sw=1280,
        sh=720,
        city="Izmir",
        district="Konak",
        exit_page="https://shop.example.com/exit",
        duration_sec=41,
        active_sec=17,
        scroll_pct=55.0,
        cta_hovers=2,
        focus_dur=9,
        **({} if url_params else {k: v for k, v in TEMPLATE.items()}),
    )
    return WireEvent(
        site_id=SITE,
        received_ms=1_764_720_000_123,
        url="https://shop.example.com/offer" + (f"?{query}" if url_params else ""),
        eid="eid-rich",
        sid=SID,
        ec="conversion",
        ea="phone_call",
        el="tel:+905321112233",
        ev=3.5,
        referrer=referrer,
        consent=["analytics", "marketing"],
        meta=meta,
        ip="203.0.113.0",
        ua="Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148 Safari/604.1",
    )


@pytest.mark.parametrize("url_params", [True, False], ids=["template-in-url", "template-in-meta"])
def test_every_field_holds_what_its_name_says(url_params: bool) -> None:
    row = prepare(rich_event(url_params=url_params), 7, DAY)
    assert isinstance(row, BatchEvent)
    got = {name: getattr(row, name) for name in row.__struct_fields__}
    assert got["i"] == 7
    assert got["site"] == SITE
    assert len(got["key"]) == 64 and got["ver"] in (1, 2)
    assert got["billable"] is True and got["reason"] == "conversion"
    assert (got["lc"], got["la"], got["ll"]) == ("conversion", "phone_call", "tel:+905321112233")
    assert got["at_ms"] == 1_764_720_000_123
    assert got["hb"] is False
    assert got["sid"] == SID and got["alt"] != SID
    assert got["consent"] == "analytics,marketing" and got["consent_set"] is False  # joined (migration 0016)
    assert got["ip"] == "203.0.113.0"
    assert got["url"].startswith("https://shop.example.com/offer")
    assert got["exit_page"] == "https://shop.example.com/exit"
    assert got["ref"] == "www.google.com.tr"
    assert (got["gclid"], got["wbraid"], got["gbraid"]) == (None, None, None)
    if url_params:
        assert json.loads(got["other"]) == {"fbclid": "fb-1"}
    else:
        assert got["other"] is None
    for key in SESSION_TEMPLATE_KEYS:
        assert got[key] == TEMPLATE[key], key
    assert (got["device_type"], got["device_os"], got["browser"]) == ("mobile", "iOS", "Safari")
    assert (got["lan"], got["sw"], got["sh"]) == ("tr-TR", 1280, 720)
    assert (got["city"], got["district"], got["fp"]) == ("Izmir", "Konak", "fp-rich")
    assert got["src"] and got["medium"]
    assert (got["dur"], got["active"], got["scroll"], got["cta"]) == (41, 17, 55, 2)
    assert got["ev"] == 3.5
    assert got["intent"] == "phone" and got["target"] == "tel:+905321112233"
    assert got["phone"] == "+905321112233"
    assert got["page"] == got["url"]
    assert (got["click_id"], got["click_type"]) == (None, None)
    meta = json.loads(got["meta"])
    assert meta["eid"] == "eid-rich" and meta["lead_score"] == got["score"]
    assert meta["attribution_source"] == got["attr"]
    assert meta["focus_dur"] == 9 and meta["duration_sec"] == 41
    assert got["hint"] is None and got["nth"] is None and got["srank"] is None  # the store's, just before sending
    # the event row's id: the receive time, version 7, then the key's first 18 hex digits
    row_id = uuid.UUID(got["row_id"])
    assert row_id.version == 7 and row_id.variant == uuid.RFC_4122
    assert row_id.int >> 80 == got["at_ms"]
    assert row_id.hex[13:16] + row_id.hex[17:32] == got["key"][:18]


def test_scores_and_attribution_with_and_without_an_earlier_click() -> None:
    # a Google-referred conversion without a click id: both variants travel, the database picks
    row = prepare(rich_event(url_params=False, referrer="https://www.google.com/"), 1, DAY)
    assert row.assist is True
    assert row.attr == "Organic" and row.attr_a == "Ads Assisted"
    assert row.score_a is not None and row.score_a == min(100, row.score + 25)
    # a click id in the URL decides alone: nothing to replace
    clicked = WireEvent(site_id=SITE, received_ms=1, url="https://shop.example.com/?gclid=G-1", sid=SID)
    row = prepare(clicked, 1, DAY)
    assert (row.gclid, row.click_id, row.click_type) == ("G-1", "G-1", "gclid")
    assert row.assist is False and row.attr_a is None and row.score_a is None
    assert row.attr == "First Click (Paid)" and (row.src, row.medium) == ("Google Ads", "cpc")


def test_the_gateway_builds_the_wire_event_field_by_field() -> None:
    # WireEvent.build is positional too (the gateway runs it for every event); its input comes
    # from decode_body, which has removed an escaped NUL already
    body = (
        b'{"s":"pub-1","u":" https://shop.example.com/u ","eid":" e-1 ","sid":"s-1","ec":"interaction","ea":"click",'
        b'"el":"buy\\u0000 now","ev":"4.5","r":"https://ref.example.org/","meta":{"fp":"fp-9"}}'
    )
    _, [sent] = decode_body(body)
    ev = WireEvent.build(sent, SITE, 99, ["analytics"], "198.51.100.0", clean_text(" UA/1\x00 "))
    assert (ev.site_id, ev.received_ms, ev.url) == (SITE, 99, "https://shop.example.com/u")
    assert (ev.eid, ev.sid, ev.ec, ev.ea, ev.el) == ("e-1", "s-1", "interaction", "click", "buy now")
    assert ev.ev == 4.5 and ev.referrer == "https://ref.example.org/"
    assert ev.consent == ["analytics"] and ev.meta.fp == "fp-9"
    assert (ev.ip, ev.ua) == ("198.51.100.0", "UA/1")


def test_event_row_ids_grow_with_the_receive_time_and_stay_per_event() -> None:
    key_a, key_b = "f" * 64, "0" * 64
    # a later millisecond sorts after, whatever the keys
    assert uuid.UUID(event_row_id(1_000, key_a)) < uuid.UUID(event_row_id(1_001, key_b))
    # the same event (receive time and key) gets the same id on every attempt; another key another id
    assert event_row_id(1_000, key_a) == event_row_id(1_000, key_a) != event_row_id(1_000, key_b)
    # the time takes the first 48 bits as long as it fits them (until the year 10889)
    assert uuid.UUID(event_row_id(2**48 - 1, key_b)).int >> 80 == 2**48 - 1
