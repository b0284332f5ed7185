"""Issue 18: every bounded in-memory structure holds its bound when the key space is far larger.

The memos are filled through the public functions with three times their bound of distinct
keys; the limiters with a hundred times theirs. The gateway's caches and the batcher's queue
are tested on a real stack in tests/integration/test_bounds.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest

from gateway.limits import KeyedLimit
from opsmantik_stream import bounds, routing
from opsmantik_stream.ingest import admission, attribution, schema, scoring, store
from opsmantik_stream.ingest.schema import MetaIn, WireEvent


@pytest.fixture(autouse=True)
def _fresh_memos() -> Iterator[None]:
    for fn in bounds.lru_caches().values():
        fn.cache_clear()
    yield
    for fn in bounds.lru_caches().values():
        fn.cache_clear()


def test_every_memo_is_listed_with_its_named_bound() -> None:
    report = bounds.lru_report()
    assert report["attribution.url_params"] == (0, attribution.URL_MEMO_SIZE)
    assert report["attribution.url_attribution"] == (0, attribution.URL_MEMO_SIZE)
    assert report["attribution.host_of"] == (0, attribution.URL_MEMO_SIZE)
    for name in ("is_google", "social_platform", "is_search"):
        assert report[f"attribution.{name}"] == (0, attribution.HOST_MEMO_SIZE)
    assert report["attribution.parse_device"] == (0, attribution.DEVICE_MEMO_SIZE)
    assert report["admission.truncate_ip"] == (0, admission.ADDRESS_MEMO_SIZE)
    assert report["admission.client_net"] == (0, admission.ADDRESS_MEMO_SIZE)
    assert report["routing.partition_for"] == (0, routing.ROUTING_MEMO_SIZE)
    assert report["store.derived_session_id"] == (0, store.DERIVED_ID_MEMO_SIZE)
    assert report["store.session_id"] == (0, store.DERIVED_ID_MEMO_SIZE)
    assert report["store.page_facts"] == (0, store.PAGE_MEMO_SIZE)
    assert report["store.event_rules"] == (0, store.EVENT_RULES_MEMO_SIZE)
    assert report["schema.consent_scopes"] == (0, schema.SCOPES_MEMO_SIZE)
    assert report["scoring.lead_scores"] == (0, scoring.SCORE_MEMO_SIZE)
    # no memo in the ingest path is unbounded
    assert all(bound > 0 for _n, bound in report.values())


def test_url_and_host_memos_hold_their_bound_against_unique_ad_click_urls() -> None:
    n = 3 * attribution.URL_MEMO_SIZE
    for i in range(n):
        url = f"https://shop.example.com/p/{i}?gclid=Cj0K{i:x}&utm_source=google"
        assert attribution.url_params(url)["gclid"] == f"Cj0K{i:x}"
        assert attribution.url_attribution(url, MetaIn(fp="x"))[0].gclid == f"Cj0K{i:x}"
        assert attribution.host_of(url) == "shop.example.com"
        assert attribution.referrer_host(f"https://r{i}.example.org/x", url) == f"r{i}.example.org"
    report = bounds.lru_report()
    assert report["attribution.url_params"] == (attribution.URL_MEMO_SIZE, attribution.URL_MEMO_SIZE)
    assert report["attribution.url_attribution"] == (attribution.URL_MEMO_SIZE, attribution.URL_MEMO_SIZE)
    assert report["attribution.host_of"] == (attribution.URL_MEMO_SIZE, attribution.URL_MEMO_SIZE)


def test_page_facts_hold_their_bound_and_skip_long_urls() -> None:
    import datetime as dt

    from opsmantik_stream.ingest.schema import WireEvent

    day = dt.date(2026, 12, 3)
    n = 3 * store.PAGE_MEMO_SIZE
    for i in range(n):
        ev = WireEvent(
            site_id="s", received_ms=1, url=f"https://shop.example.com/p/{i}?gclid=G{i}", referrer=f"https://r{i}.org/"
        )
        row = store.prepare(ev, 1, day)
        assert (row.gclid, row.ref) == (f"G{i}", f"r{i}.org")
    assert bounds.lru_report()["store.page_facts"] == (store.PAGE_MEMO_SIZE, store.PAGE_MEMO_SIZE)
    store._page_memo.cache_clear()
    long_url = "https://shop.example.com/p?gclid=abc&pad=" + "x" * 5000
    for _ in range(3):
        assert store.prepare(WireEvent(site_id="s", received_ms=1, url=long_url), 1, day).gclid == "abc"
    assert bounds.lru_report()["store.page_facts"][0] == 0


def test_score_memo_holds_its_bound() -> None:
    n = 3 * scoring.SCORE_MEMO_SIZE
    for i in range(n):
        depth = i % 100
        want = 10 + (10 if depth >= 50 else 0) + (20 if depth >= 90 else 0)  # interaction, scroll
        got = scoring.lead_scores(
            category="interaction",
            action="view",
            value=float(i),
            scroll_pct=depth,
            cta_hovers=None,
            google_referrer=False,
        )
        assert got == (want, want + 25)
    assert bounds.lru_report()["scoring.lead_scores"] == (scoring.SCORE_MEMO_SIZE, scoring.SCORE_MEMO_SIZE)


def test_long_urls_and_hosts_are_answered_but_never_memoised() -> None:
    long_url = "https://shop.example.com/p?gclid=abc&pad=" + "x" * 5000
    host = "h" * 1100 + ".google.com"
    for _ in range(3):
        assert attribution.url_params(long_url)["gclid"] == "abc"
        assert attribution.host_of(long_url) == "shop.example.com"
        assert attribution.is_google_host(host) is True
    report = bounds.lru_report()
    assert report["attribution.url_params"][0] == 0
    assert report["attribution.host_of"][0] == 0
    assert report["attribution.is_google"][0] == 0


def test_host_and_device_memos_hold_their_bound() -> None:
    n = 3 * attribution.HOST_MEMO_SIZE
    for i in range(n):
        host = f"www.site{i}.com"
        assert attribution.is_google_host(host) is False
        assert attribution.social_platform(host) is None
        assert attribution.traffic_source(attribution.ClickIds(), {}, host) == ("Referral", "referral")
        attribution.parse_device(f"Mozilla/5.0 (iPhone; build {i}) Mobile", None)
    report = bounds.lru_report()
    for name in ("is_google", "social_platform", "is_search"):
        assert report[f"attribution.{name}"] == (attribution.HOST_MEMO_SIZE, attribution.HOST_MEMO_SIZE)
    assert report["attribution.parse_device"] == (attribution.DEVICE_MEMO_SIZE, attribution.DEVICE_MEMO_SIZE)


def test_address_memos_hold_their_bound() -> None:
    n = 3 * admission.ADDRESS_MEMO_SIZE
    for i in range(n):
        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        assert admission.client_net(ip) == ip
        assert admission.truncate_ip(ip) == ip.rsplit(".", 1)[0] + ".0"
    report = bounds.lru_report()
    assert report["admission.client_net"] == (admission.ADDRESS_MEMO_SIZE, admission.ADDRESS_MEMO_SIZE)
    assert report["admission.truncate_ip"] == (admission.ADDRESS_MEMO_SIZE, admission.ADDRESS_MEMO_SIZE)


def test_routing_and_session_id_memos_hold_their_bound() -> None:
    day = dt.date(2026, 1, 1)
    site = str(uuid.uuid4())
    n = 3 * max(store.DERIVED_ID_MEMO_SIZE, routing.ROUTING_MEMO_SIZE)
    for i in range(n):
        routing.partition_for(f"{i:032x}", 2)
        # a client session id that is not a UUID gets a derived one (memoised)
        sid = store.session_uuid(site, f"visitor-{i}", None, day, "k")
        assert uuid.UUID(sid).version == 5
    report = bounds.lru_report()
    assert report["routing.partition_for"] == (routing.ROUTING_MEMO_SIZE, routing.ROUTING_MEMO_SIZE)
    assert report["store.derived_session_id"] == (store.DERIVED_ID_MEMO_SIZE, store.DERIVED_ID_MEMO_SIZE)
    assert report["store.session_id"] == (store.DERIVED_ID_MEMO_SIZE, store.DERIVED_ID_MEMO_SIZE)
    # the derived id does not depend on what the memo holds
    assert store.session_uuid(site, "visitor-0", None, day, "k") == store.session_uuid(
        site, "visitor-0", None, day, "x"
    )


def test_event_rule_and_consent_memos_hold_their_bound() -> None:
    day = dt.date(2026, 12, 4)
    n = 3 * store.EVENT_RULES_MEMO_SIZE
    for i in range(n):
        # a unique label per event (a phone number in a conversion's label, say)
        wire = WireEvent(
            str(uuid.uuid4()),
            1_764_800_000_000,
            "https://shop.example.com/",
            ec="conversion",
            ea="phone_call",
            el=f"tel:+90532{i:07d}",
        )
        row = store.prepare(wire, 1, day)
        assert (row.billable, row.reason, row.intent) == (True, "conversion", "phone")
    assert bounds.lru_report()["store.event_rules"] == (store.EVENT_RULES_MEMO_SIZE, store.EVENT_RULES_MEMO_SIZE)
    for i in range(3 * schema.SCOPES_MEMO_SIZE):
        ev = schema.EventIn(consent=[f"Scope{i}", "analytics", "analytics"])
        assert schema.consent_scopes(ev) == ["analytics", f"scope{i}"]
    assert bounds.lru_report()["schema.consent_scopes"] == (schema.SCOPES_MEMO_SIZE, schema.SCOPES_MEMO_SIZE)
    # a caller may change the list it got: the memo's value is not shared
    first = schema.consent_scopes(schema.EventIn(consent="analytics, ads"))
    first.append("changed")
    assert schema.consent_scopes(schema.EventIn(consent="analytics, ads")) == ["ads", "analytics"]


def test_ingest_rate_limiter_keeps_at_most_its_bound_and_drops_the_least_recently_used() -> None:
    assert admission.TokenBucketLimiter().max_keys == admission.LIMITER_MAX_KEYS
    now = [0.0]
    limiter = admission.TokenBucketLimiter(max_keys=100, clock=lambda: now[0])
    assert limiter.take(("site", "keep"), 60) == 0.0
    for i in range(10_000):  # a hundred times the bound of distinct clients
        now[0] += 0.001
        limiter.take(("site", f"10.0.{i >> 8}.{i & 255}"), 60)
        if i % 50 == 0:
            limiter.take(("site", "keep"), 60)  # a client that keeps sending keeps its bucket
        assert len(limiter) <= 100
    assert len(limiter) == 100
    assert ("site", "keep") in limiter._buckets
    # its tokens were spent (201 takes, 10 s of refill), not refilled by an eviction
    assert limiter._buckets[("site", "keep")][0] < 1.0


def test_route_limits_keep_at_most_their_bound() -> None:
    """The call-event and consent limits (gateway.limits) are the same bounded buckets."""
    now = [0.0]
    limit = KeyedLimit(10, clock=lambda: now[0])
    assert limit.bounded() == (0, admission.LIMITER_MAX_KEYS)
    limit._buckets._max_keys = 100  # the bound itself, made small enough to fill here
    for i in range(10_000):
        now[0] += 0.001
        limit.take(("site", f"fp-{i}"))
        assert limit.bounded()[0] <= 100
    assert limit.bounded() == (100, 100)


def test_a_serving_process_collects_its_young_objects_less_often() -> None:
    import gc

    before = gc.get_threshold()
    try:
        bounds.settle_heap()
        assert gc.get_threshold() == (bounds.GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0  # what was alive is out of the collector's walks
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
