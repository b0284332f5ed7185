"""Click ids, UTM/template parameters, attribution, traffic source and device (SPEC.md §3
steps 4-5). Pure functions over plain values; the partition supplies the one fact that
needs the database: whether an earlier session of the same fingerprint *on the same site*
carried a click id."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from operator import attrgetter
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec

from opsmantik_stream.clickids import CLICK_ID_PRECEDENCE, best_click_id

__all__ = [
    "CLICK_ID_KEYS",
    "GOOGLE_CLICK_IDS",
    "SESSION_TEMPLATE_KEYS",
    "TEMPLATE_KEYS",
    "Attribution",
    "ClickIds",
    "Device",
    "attribution_pair",
    "attribution_source",
    "carries_url_keys",
    "click_ids",
    "host_of",
    "is_google_host",
    "parse_device",
    "referrer_host",
    "template_params",
    "traffic_source",
    "url_attribution",
    "url_params",
]

GOOGLE_CLICK_IDS = CLICK_ID_PRECEDENCE
OTHER_CLICK_IDS = ("gclsrc", "dclid", "fbclid", "ttclid", "msclkid")
CLICK_ID_KEYS = GOOGLE_CLICK_IDS + OTHER_CLICK_IDS

# UTM and Google Ads ValueTrack parameters that have a session column of the same name (in
# the columns' order, which is also BatchEvent's) ...
SESSION_TEMPLATE_KEYS = (
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "utm_adgroup",
    "matchtype",
    "network",
    "placement",
    "adposition",
    "targetid",
    "feeditemid",
)
# ... and every template parameter read (`device` overrides the session's device type)
TEMPLATE_KEYS = (*SESSION_TEMPLATE_KEYS, "device", "devicemodel", "loc_interest_ms", "loc_physical_ms")


PAID_UTM_MEDIUMS = frozenset({"cpc", "ppc", "paid"})
# traffic_source treats a wider set of paid mediums as paid (the classifier of the original)
PAID_TRAFFIC_MEDIUMS = frozenset(
    {"cpc", "ppc", "paid", "ads", "paidsearch", "paid_search", "paid-social", "paid_social"}
)
# Values trackers write for "no value": never a click id.
_JUNK = frozenset({"", "null", "undefined", "none", "(not set)"})

# Memo bounds (issue 18: every bounded structure states its bound). These caches live in
# every partition process for its whole life; entries are evicted least recently used, and
# only strings up to MEMO_MAX_CHARS are memoised (longer ones are parsed each time, and are
# rare), so the bytes are bounded too. Worst cases, measured with tracemalloc (key + value):
# URL parameters 8,192 x ~3.2 KB = 26 MB, click ids and UTMs by URL 8,192 x ~1.5 KB = 12 MB
# (the URL string is shared with the first memo), hosts 8,192 x ~1.3 KB = 11 MB, devices 4,096 x
# ~0.7 KB = 3 MB, host classifications 3 x 4,096 x ~1.1 KB = 14 MB. Landing pages and
# referrers repeat, so the hit rate stays high although every ad click's URL is unique.
URL_MEMO_SIZE = 8192
HOST_MEMO_SIZE = 4096
DEVICE_MEMO_SIZE = 4096
MEMO_MAX_CHARS = 1024


def _memo(fn: Any, key: str) -> Any:
    """``fn(key)`` through its memo when ``key`` is short enough, else computed directly."""
    return fn(key) if len(key) <= MEMO_MAX_CHARS else fn.__wrapped__(key)


class Attribution:
    FIRST_CLICK_PAID = "First Click (Paid)"
    PAID_UTM = "Paid (UTM)"
    ADS_ASSISTED = "Ads Assisted"
    SOCIAL = "Social"
    ORGANIC = "Organic"


def url_params(url: str | None) -> Mapping[str, str]:
    """Query and fragment parameters of a URL; fragment values win (read-only: results are
    shared, landing pages repeat).

    Ads landing pages of single-page apps carry parameters in the fragment too
    (``/#/offer?gclid=...``): after ``#`` and an optional ``?`` the part after the first
    ``?`` is parsed when it holds ``key=value`` pairs.
    """
    if not url or ("?" not in url and "#" not in url):
        return _EMPTY
    return _memo(_url_params, url)  # type: ignore[no-any-return]


_EMPTY: Mapping[str, str] = MappingProxyType({})


@lru_cache(maxsize=URL_MEMO_SIZE)
def _url_params(url: str) -> Mapping[str, str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return _EMPTY
    params = {k: v for k, v in parse_qsl(parts.query, keep_blank_values=False)}
    frag = parts.fragment
    if frag:
        frag = frag[1:] if frag.startswith("?") else frag
        if "?" in frag:
            frag = frag.split("?", 1)[1]
        if "=" in frag:
            for k, v in parse_qsl(frag, keep_blank_values=False):
                params[k] = v
    return MappingProxyType(params)


def _value(raw: Any, limit: int = 512) -> str | None:
    if raw is None or isinstance(raw, bool):
        return None
    text = str(raw).strip()
    if text.lower() in _JUNK:
        return None
    return text[:limit]


class ClickIds(msgspec.Struct, frozen=True):
    gclid: str | None = None
    wbraid: str | None = None
    gbraid: str | None = None
    other: dict[str, str] = {}

    @property
    def google(self) -> bool:
        return bool(self.gclid or self.wbraid or self.gbraid)

    def best(self) -> tuple[str | None, str | None]:
        """(click id, type): gclid, else wbraid, else gbraid (``opsmantik_stream.clickids``)."""
        return best_click_id(None, None, self.gclid or None, self.wbraid or None, self.gbraid or None)


def click_ids(params: Mapping[str, str], meta: Any) -> ClickIds:
    """Click ids from the page URL, else from ``meta`` (the tracker persists them per session)."""
    return ClickIds(**_pick(CLICK_ID_KEYS, params, meta, split_google=True))


def _pick(keys: tuple[str, ...], params: Mapping[str, str], meta: Any, *, split_google: bool = False) -> dict[str, Any]:
    """``keys`` from the URL's parameters, else from ``meta`` (a mapping or a struct), junk
    values dropped; with ``split_google`` the non-Google click ids go under ``other``."""
    found: dict[str, str] = {}
    if params:
        for key in keys:
            raw = params.get(key)
            if raw is not None:
                value = _value(raw)
                if value:
                    found[key] = value
    if meta is None:
        pass
    elif isinstance(meta, Mapping):
        for key in keys:
            raw = meta.get(key)
            if raw is not None and key not in found:
                value = _value(raw)
                if value:
                    found[key] = value
    else:
        # a struct: all its values at once, then by position (no attribute look-ups)
        values = msgspec.structs.astuple(meta)
        for key, pos in _positions(type(meta), keys):  # type: ignore[arg-type]
            raw = values[pos]
            if raw is not None and key not in found:
                value = _value(raw)
                if value:
                    found[key] = value
    if not split_google:
        return found
    return {
        "gclid": found.pop("gclid", None),
        "wbraid": found.pop("wbraid", None),
        "gbraid": found.pop("gbraid", None),
        "other": found,
    }


# one entry per (struct, key list) pair the code asks about: a handful, fixed by the code
@lru_cache(maxsize=64)
def _positions(struct: type, keys: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    fields = struct.__struct_fields__  # type: ignore[attr-defined]
    return tuple((key, fields.index(key)) for key in keys if key in fields)


def template_params(params: Mapping[str, str], meta: Any) -> dict[str, str]:
    """UTM and template parameters from the URL, else from ``meta``."""
    return _pick(TEMPLATE_KEYS, params, meta)


def url_attribution(url: str | None, meta: Any) -> tuple[ClickIds, Mapping[str, str]]:
    """``click_ids`` and ``template_params`` of an event at once (read-only results).

    When ``meta`` carries none of their keys (the usual event: the tracker sends click ids
    and UTMs in ``meta`` only when it kept them for the session) both depend on the URL
    alone, so they are memoised with it: landing pages repeat, and the two look-ups are a
    third of the partition's per-event work.
    """
    if meta is not None and not isinstance(meta, Mapping) and not _carries_any(meta, _URL_KEYS):
        if not url or ("?" not in url and "#" not in url):
            return _NO_IDS, _EMPTY
        return _memo(_url_attribution, url)  # type: ignore[no-any-return]
    params = url_params(url)
    return click_ids(params, meta), template_params(params, meta)


_URL_KEYS = CLICK_ID_KEYS + TEMPLATE_KEYS
_NO_IDS = ClickIds()


def carries_url_keys(meta: Any) -> bool:
    """Whether ``meta`` (a mapping or a struct) has a click id or template key of its own: if
    not, everything taken from the URL depends on the URL alone (and can be memoised)."""
    if meta is None:
        return False
    getter = _URL_GETTERS.get(type(meta))
    if getter is None:
        if not isinstance(meta, msgspec.Struct):
            return any(meta.get(key) is not None for key in _URL_KEYS)
        # one getter per struct type (a handful, fixed by the code): asked for every event,
        # so not through _getter, whose key would hash the whole key list each time
        getter = _URL_GETTERS[type(meta)] = _getter(type(meta), _URL_KEYS)
    values = getter(meta)
    return values.count(None) != len(values)


_URL_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _carries_any(meta: Any, keys: tuple[str, ...]) -> bool:
    values = _getter(type(meta), keys)(meta)  # type: ignore[arg-type]
    return values.count(None) != len(values)


@lru_cache(maxsize=64)
def _getter(struct: type, keys: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    # one C call reads all the fields at once: a meta struct is read this way for every event
    present = [key for key in keys if key in struct.__struct_fields__]  # type: ignore[attr-defined]
    if len(present) < 2:
        return lambda obj: tuple(getattr(obj, k) for k in present)
    return attrgetter(*present)


@lru_cache(maxsize=URL_MEMO_SIZE)
def _url_attribution(url: str) -> tuple[ClickIds, Mapping[str, str]]:
    params = url_params(url)
    return click_ids(params, None), MappingProxyType(template_params(params, None))


def host_of(url: str | None) -> str | None:
    """The lower-cased host of a URL (or of ``host/path``), or None."""
    if not url:
        return None
    return _memo(_host_of, url)  # type: ignore[no-any-return]


@lru_cache(maxsize=URL_MEMO_SIZE)
def _host_of(url: str) -> str | None:
    try:
        host = urlsplit(url if "//" in url else "//" + url).hostname
    except ValueError:
        return None
    return host.lower().rstrip(".") if host else None


def referrer_host(referrer: str | None, page_url: str | None) -> str | None:
    """The referrer's host, or None when there is none or it is the page's own host."""
    host = host_of(referrer)
    if host is None:
        return None
    if host == host_of(page_url):
        return None
    return host


def _matches(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def is_google_host(host: str | None) -> bool:
    """google.com, www.google.com.tr, google.de ... (a ``google`` label before the suffix)."""
    if not host:
        return False
    return _memo(_is_google, host)  # type: ignore[no-any-return]


@lru_cache(maxsize=HOST_MEMO_SIZE)
def _is_google(host: str) -> bool:
    return "google" in host.split(".")[:-1]


_SEARCH = ("bing", "yandex", "duckduckgo", "yahoo", "baidu", "ecosia")
_SOCIAL = (
    ("facebook.com", "Facebook"),
    ("fb.com", "Facebook"),
    ("instagram.com", "Instagram"),
    ("t.co", "X"),
    ("twitter.com", "X"),
    ("x.com", "X"),
    ("linkedin.com", "LinkedIn"),
    ("lnkd.in", "LinkedIn"),
    ("tiktok.com", "TikTok"),
    ("youtube.com", "YouTube"),
    ("youtu.be", "YouTube"),
)


def social_platform(host: str | None) -> str | None:
    """The social network a referrer host belongs to, or None."""
    if not host:
        return None
    return _memo(_social_platform, host)  # type: ignore[no-any-return]


@lru_cache(maxsize=HOST_MEMO_SIZE)
def _social_platform(host: str) -> str | None:
    for domain, name in _SOCIAL:
        if _matches(host, domain):
            return name
    return None


@lru_cache(maxsize=HOST_MEMO_SIZE)
def _is_search(host: str) -> bool:
    if is_google_host(host):
        return True
    labels = host.split(".")
    return any(name in labels[:-1] for name in _SEARCH)


def attribution_pair(ids: ClickIds, utm_medium: str | None, ref_host: str | None) -> tuple[str, str]:
    """The attribution source without and with "an earlier session of this fingerprint *on
    this site* had a click id" (the one fact that needs the database). First match: Google
    click id -> First Click (Paid); paid utm_medium -> Paid (UTM); Google referrer and an
    earlier click -> Ads Assisted; social referrer -> Social; else Organic.

    wbraid/gbraid are Google Ads clicks (iOS) just like gclid, so they count as paid clicks.
    """
    if ids.google:
        return Attribution.FIRST_CLICK_PAID, Attribution.FIRST_CLICK_PAID
    if utm_medium and utm_medium.strip().lower() in PAID_UTM_MEDIUMS:
        return Attribution.PAID_UTM, Attribution.PAID_UTM
    rest = Attribution.SOCIAL if social_platform(ref_host) else Attribution.ORGANIC
    return rest, (Attribution.ADS_ASSISTED if is_google_host(ref_host) else rest)


def attribution_source(
    ids: ClickIds,
    utm_medium: str | None,
    ref_host: str | None,
    *,
    earlier_click_on_site: bool,
) -> str:
    """The attribution source (see ``attribution_pair``)."""
    without, with_earlier = attribution_pair(ids, utm_medium, ref_host)
    return with_earlier if earlier_click_on_site else without


def traffic_source(ids: ClickIds, utm: Mapping[str, str], ref_host: str | None) -> tuple[str, str]:
    """(traffic_source, traffic_medium); ``ref_host`` is already None for same-site referrers."""
    other = ids.other
    if ids.google or "gclsrc" in other or "dclid" in other:
        return "Google Ads", "cpc"
    if "fbclid" in other:
        return "Meta Ads", "cpc"
    if "ttclid" in other:
        return "TikTok Ads", "cpc"
    if "msclkid" in other:
        return "Microsoft Ads", "cpc"
    medium = (utm.get("utm_medium") or "").strip().lower()
    source = (utm.get("utm_source") or "").strip()
    if medium in PAID_TRAFFIC_MEDIUMS:
        return (source[:64] or "Paid"), "cpc"
    tagged = bool(medium or source or utm.get("utm_campaign"))
    if ref_host:
        if _memo(_is_search, ref_host) and not tagged:
            return "SEO", "organic"
        platform = social_platform(ref_host)
        if platform and not tagged:
            return platform, "social"
        if not tagged:
            return "Referral", "referral"
    if not tagged:
        return "Direct", "direct"
    return (source[:64] or "Tagged"), (medium[:64] or "unknown")


class Device(msgspec.Struct, frozen=True):
    device_type: str
    os: str
    browser: str


_DEVICE_PARAM = {
    "m": "mobile",
    "mobile": "mobile",
    "t": "tablet",
    "tablet": "tablet",
    "c": "desktop",
    "desktop": "desktop",
    "computer": "desktop",
}


def parse_device(ua: str | None, device_param: str | None = None) -> Device:
    """Device type, OS and browser from the User-Agent (substring rules, no UA database);
    the ValueTrack ``device`` parameter (m/t/c) overrides the type."""
    # a site's visitors share few distinct User-Agents: parsed once each
    return _parse_device(ua or "", (device_param or "").strip().lower())


# first match wins, in this order (Edge and Opera UAs also say Chrome; Chrome's says Safari)
_OS_RULES = (
    ("iOS", ("iphone", "ipad", "ipod")),
    ("Android", ("android",)),
    ("Windows", ("windows",)),
    ("ChromeOS", ("cros",)),
    ("macOS", ("mac os x", "macintosh")),
    ("Linux", ("linux",)),
)
_BROWSER_RULES = (
    ("Edge", ("edg/", "edge/")),
    ("Opera", ("opr/", "opera")),
    ("Samsung Internet", ("samsungbrowser",)),
    ("Firefox", ("firefox/", "fxios")),
    ("Chrome", ("chrome/", "crios", "chromium")),
    ("Safari", ("safari/",)),
)


def _first_match(text: str, rules: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    return next((name for name, marks in rules if any(m in text for m in marks)), "Unknown")


@lru_cache(maxsize=DEVICE_MEMO_SIZE)
def _parse_device(ua: str, device_param: str) -> Device:
    text = ua.lower()
    if "ipad" in text or "tablet" in text or ("android" in text and "mobile" not in text):
        dtype = "tablet"
    elif "mobile" in text or "iphone" in text or "android" in text:
        dtype = "mobile"
    else:
        dtype = "desktop"
    dtype = _DEVICE_PARAM.get(device_param) or dtype
    return Device(device_type=dtype, os=_first_match(text, _OS_RULES), browser=_first_match(text, _BROWSER_RULES))
