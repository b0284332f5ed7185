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

import functools
import math
import re
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from opsmantik_stream.errors import DomainError

__all__ = [
    "MAX_BATCH_EVENTS",
    "MAX_BODY_BYTES",
    "SCOPES_MEMO_SIZE",
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
    "encode_event",
    "encode_results",
    "encode_wire",
    "event_value",
    "msgpack_array",
]

MAX_BODY_BYTES = 256 * 1024
MAX_BATCH_EVENTS = 100


Str32 = Annotated[str, msgspec.Meta(max_length=32)]
Str64 = Annotated[str, msgspec.Meta(max_length=64)]
Str128 = Annotated[str, msgspec.Meta(max_length=128)]
Str256 = Annotated[str, msgspec.Meta(max_length=256)]
Str512 = Annotated[str, msgspec.Meta(max_length=512)]
Str2048 = Annotated[str, msgspec.Meta(max_length=2048)]
Str4096 = Annotated[str, msgspec.Meta(max_length=4096)]
ScopesIn = Annotated[list[Str32], msgspec.Meta(max_length=16)] | Str256


Count = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
Pct = Annotated[float, msgspec.Meta(ge=0, le=1000)]


# The per-event Structs below (and BatchEvent, EventMeta in store.py) are created by the
# hundred per batch and hold only strings, numbers, lists of strings and each other: they can
# never be part of a reference cycle, so they are kept out of Python's cyclic garbage
# collector (gc=False). Tracked, they set off a collection every ~200 events in a partition,
# about 3 us of CPU per event (a tenth of the partition's work), plus the occasional full pass
# over everything the process holds.
class MetaIn(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True, gc=False):
    """The ``meta`` object, typed: every field ingest reads, with its limit. Keys not listed
    here are ignored (not stored), so ``meta`` can neither grow the database nor nest: a value
    of the wrong shape is a 422 naming the field (``meta.sw``)."""

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
    # what a form that opted in with data-om-capture sent (opsmantik_stream/capture.py): only
    # their hashes are kept, for form intents with marketing consent; never stored as sent
    om_email: Str512 | None = None
    om_phone: Str256 | None = None


_NO_META = MetaIn()


class EventIn(msgspec.Struct, kw_only=True, gc=False):
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
    meta: MetaIn | None = None


class Envelope(EventIn, kw_only=True):
    """The body: one event, or ``{"events": [...]}`` (1-100 events of one site)."""

    events: Annotated[list[EventIn], msgspec.Meta(min_length=1, max_length=MAX_BATCH_EVENTS)] | None = None


class BodyError(DomainError):
    """The body is not acceptable: ``status`` 400 or 422, ``code`` for the error header."""


# strict=False: numbers sent as strings ("1920") are fine for counters; text fields stay strict.
_envelope_decoder = msgspec.json.Decoder(Envelope, strict=False)
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _field_path(message: str, prefix: str = "") -> tuple[str, str]:
    """msgspec's ``Expected ... - at `$.events[3].el``` -> (``events.3.el``, ``Expected ...``)."""
    m = _PATH.search(message)
    raw = m.group("path") if m else ""
    text = message[: m.start()] if m else message
    path = raw.replace("[", ".").replace("]", "").lstrip(".")
    path = ".".join(p for p in (prefix, path) if p)
    return path or "body", text


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
    except RecursionError:
        # JSON nested deeper than the decoder's stack allows (no field we read nests at all)
        raise BodyError(400, "invalid_json", "the body is nested too deeply") from None
    if env.events is not None:
        events = env.events
        prefix = "events."
    else:
        events = [env]
        prefix = ""
    for i, ev in enumerate(events):
        site = ev.s if ev.s is not None else env.s
        if site is None or not site.strip():
            raise BodyError(
                422,
                f"validation_error:{prefix}{i}.s" if prefix else "validation_error:s",
                "the site id `s` is required",
            )
        if not ((ev.url or "").strip() or (ev.u or "").strip()):
            raise BodyError(
                422,
                f"validation_error:{prefix}{i}.u" if prefix else "validation_error:u",
                "the page url `u` (or `url`) is required",
            )
    if b"\\u0000" in body:
        # PostgreSQL text cannot hold NUL: strip it from every string (rare, so walked here
        # instead of checked on every field of every request)
        events = [_strip_nul(ev) for ev in events]
    return env, events


def _strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_strip_nul(v) for v in value]
    if isinstance(value, msgspec.Struct):
        changes = {f: _strip_nul(getattr(value, f)) for f in value.__struct_fields__}
        return msgspec.structs.replace(value, **changes)
    return value


def consent_scopes(ev: EventIn) -> list[str]:
    """The event's consent scopes, lower-cased and de-duplicated, from ``consent``,
    ``consent_scopes`` or ``meta.consent_scopes`` (a list, or a comma/space separated string)."""
    raw: Any = ev.consent if ev.consent is not None else ev.consent_scopes
    if raw is None and ev.meta is not None:
        raw = ev.meta.consent_scopes
    if raw is None:
        return []
    # a fresh list per event (the memo's value is shared)
    return list(_scopes(raw if isinstance(raw, str) else tuple(raw)))


# Memo bound of normalised scope sets (gateway process): a key is at most 16 scopes of 32
# characters or a 256-character string, so ~2 MB at most. The scopes a site's tracker sends
# repeat on every event; normalising them took ~1 us per event of a 50-event batch.
SCOPES_MEMO_SIZE = 1024


@functools.lru_cache(maxsize=SCOPES_MEMO_SIZE)
def _scopes(raw: str | tuple[str, ...]) -> tuple[str, ...]:
    items = re.split(r"[\s,]+", raw) if isinstance(raw, str) else raw
    return tuple(sorted({x.strip().lower() for x in items if x and x.strip()}))


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


class WireEvent(msgspec.Struct, array_like=True, frozen=True, gc=False):
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
    meta: MetaIn = _NO_META
    ip: str | None = None  # already truncated (/24 or /48)
    ua: str | None = None

    @classmethod
    def build(
        cls,
        ev: EventIn,
        site_id: str,
        received_ms: int,
        scopes: list[str],
        ip: str | None,
        ua: str | None,
    ) -> WireEvent:
        """The event as its partition gets it: strings stripped (empty ones become None), ``ev``
        a finite number or None. ``ev`` comes from ``decode_body``, so its strings hold no NUL
        (JSON cannot carry a raw one, and an escaped one is removed there); ``ua``, the
        request's, is already ``clean_text``-ed (once per request, not per event). Positional
        arguments: the gateway calls this for every event, and keywords (here and in the call)
        cost a third of its time."""
        # `url` wins over `u` when both are sent (as in the original tracker contract).
        url = (ev.url or "").strip() or (ev.u or "").strip()
        eid, sid, ec, ea, el, r = ev.eid, ev.sid, ev.ec, ev.ea, ev.el, ev.r
        # (inline rather than clean_text per field: ~0.3 us of the gateway's ~5 us per event)
        return cls(
            site_id,
            received_ms,
            url,
            (eid.strip() or None) if eid is not None else None,
            (sid.strip() or None) if sid is not None else None,
            (ec.strip() or None) if ec is not None else None,
            (ea.strip() or None) if ea is not None else None,
            (el.strip() or None) if el is not None else None,
            event_value(ev.ev),
            (r.strip() or None) if r is not None else None,
            scopes,  # consent
            ev.meta if ev.meta is not None else _NO_META,  # meta
            ip,
            ua,
        )


class WireResult(msgspec.Struct, array_like=True, frozen=True, omit_defaults=True, gc=False):
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


# One event as it travels to its partition (see ``msgpack_array``): the encoder's own method,
# called for every event (a function around it cost a tenth of building the event).
encode_event: Callable[[WireEvent], bytes] = _wire_enc.encode


def msgpack_array(n: int, parts: list[bytes]) -> bytes:
    """A msgpack array of ``n`` already encoded items, given as ``parts`` that each hold
    some of them back to back: the batcher joins the events of many requests without
    encoding any of them again."""
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 0x10000:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(parts)


def encode_wire(events: list[WireEvent]) -> bytes:
    return _wire_enc.encode(events)


def decode_wire(data: bytes) -> list[WireEvent]:
    return _wire_dec.decode(data)


def encode_results(results: list[WireResult]) -> bytes:
    return _wire_enc.encode(results)


def decode_results(data: bytes) -> list[WireResult]:
    return _result_dec.decode(data)
