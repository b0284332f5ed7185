"""Wire types of ``POST /api/sync`` and of the gateway -> partition call.

The body is decoded once with typed msgspec Structs that carry the length limits of
SPEC.md §3, so an oversize string or a wrong type is rejected before anything else runs
and the error names the field (``events.3.el``). Unknown event keys (``ts``, ``sm`` from old
trackers) are ignored; a body that is not a JSON object is rejected.

The gateway turns each accepted event into a ``WireEvent`` (site resolved, client ip and UA
attached, strings cleaned) and sends a partition a msgpack-encoded list of them; the
partition answers with one ``WireResult`` per event, in order.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import msgspec

__all__ = [
    "MAX_BATCH_EVENTS",
    "MAX_BODY_BYTES",
    "BodyError",
    "Envelope",
    "EventIn",
    "MetaIn",
    "WireEvent",
    "WireResult",
    "clean_text",
    "consent_scopes",
    "decode_body",
    "decode_results",
    "decode_wire",
    "encode_results",
    "encode_wire",
    "event_value",
    "validate_meta",
]

MAX_BODY_BYTES = 256 * 1024
MAX_BATCH_EVENTS = 100
MAX_META_KEYS = 100
MAX_META_KEY_LENGTH = 64


Str32 = Annotated[str, msgspec.Meta(max_length=32)]
Str64 = Annotated[str, msgspec.Meta(max_length=64)]
Str128 = Annotated[str, msgspec.Meta(max_length=128)]
Str256 = Annotated[str, msgspec.Meta(max_length=256)]
Str512 = Annotated[str, msgspec.Meta(max_length=512)]
Str2048 = Annotated[str, msgspec.Meta(max_length=2048)]
Str4096 = Annotated[str, msgspec.Meta(max_length=4096)]
ScopesIn = Annotated[list[Str32], msgspec.Meta(max_length=16)] | Str256


class EventIn(msgspec.Struct, kw_only=True):
    """One tracker event as sent (short keys). ``s`` and ``u``/``url`` are checked after
    decoding so a batch may carry ``s`` once at the top."""

    s: Str128 | None = None
    u: Str4096 | None = None
    url: Str4096 | None = None
    eid: Str128 | None = None
    sid: Str256 | None = None
    ec: Str256 | None = None
    ea: Str256 | None = None
    el: Str512 | None = None
    ev: float | Str64 | None = None
    r: Str2048 | None = None
    consent: ScopesIn | None = None
    consent_scopes: ScopesIn | None = None
    meta: dict[str, Any] | None = None


class Envelope(EventIn, kw_only=True):
    """The body: one event, or ``{"events": [...]}`` (1-100 events of one site)."""

    events: Annotated[list[EventIn], msgspec.Meta(min_length=1, max_length=MAX_BATCH_EVENTS)] | None = None


Count = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
Pct = Annotated[float, msgspec.Meta(ge=0, le=1000)]


class MetaIn(msgspec.Struct, kw_only=True):
    """Typed view of the ``meta`` fields ingest reads; other keys pass through untouched."""

    fp: Str128 | None = None
    gclid: Str512 | None = None
    wbraid: Str512 | None = None
    gbraid: Str512 | None = None
    gclsrc: Str64 | None = None
    dclid: Str512 | None = None
    fbclid: Str512 | None = None
    ttclid: Str512 | None = None
    msclkid: Str512 | None = None
    utm_source: Str512 | None = None
    utm_medium: Str512 | None = None
    utm_campaign: Str512 | None = None
    utm_term: Str512 | None = None
    utm_content: Str512 | None = None
    utm_adgroup: Str512 | None = None
    matchtype: Str64 | None = None
    device: Str64 | None = None
    devicemodel: Str128 | None = None
    targetid: Str256 | None = None
    network: Str64 | None = None
    placement: Str512 | None = None
    adposition: Str64 | None = None
    feeditemid: Str128 | None = None
    loc_interest_ms: Str64 | None = None
    loc_physical_ms: Str64 | None = None
    lan: Str64 | None = None
    sw: Count | None = None
    sh: Count | None = None
    city: Str128 | None = None
    district: Str128 | None = None
    scroll_pct: Pct | None = None
    cta_hovers: Count | None = None
    active_sec: Count | None = None
    duration_sec: Count | None = None
    focus_dur: Count | None = None
    exit_page: Str4096 | None = None
    intent_action: Str64 | None = None
    phone_number: Str256 | None = None
    consent_scopes: ScopesIn | None = None


class BodyError(Exception):
    """The body is not acceptable: ``status`` 400 or 422, ``code`` for the error header."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_envelope_decoder = msgspec.json.Decoder(Envelope)
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _field_path(message: str, prefix: str = "") -> tuple[str, str]:
    """msgspec's ``Expected ... - at `$.events[3].el``` -> (``events.3.el``, ``Expected ...``)."""
    m = _PATH.search(message)
    raw = m.group("path") if m else ""
    text = message[: m.start()] if m else message
    path = raw.replace("[", ".").replace("]", "").lstrip(".")
    path = ".".join(p for p in (prefix, path) if p)
    return path or "body", text


def validate_meta(meta: dict[str, Any], path: str) -> None:
    """Limits on the free-form ``meta`` object, plus the typed fields of ``MetaIn``."""
    if len(meta) > MAX_META_KEYS:
        raise BodyError(422, f"validation_error:{path}", f"meta has more than {MAX_META_KEYS} keys")
    for key in meta:
        if len(key) > MAX_META_KEY_LENGTH:
            raise BodyError(422, f"validation_error:{path}", "a meta key is longer than 64 characters")
    try:
        # strict=False: numbers sent as strings ("1920") are fine for counters.
        msgspec.convert(meta, MetaIn, strict=False)
    except msgspec.ValidationError as exc:
        field, text = _field_path(str(exc), path)
        raise BodyError(422, f"validation_error:{field}", text) from None


def decode_body(body: bytes) -> tuple[Envelope, list[EventIn]]:
    """Decode and check a body; returns the envelope and its events (one for a single event).

    Raises ``BodyError``: 400 ``invalid_json``, or 422 ``validation_error:<path>``.
    """
    try:
        env = _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        field, text = _field_path(str(exc))
        raise BodyError(422, f"validation_error:{field}", text) from None
    except msgspec.DecodeError:
        raise BodyError(400, "invalid_json", "the body is not valid JSON") from None
    if env.events is not None:
        events = env.events
        prefix = "events."
    else:
        events = [env]
        prefix = ""
    for i, ev in enumerate(events):
        at = f"{prefix}{i}." if prefix else ""
        site = ev.s if ev.s is not None else env.s
        if site is None or not site.strip():
            raise BodyError(422, f"validation_error:{at}s", "the site id `s` is required")
        if not ((ev.url or "").strip() or (ev.u or "").strip()):
            raise BodyError(422, f"validation_error:{at}u", "the page url `u` (or `url`) is required")
        if ev.meta is not None:
            validate_meta(ev.meta, f"{at}meta")
    return env, events


def consent_scopes(ev: EventIn) -> list[str]:
    """The event's consent scopes, lower-cased and de-duplicated, from ``consent``,
    ``consent_scopes`` or ``meta.consent_scopes`` (a list, or a comma/space separated string)."""
    raw: Any = ev.consent if ev.consent is not None else ev.consent_scopes
    if raw is None and ev.meta:
        raw = ev.meta.get("consent_scopes")
    if raw is None:
        return []
    items = re.split(r"[\s,]+", raw) if isinstance(raw, str) else [str(x) for x in raw]
    return sorted({x.strip().lower() for x in items if x and x.strip()})


def event_value(ev: float | str | None) -> float | None:
    """``ev`` as a finite number, else None (0 is kept)."""
    if ev is None:
        return None
    try:
        value = float(ev)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def clean_text(value: str | None) -> str | None:
    """Strip surrounding space and NUL characters (PostgreSQL text cannot hold NUL)."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "")
    value = value.strip()
    return value or None


def _clean_any(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): _clean_any(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_any(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class WireEvent(msgspec.Struct, array_like=True, frozen=True):
    """One validated event on its way to the owning partition."""

    site_id: str
    received_ms: int  # the gateway's clock when the request arrived (server time)
    url: str
    eid: str | None = None
    sid: str | None = None
    ec: str | None = None
    ea: str | None = None
    el: str | None = None
    ev: float | None = None
    referrer: str | None = None
    consent: list[str] = []
    meta: dict[str, Any] = {}
    ip: str | None = None  # already truncated (/24 or /48)
    ua: str | None = None

    @classmethod
    def build(
        cls,
        ev: EventIn,
        *,
        site_id: str,
        received_ms: int,
        scopes: list[str],
        ip: str | None,
        ua: str | None,
    ) -> WireEvent:
        # `url` wins over `u` when both are sent (as in the original tracker contract).
        url = clean_text(ev.url) or clean_text(ev.u) or ""
        return cls(
            site_id=site_id,
            received_ms=received_ms,
            url=url,
            eid=clean_text(ev.eid),
            sid=clean_text(ev.sid),
            ec=clean_text(ev.ec),
            ea=clean_text(ev.ea),
            el=clean_text(ev.el),
            ev=event_value(ev.ev),
            referrer=clean_text(ev.r),
            consent=scopes,
            meta=_clean_any(ev.meta) if ev.meta else {},
            ip=ip,
            ua=clean_text(ua),
        )


class WireResult(msgspec.Struct, array_like=True, frozen=True, omit_defaults=True):
    """The partition's decision for one event."""

    status: str  # accepted | duplicate | rejected_quota
    ingest_id: str | None = None
    quota_remaining: int | None = None
    overage: bool = False
    retry_after_s: int | None = None
    # "dead_letter" when the event was captured in dead_letters instead of the tables
    stored: str | None = None


_wire_enc = msgspec.msgpack.Encoder()
_wire_dec = msgspec.msgpack.Decoder(list[WireEvent])
_result_dec = msgspec.msgpack.Decoder(list[WireResult])


def encode_wire(events: list[WireEvent]) -> bytes:
    return _wire_enc.encode(events)


def decode_wire(data: bytes) -> list[WireEvent]:
    return _wire_dec.decode(data)


def encode_results(results: list[WireResult]) -> bytes:
    return _wire_enc.encode(results)


def decode_results(data: bytes) -> list[WireResult]:
    return _result_dec.decode(data)
