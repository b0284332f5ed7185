"""Tables for the pure ingest rules: idempotency keys, billable classification, quota,
attribution, traffic source, lead score, body decoding, origins, ip truncation and the token
bucket (phone and WhatsApp targets: test_targets.py)."""

from __future__ import annotations

import datetime as dt
import hashlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsmantik_stream.ingest import attribution as attr
from opsmantik_stream.ingest.admission import TokenBucketLimiter, client_net, origin_allowed, truncate_ip
from opsmantik_stream.ingest.billing import classify_billable, seconds_to_next_month, year_month
from opsmantik_stream.ingest.intents import detect_intent, intent_target
from opsmantik_stream.ingest.keys import EventKind, event_kind, idempotency_key, time_component
from opsmantik_stream.ingest.schema import BodyError, MetaIn, consent_scopes, decode_body
from opsmantik_stream.ingest.scoring import lead_scores, score_parts

pytestmark = pytest.mark.unit

SITE = "5f0c9a52-3c1e-4d0e-9a7b-0c61d1f0a4e2"


def key(server_ms: int, **kw: object) -> str:
    args: dict[str, object] = {
        "eid": None,
        "ec": "interaction",
        "ea": "view",
        "el": "Home",
        "url": "https://shop.example.com/",
        "fp": "fp1",
        "sid": None,
    }
    args.update(kw)
    return idempotency_key(SITE, server_ms=server_ms, **args)[0]  # type: ignore[arg-type]


# ---------------------------------------------------------------- idempotency keys


def test_eid_key_is_sha256_of_site_eid_and_ignores_time_and_content() -> None:
    k, version = idempotency_key(SITE, eid="e-1", ec="x", ea="y", el=None, url="u", fp=None, sid=None, server_ms=1)
    assert k == hashlib.sha256(f"{SITE}|eid|e-1".encode()).hexdigest()
    assert version == 2
    assert key(10**12, eid="e-1") == key(10**12 + 86_400_000, eid="e-1", el="other", url="elsewhere")
    assert key(0, eid="e-1") != key(0, eid="e-2")


@pytest.mark.parametrize(
    ("ec", "ea", "kind"),
    [
        ("system", "heartbeat", EventKind.HEARTBEAT),
        ("interaction", "view", EventKind.PAGE_VIEW),
        ("page", "", EventKind.PAGE_VIEW),
        ("", "page_view", EventKind.PAGE_VIEW),
        ("conversion", "phone_call", EventKind.CLICK),
        ("conversion", "whatsapp", EventKind.CLICK),
        ("conversion", "form_submit", EventKind.CLICK),
        ("interaction", "click", EventKind.CLICK),
        ("interaction", "scroll_depth", EventKind.OTHER),
        ("custom", "thing", EventKind.OTHER),
    ],
)
def test_event_kind(ec: str, ea: str, kind: EventKind) -> None:
    assert event_kind(ec, ea) is kind


@pytest.mark.parametrize(
    ("ec", "ea", "same_after_ms", "new_after_ms"),
    [
        ("system", "heartbeat", 9_999, 10_000),  # 10 s bucket
        ("interaction", "view", 1_999, 2_000),  # 2 s bucket
        ("interaction", "scroll_depth", 1_999, 2_000),  # other: 2 s bucket
        ("conversion", "phone_call", 0, 1),  # clicks: the exact millisecond
    ],
)
def test_content_key_time_buckets(ec: str, ea: str, same_after_ms: int, new_after_ms: int) -> None:
    start = 1_700_000_000_000  # a multiple of 10 s
    assert start % 10_000 == 0
    assert key(start, ec=ec, ea=ea) == key(start + same_after_ms, ec=ec, ea=ea)
    assert key(start, ec=ec, ea=ea) != key(start + new_after_ms, ec=ec, ea=ea)


def test_content_key_parts() -> None:
    base = key(1_700_000_000_000)
    assert len(base) == 64 and base == base.lower()
    assert base != key(1_700_000_000_000, ea="other")
    assert base != key(1_700_000_000_000, url="https://shop.example.com/b")
    assert base != key(1_700_000_000_000, fp="fp2")
    # no fingerprint: the session id stands in for it
    assert key(1_700_000_000_000, fp=None, sid="s1") == key(1_700_000_000_000, fp="s1")
    # the parts cannot run into each other
    assert key(1_700_000_000_000, ec="a|b", ea="c") != key(1_700_000_000_000, ec="a", ea="b|c")
    assert idempotency_key(SITE, eid=None, ec="a", ea="b", el=None, url="u", fp=None, sid=None, server_ms=0)[1] == 1


def test_time_component() -> None:
    assert time_component(EventKind.HEARTBEAT, 1_700_000_012_345) == 1_700_000_010_000
    assert time_component(EventKind.PAGE_VIEW, 1_700_000_013_999) == 1_700_000_012_000
    assert time_component(EventKind.CLICK, 1_700_000_013_999) == 1_700_000_013_999


# ---------------------------------------------------------------- billable


@pytest.mark.parametrize(
    ("ec", "ea", "billable", "reason"),
    [
        ("conversion", "phone_call", True, "conversion"),
        ("conversion", "anything", True, "conversion"),
        ("interaction", "view", True, "interaction_view"),
        ("page", "page_view", True, "interaction_view"),
        ("interaction", "scroll_depth", False, "scroll_depth"),
        ("system", "heartbeat", False, "system"),
        ("system", "session_end", False, "system"),
        ("interaction", "hover_intent", True, "default_billable"),
        ("custom", "whatever", True, "default_billable"),
        (None, None, True, "default_billable"),
    ],
)
def test_billable_classification(ec: str | None, ea: str | None, billable: bool, reason: str) -> None:
    assert classify_billable(ec, ea) == (billable, reason)


# ---------------------------------------------------------------- quota
# (the quota decision lives in SQL next to the locked usage: tests/integration/test_ingest_store.py)


@pytest.mark.parametrize(
    ("now", "seconds"),
    [
        (dt.datetime(2026, 1, 31, 23, 59, 59, tzinfo=dt.UTC), 1),
        (dt.datetime(2026, 12, 31, 0, 0, 0, tzinfo=dt.UTC), 86_400),
        (dt.datetime(2026, 2, 1, 0, 0, 0, tzinfo=dt.UTC), 28 * 86_400),
        (dt.datetime(2026, 3, 31, 23, 59, 59, 500_000, tzinfo=dt.UTC), 1),
    ],
)
def test_retry_after_is_the_next_utc_month(now: dt.datetime, seconds: int) -> None:
    assert seconds_to_next_month(now) == seconds
    assert 0 < seconds_to_next_month(now) <= 32 * 86_400


def test_year_month_is_utc() -> None:
    istanbul = dt.timezone(dt.timedelta(hours=3))
    assert year_month(dt.datetime(2026, 3, 1, 1, 0, tzinfo=istanbul)) == "2026-02"


# ---------------------------------------------------------------- attribution and traffic


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://s.com/?gclid=G1&utm_source=google", {"gclid": "G1", "utm_source": "google"}),
        ("https://s.com/#/offer?gclid=G2", {"gclid": "G2"}),
        ("https://s.com/?gclid=Q#?gclid=H", {"gclid": "H"}),
        ("https://s.com/#4?utm_term=shoes&matchtype=e", {"utm_term": "shoes", "matchtype": "e"}),
        ("https://s.com/#section", {}),
        ("", {}),
    ],
)
def test_url_params(url: str, expected: dict[str, str]) -> None:
    assert attr.url_params(url) == expected


def test_click_ids_url_first_then_meta_and_junk_ignored() -> None:
    ids = attr.click_ids({"gclid": "URLG"}, {"gclid": "METAG", "wbraid": "W1", "gbraid": "null", "fbclid": "F"})
    assert (ids.gclid, ids.wbraid, ids.gbraid) == ("URLG", "W1", None)
    assert ids.other == {"fbclid": "F"}
    assert ids.best() == ("URLG", "gclid")
    assert attr.ClickIds(wbraid="W", gbraid="B").best() == ("W", "wbraid")
    assert attr.ClickIds(gbraid="B").best() == ("B", "gbraid")
    assert attr.ClickIds().best() == (None, None)


_URL_PARTS = st.sampled_from(
    [
        "gclid=G1",
        "wbraid=W",
        "gbraid=null",
        "fbclid=F",
        "utm_source=google",
        "utm_medium=cpc",
        "matchtype=e",
        "utm_campaign=%20spring%20",
        "x=1",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    query=st.lists(_URL_PARTS, max_size=4),
    fragment=st.lists(_URL_PARTS, max_size=2),
    meta=st.fixed_dictionaries(
        {},
        optional={
            k: st.sampled_from(["M", " m2 ", "undefined"]) for k in ("gclid", "gbraid", "utm_source", "matchtype")
        },
    ),
)
def test_url_attribution_is_the_two_look_ups_memoised_or_not(
    query: list[str], fragment: list[str], meta: dict[str, str]
) -> None:
    # the memo by URL (meta without click ids or UTMs) and the direct path answer alike
    url = "https://shop.example.com/p" + ("?" + "&".join(query) if query else "")
    url += "#/offer?" + "&".join(fragment) if fragment else ""
    for m in (msgspec.convert({"fp": "f", **meta}, MetaIn), MetaIn(fp="f"), None):
        params = attr.url_params(url)
        ids, utm = attr.url_attribution(url, m)
        assert ids == attr.click_ids(params, m)
        assert dict(utm) == attr.template_params(params, m)


@pytest.mark.parametrize(
    ("ids", "medium", "ref", "earlier", "expected"),
    [
        (attr.ClickIds(gclid="G"), None, None, False, "First Click (Paid)"),
        (attr.ClickIds(gclid="G"), "email", "www.google.com", True, "First Click (Paid)"),
        (attr.ClickIds(wbraid="W"), None, None, False, "First Click (Paid)"),
        (attr.ClickIds(), "CPC", None, False, "Paid (UTM)"),
        (attr.ClickIds(), "ppc", None, False, "Paid (UTM)"),
        (attr.ClickIds(), "paid", "www.google.com", True, "Paid (UTM)"),
        (attr.ClickIds(), None, "www.google.com.tr", True, "Ads Assisted"),
        (attr.ClickIds(), None, "www.google.com", False, "Organic"),
        (attr.ClickIds(), None, "bing.com", True, "Organic"),
        (attr.ClickIds(), None, "l.facebook.com", False, "Social"),
        (attr.ClickIds(), None, "x.com", False, "Social"),
        (attr.ClickIds(), None, "box.com", False, "Organic"),
        (attr.ClickIds(), None, None, True, "Organic"),
    ],
)
def test_attribution_first_match(
    ids: attr.ClickIds, medium: str | None, ref: str | None, earlier: bool, expected: str
) -> None:
    assert attr.attribution_source(ids, medium, ref, earlier_click_on_site=earlier) == expected


@pytest.mark.parametrize(
    ("ids", "utm", "ref", "expected"),
    [
        (attr.ClickIds(gbraid="B"), {}, None, ("Google Ads", "cpc")),
        (attr.ClickIds(other={"gclsrc": "aw.ds"}), {}, None, ("Google Ads", "cpc")),
        (attr.ClickIds(other={"fbclid": "F"}), {}, None, ("Meta Ads", "cpc")),
        (attr.ClickIds(other={"ttclid": "T"}), {}, None, ("TikTok Ads", "cpc")),
        (attr.ClickIds(other={"msclkid": "M"}), {}, None, ("Microsoft Ads", "cpc")),
        (attr.ClickIds(), {"utm_medium": "paid_social", "utm_source": "insta"}, None, ("insta", "cpc")),
        (attr.ClickIds(), {"utm_medium": "cpc"}, None, ("Paid", "cpc")),
        (attr.ClickIds(), {}, "www.google.com", ("SEO", "organic")),
        (attr.ClickIds(), {}, "duckduckgo.com", ("SEO", "organic")),
        (attr.ClickIds(), {}, "m.facebook.com", ("Facebook", "social")),
        (attr.ClickIds(), {}, "t.co", ("X", "social")),
        (attr.ClickIds(), {}, "blog.example.org", ("Referral", "referral")),
        (attr.ClickIds(), {}, None, ("Direct", "direct")),
        (attr.ClickIds(), {"utm_source": "newsletter", "utm_medium": "email"}, None, ("newsletter", "email")),
        (attr.ClickIds(), {"utm_campaign": "spring"}, "mail.example.com", ("Tagged", "unknown")),
    ],
)
def test_traffic_source(ids: attr.ClickIds, utm: dict[str, str], ref: str | None, expected: tuple[str, str]) -> None:
    assert attr.traffic_source(ids, utm, ref) == expected


def test_referrer_of_the_same_host_is_no_referrer() -> None:
    assert attr.referrer_host("https://shop.example.com/a", "https://shop.example.com/b") is None
    assert attr.referrer_host("https://www.google.com/search?q=x", "https://shop.example.com/") == "www.google.com"
    assert attr.referrer_host("", "https://shop.example.com/") is None


@pytest.mark.parametrize(
    ("ua", "param", "expected"),
    [
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 "
            "Mobile/15E148 Safari/604.1",
            None,
            ("mobile", "iOS", "Safari"),
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36",
            None,
            ("mobile", "Android", "Chrome"),
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36 Edg/126.0",
            None,
            ("desktop", "Windows", "Edge"),
        ),
        ("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X)", None, ("tablet", "iOS", "Unknown")),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            "m",
            ("mobile", "Linux", "Firefox"),
        ),
    ],
)
def test_parse_device(ua: str, param: str | None, expected: tuple[str, str, str]) -> None:
    d = attr.parse_device(ua, param)
    assert (d.device_type, d.os, d.browser) == expected


# ---------------------------------------------------------------- lead score


@pytest.mark.parametrize(
    ("kw", "score"),
    [
        ({"category": "conversion"}, 50),
        ({"category": "interaction"}, 10),
        ({"category": "system"}, 0),
        ({"category": "interaction", "action": "scroll_depth", "value": 50}, 20),
        ({"category": "interaction", "action": "scroll_depth", "value": 90}, 40),
        ({"category": "interaction", "action": "scroll_depth", "value": 49}, 10),
        ({"category": "conversion", "scroll_pct": 95}, 80),
        ({"category": "interaction", "action": "hover_intent"}, 25),
        ({"category": "conversion", "cta_hovers": 2}, 65),
        ({"category": "interaction", "google_referrer": True}, 15),
        ({"category": "interaction", "ads_assisted": True}, 35),
        (
            {
                "category": "conversion",
                "scroll_pct": 100,
                "cta_hovers": 1,
                "google_referrer": True,
                "ads_assisted": True,
            },
            100,
        ),
    ],
)
def test_lead_score(kw: dict[str, object], score: int) -> None:
    args: dict[str, object] = {
        "category": None,
        "action": None,
        "value": None,
        "scroll_pct": None,
        "cta_hovers": None,
        "google_referrer": False,
        "ads_assisted": False,
    }
    args.update(kw)
    assisted = args.pop("ads_assisted")
    assert lead_scores(**args)[1 if assisted else 0] == score  # type: ignore[arg-type]


@given(
    category=st.sampled_from([None, "conversion", "interaction", "page", " Interaction "]),
    action=st.sampled_from([None, "view", "scroll_depth", "hover_intent"]),
    value=st.one_of(st.none(), st.floats(min_value=-10, max_value=200)),
    scroll_pct=st.one_of(st.none(), st.floats(min_value=0, max_value=100)),
    cta_hovers=st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
    google_referrer=st.booleans(),
)
def test_both_lead_scores_are_the_capped_sums_of_their_parts(**kw: object) -> None:
    def capped(assisted: bool) -> int:
        return max(0, min(100, sum(points for _, points in score_parts(**kw, ads_assisted=assisted))))  # type: ignore[arg-type, misc]

    assert lead_scores(**kw) == (capped(False), capped(True))  # type: ignore[arg-type]


# ---------------------------------------------------------------- intents and targets


@pytest.mark.parametrize(
    ("ec", "ea", "el", "meta_action", "expected"),
    [
        ("conversion", "phone_call", "tel:1", None, "phone"),
        ("conversion", "click", "tel:0532", None, "phone"),
        ("conversion", "whatsapp", "https://wa.me/90532", None, "whatsapp"),
        ("conversion", "click", "https://chat.whatsapp.com/X", None, "whatsapp"),
        ("conversion", "custom", "x", "wa_click", "whatsapp"),
        ("conversion", "form_submit", "contact", None, "form"),
        ("interaction", "view", "Call us: tel:123", None, None),
        ("system", "heartbeat", None, None, None),
        ("interaction", "tel_click", None, None, "phone"),
    ],
)
def test_detect_intent(ec: str, ea: str, el: str | None, meta_action: str | None, expected: str | None) -> None:
    got = detect_intent(ec, ea, el, meta_action)
    assert (got.value if got else None) == expected


def test_intent_targets() -> None:
    from opsmantik_stream.enums import IntentAction

    assert intent_target(IntentAction.PHONE, "tel:0532 123 45 67", None) == "tel:+905321234567"
    assert intent_target(IntentAction.PHONE, "Call now", "05321234567") == "tel:+905321234567"
    assert intent_target(IntentAction.WHATSAPP, "https://wa.me/905321234567", None) == "wa:+905321234567"
    assert intent_target(IntentAction.FORM, "contact-form", None) == "form:contact-form"
    assert intent_target(IntentAction.FORM, None, None) == "form:form"


# ---------------------------------------------------------------- body decoding


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{", 400, "invalid_json"),
        (b"[]", 422, "validation_error:body"),
        (b'"x"', 422, "validation_error:body"),
        (b'{"u": "https://a"}', 422, "validation_error:s"),
        (b'{"s": "abc"}', 422, "validation_error:u"),
        (b'{"s": "abc", "u": "https://a", "el": 5}', 422, "validation_error:el"),
        (b'{"s": "abc", "u": "https://a", "el": "' + b"x" * 513 + b'"}', 422, "validation_error:el"),
        (b'{"s": "abc", "u": "' + b"x" * 4097 + b'"}', 422, "validation_error:u"),
        (b'{"s": "abc", "u": "https://a", "meta": []}', 422, "validation_error:meta"),
        (b'{"s": "abc", "u": "https://a", "meta": {"sw": "wide"}}', 422, "validation_error:meta.sw"),
        (b'{"events": []}', 422, "validation_error:events"),
        (b'{"events": [{"s": "a", "u": "b"}, {"s": "a"}]}', 422, "validation_error:events.1.u"),
        (b'{"events": [{"s": "a", "u": "b", "r": 1}]}', 422, "validation_error:events.0.r"),
    ],
)
def test_decode_rejects(body: bytes, status: int, code: str) -> None:
    with pytest.raises(BodyError) as info:
        decode_body(body)
    assert (info.value.status, info.value.code) == (status, code)


def test_decode_accepts_single_batch_and_top_level_site() -> None:
    env, events = decode_body(b'{"s":"abc","u":"https://a","ev":"12.5","ts":1,"sm":"2020-01-01"}')
    assert env.events is None and len(events) == 1 and events[0].ev == "12.5"
    ev = b'{"u":"https://a"}'
    env, events = decode_body(b'{"s":"abc","events":[' + b",".join([ev] * 100) + b"]}")
    assert len(events) == 100
    with pytest.raises(BodyError):
        decode_body(b'{"s":"abc","events":[' + b",".join([ev] * 101) + b"]}")


@pytest.mark.parametrize(
    ("body", "scopes"),
    [
        (b'{"s":"a","u":"b","consent":["Analytics","marketing"]}', ["analytics", "marketing"]),
        (b'{"s":"a","u":"b","consent":"analytics, marketing"}', ["analytics", "marketing"]),
        (b'{"s":"a","u":"b","consent_scopes":["analytics"]}', ["analytics"]),
        (b'{"s":"a","u":"b","meta":{"consent_scopes":["analytics"]}}', ["analytics"]),
        (b'{"s":"a","u":"b"}', []),
    ],
)
def test_consent_scopes(body: bytes, scopes: list[str]) -> None:
    assert consent_scopes(decode_body(body)[1][0]) == scopes


def test_meta_is_typed_unknown_keys_are_dropped_and_nesting_is_refused() -> None:
    _, [ev] = decode_body(b'{"s":"a","u":"b","meta":{"fp":"x","sw":"1920","whatever":{"a":[1,2,{"b":3}]}}}')
    assert ev.meta is not None and (ev.meta.fp, ev.meta.sw) == ("x", 1920)
    assert not hasattr(ev.meta, "whatever")
    deep = b'{"s":"a","u":"b","meta":{"junk":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    with pytest.raises(BodyError) as info:
        decode_body(deep)
    assert (info.value.status, info.value.code) == (400, "invalid_json")
    with pytest.raises(BodyError) as info:
        decode_body(b'{"s":"a","u":"b","meta":{"city":"' + b"x" * 129 + b'"}}')
    assert info.value.code == "validation_error:meta.city"
    with pytest.raises(BodyError) as info:
        decode_body(b'{"s":"a","u":"b","meta":{"fp":{"nested":1}}}')
    assert info.value.code == "validation_error:meta.fp"


def test_nul_characters_are_stripped_everywhere() -> None:
    _, [ev] = decode_body(b'{"s":"a","u":"b\\u0000c","el":"x\\u0000","meta":{"fp":"f\\u0000p","lan":"tr"}}')
    assert (ev.u, ev.el) == ("bc", "x")
    assert ev.meta is not None and (ev.meta.fp, ev.meta.lan) == ("fp", "tr")


@pytest.mark.parametrize(
    ("ip", "client"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        (None, "unknown"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_rate_limit_client_is_the_address_or_the_ipv6_64(ip: str | None, client: str) -> None:
    assert client_net(ip) == client


# ---------------------------------------------------------------- admission


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://shop.example.com", True),
        ("https://SHOP.example.com/", True),
        ("https://m.shop.example.com", True),
        ("https://a.b.shop.example.com", True),
        ("https://evilshop.example.com", False),
        ("https://shop.example.com.evil.io", False),
        ("http://shop.example.com", False),
        ("https://shop.example.com:8443", False),
        ("https://shop.example.com:443", True),
        ("http://127.0.0.1:5000", True),
        ("http://127.0.0.1:5001", False),
        ("null", False),
        ("", False),
    ],
)
def test_origin_allowed(origin: str, allowed: bool) -> None:
    assert origin_allowed(origin, ["https://shop.example.com", "http://127.0.0.1:5000"]) is allowed


@pytest.mark.parametrize(
    ("ip", "stored"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:1234:5678::1", "2001:db8:1234::"),
        ("::ffff:198.51.100.9", "198.51.100.0"),
        ("not-an-ip", None),
        (None, None),
    ],
)
def test_truncate_ip(ip: str | None, stored: str | None) -> None:
    assert truncate_ip(ip) == stored


def test_token_bucket() -> None:
    now = [1000.0]
    limiter = TokenBucketLimiter(clock=lambda: now[0])
    assert [limiter.take("a", 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a", 3)
    assert wait == pytest.approx(20.0)  # one token per 20 s at 3/min
    assert TokenBucketLimiter.retry_after(wait) == 20
    assert limiter.take("b", 3) == 0.0  # another client has its own bucket
    now[0] += 20.0
    assert limiter.take("a", 3) == 0.0
    assert limiter.take("a", 3) > 0


def test_per_event_structs_stay_out_of_the_cycle_collector() -> None:
    """What a partition allocates per event is never tracked by Python's cyclic GC: tracked,
    these objects set off a collection every few hundred events (see schema.py)."""
    import gc

    from opsmantik_stream.ingest.schema import WireEvent, WireResult, decode_results, decode_wire, encode_results
    from opsmantik_stream.ingest.store import prepare

    body = (
        b'{"s":"site-1","events":[{"u":"https://shop.example.com/p?gclid=abc","eid":"e1","sid":"s1",'
        b'"ec":"interaction","ea":"view","consent":["analytics"],"meta":{"fp":"f1","sw":1920}}]}'
    )
    _, [event_in] = decode_body(body)
    wire = WireEvent.build(
        event_in, site_id="site-1", received_ms=1_700_000_000_000, scopes=["analytics"], ip=None, ua=None
    )
    [decoded] = decode_wire(msgspec.msgpack.encode([wire]))  # as the partition receives it
    row = prepare(decoded, 1, dt.date(2026, 12, 4))
    [result] = decode_results(encode_results([WireResult(status="accepted", ingest_id=row.key)]))
    objects = {
        "EventIn": event_in,
        "WireEvent": decoded,
        "MetaIn": decoded.meta,
        "BatchEvent": row,
        "WireResult": result,
    }
    assert decoded.consent == ["analytics"] and row.consent == "analytics"  # a list inside
    assert [name for name, obj in objects.items() if gc.is_tracked(obj)] == []
