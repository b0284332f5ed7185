"""The batch writer a ``SitePartition`` runs: SPEC.md §3 steps 1-9 in one round trip.

``IngestStore.ingest(events)`` answers one ``WireResult`` per event, in order, and returns
only after the batch committed, so the gateway's 2xx means the event is durable.

Two halves:

- ``prepare`` (pure, per event): the idempotency key, billable class, click ids, UTM and
  template parameters, device, traffic source, attribution and lead score (both with and
  without "an earlier session of this visitor on this site had a click id", the one fact
  that needs the database), intent and target, the session ids to use. The result is a
  ``BatchEvent`` whose fields are exactly the attributes of the SQL type
  ``ingest_batch_event``, in their order (a test compares them).
- ``ingest_batch(now, sites, consent, events)`` (migrations 0006, 0014-0022): the batch as an
  array of those rows in PostgreSQL's binary format (no JSON to parse), with its distinct sites
  and whether it holds a consent event; one statement, hence one transaction and one round
  trip, that locks the month's usage of the batch's sites, inserts the ledger
  (duplicates drop out), decides the quota from the locked counts, resolves and upserts
  sessions, inserts event rows and intents and moves the usage counters.

The one thing kept between batches is a bounded memo of session hints (SPEC.md §3 step 4:
"find by (site, sid) in the partition's cache, else in PostgreSQL"): the month of each
session a committed batch wrote, sent with the session's next events so that
``ingest_batch`` skips their look-up. A hint is never trusted blindly: ``ingest_batch``
fails a batch whose hinted session is gone (erased, past retention) before writing
anything, and the batch runs again without hints. PostgreSQL stays the only authority: a
restarted actor starts with no hints, and a second writer (during a resize) has its own.
The partition owns its connections (no reset per batch).

An event that cannot be prepared, or whose row PostgreSQL refuses, goes to ``dead_letters``
with a non-billable ledger row (so a re-send is a duplicate) and never costs the other
events of its batch: on such an error the batch is re-run event by event.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import operator
import re
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import asyncpg
import msgspec
from msgspec.structs import astuple

from opsmantik_stream.capture import PLAIN_META_KEYS, form_identifiers
from opsmantik_stream.enums import IntentAction
from opsmantik_stream.ingest import attribution as attr
from opsmantik_stream.ingest.billing import classify_billable, month_start, seconds_to_next_month
from opsmantik_stream.ingest.intents import detect_intent, intent_target, target_phone_number
from opsmantik_stream.ingest.keys import EventKind, event_kind, idempotency_key
from opsmantik_stream.ingest.schema import MetaIn, WireEvent, WireResult
from opsmantik_stream.ingest.scoring import lead_scores
from opsmantik_stream.queries import Q


def _c_row_encoder() -> Callable[..., bytes] | None:
    """The C row encoder, built by setup.py when the machine has a C compiler (see
    ``use_row_encoder``), else None."""
    try:
        from opsmantik_stream.ingest._pgrows import encode_array
    except ImportError:  # an install without a C compiler
        return None
    return encode_array


_ENCODE_ARRAY = _c_row_encoder()
# Set when a connection kept asyncpg's codecs although the C module is there (use_row_encoder
# said why): asyncpg's codecs take only tuples, so from then on every batch of the process
# goes as tuples (which the C encoder takes too) instead of as the BatchEvents themselves.
_ROWS_AS_TUPLES = _ENCODE_ARRAY is None

__all__ = [
    "SESSION_NAMESPACE",
    "BatchEvent",
    "CallExpired",
    "EventMeta",
    "IngestStore",
    "event_row_id",
    "prepare",
    "session_uuid",
]

log = logging.getLogger(__name__)

# uuid5 namespace for session ids the server derives (no sid, a non-UUID sid, or a sid
# that another site already uses).
SESSION_NAMESPACE = uuid.UUID("5b0f6a52-3c1e-4d0e-9a7b-0c61d1f0a4e2")

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_CONSENT = ("system", "consent")

# Errors that belong to one event's data (class 22 data exception, class 23 integrity
# violation) or to our own processing of it: the batch is re-run event by event.
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    ValueError,
    TypeError,
    KeyError,
)
# Nothing was written; the same batch simply runs again (a session id another site took
# concurrently -- raised by ingest_batch as 40001 -- or a deadlock PostgreSQL resolved).
_AGAIN: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)
_ATTEMPTS = 3

# Memo bound of session hints (one per ``IngestStore``, so per partition process):
# (site id, session id) -> the month of the site's own session with that id, as the last
# committed batch wrote it. An entry is two id strings and a date, ~0.3 KB with the memo's own
# links (measured with tracemalloc), so ~5 MB at the bound. What pays are the sessions active
# now (as for DERIVED_ID_MEMO_SIZE, with room for twice as many: a hit saves an index probe
# of two months' sessions); the least recently written is forgotten first, and a session
# without a hint is looked up in PostgreSQL as before.
SESSION_HINT_MEMO_SIZE = 16384


class CallExpired(Exception):
    """The batch waited (for a connection) past its deadline, the gateway's timeout: the
    gateway has answered 503 by now, so nothing is written -- the client's retry counts."""


# Memo bound of derived session ids (partition process): keys are a site id and a client
# session id (every event derives its session's fallback id), a fingerprint and day, or an
# event key, at most ~0.6 KB per entry with its value, so at most ~5 MB. The entries that
# pay are the sessions active now, whose events arrive minutes apart; a larger memo only
# keeps sessions that ended (the 30-minute soak saw 65,536 entries fill slowly with them,
# +17 % of a partition's memory). Beyond it the least recently used is forgotten (and
# derived again, a uuid5: ~2 us).
DERIVED_ID_MEMO_SIZE = 8192


@functools.lru_cache(maxsize=DERIVED_ID_MEMO_SIZE)
def _derived(site_id: str, key: str) -> str:
    return str(uuid.uuid5(SESSION_NAMESPACE, f"{site_id}|{key}"))


def session_uuid(site_id: str, sid: str | None, fp: str | None, day: dt.date, key: str) -> str:
    """The session id for a client session id: the sid itself when it is a UUID, else a
    stable id derived from it (or from the fingerprint and day, or from the event)."""
    if sid:
        return _sid_uuid(site_id, sid)
    if fp:
        return _derived(site_id, f"fp|{fp}|{day.isoformat()}")
    return _derived(site_id, f"key|{key}")


# Memoised with the same bound as _derived: a session's events (minutes apart) carry its sid.
@functools.lru_cache(maxsize=DERIVED_ID_MEMO_SIZE)
def _sid_uuid(site_id: str, sid: str) -> str:
    if _UUID.fullmatch(sid):
        return sid.lower()
    try:
        return str(uuid.UUID(sid))
    except ValueError:
        return _derived(site_id, f"sid|{sid}")


# gc=False here and on BatchEvent: see the per-event Structs in schema.py
class EventMeta(msgspec.Struct, omit_defaults=True, gc=False):
    """What an event row keeps in ``events.metadata``: the event's own facts, and its score
    and attribution as decided without an earlier click (``ingest_batch`` replaces those two
    for an Ads Assisted event). Session facts (fingerprint, click ids, device, consent) live
    on the session row, once."""

    lead_score: int
    attribution_source: str
    eid: str | None = None
    referrer: str | None = None
    scroll_pct: float | None = None
    cta_hovers: int | None = None
    active_sec: int | None = None
    duration_sec: int | None = None
    focus_dur: int | None = None
    intent_target: str | None = None
    # a form's captured email / phone, hashed (opsmantik_stream/capture.py)
    email_sha256: str | None = None
    phone_sha256: str | None = None


class BatchEvent(msgspec.Struct, gc=False):
    """One prepared event: the SQL type ``ingest_batch_event`` (migrations 0006, 0014, 0018, 0020, 0021),
    field for field and in its order, so ``astuple`` gives the row that asyncpg sends in the
    binary format (a test compares them). ``meta`` and ``other`` are JSON text.

    ``prepare`` builds it positionally: with 63 fields, keyword arguments cost ~3 us per
    event, a sixth of ``prepare``. Tests check every field by name."""

    i: int
    site: str
    key: str
    ver: int
    billable: bool
    reason: str
    lc: str | None
    la: str | None
    ll: str | None
    at_ms: int
    hb: bool
    sid: str
    alt: str
    consent: str | None  # the scopes joined with "," (migration 0016: an array costs the encoder ~1.8 us)
    consent_set: bool
    ip: str | None
    url: str | None
    exit_page: str | None
    ref: str | None
    gclid: str | None
    wbraid: str | None
    gbraid: str | None
    other: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_term: str | None
    utm_content: str | None
    utm_adgroup: str | None
    matchtype: str | None
    network: str | None
    placement: str | None
    adposition: str | None
    targetid: str | None
    feeditemid: str | None
    device_type: str | None
    device_os: str | None
    browser: str | None
    lan: str | None
    sw: int | None
    sh: int | None
    city: str | None
    district: str | None
    fp: str | None
    src: str | None
    medium: str | None
    dur: int | None
    active: int | None
    scroll: int | None
    cta: int | None
    attr: str
    score: int
    assist: bool
    attr_a: str | None
    score_a: int | None
    ev: float | None
    meta: str | None
    intent: str | None
    target: str | None
    phone: str | None
    page: str | None
    click_id: str | None
    click_type: str | None
    # the month of the site's own session ``sid``, from the partition's hints (migration 0018);
    # set by the store just before the batch is sent, never by ``prepare``
    hint: dt.date | None = None
    # the event row's id (``event_row_id``; migration 0020), always set by ``prepare``
    row_id: str | None = None
    # which occurrence of its session id ``sid`` in the batch the event is (1 for the first),
    # and a billable event's place among its site's billable events in the batch (migration
    # 0021): set by the store just before the batch is sent, never by ``prepare``
    nth: int | None = None
    srank: int | None = None


def _clip(value: float | None, hi: int) -> int | None:
    return None if value is None else max(0, min(hi, int(value)))


# The session columns of the template parameters, in BatchEvent's (and the SQL type's) order.
SESSION_TEMPLATE_KEYS = attr.SESSION_TEMPLATE_KEYS


_Opt = str | None
# one value per SESSION_TEMPLATE_KEYS
_Template = tuple[_Opt, _Opt, _Opt, _Opt, _Opt, _Opt, _Opt, _Opt, _Opt, _Opt, _Opt, _Opt]


class _Page(NamedTuple):
    """What an event's page URL and referrer decide (``_page``)."""

    ids: attr.ClickIds
    utm: Mapping[str, str]
    template: _Template
    other: str | None  # the non-Google click ids as JSON text
    ref_host: str | None
    source: str
    medium: str
    attribution: str  # without an earlier click of the visitor on the site ...
    assisted: str  # ... and with one
    google_referrer: bool
    click_id: str | None
    click_type: str | None


def _page(url: str | None, referrer: str | None, meta: Any) -> _Page:
    ids, utm = attr.url_attribution(url, meta)
    ref_host = attr.referrer_host(referrer, url)
    source, medium = attr.traffic_source(ids, utm, ref_host)
    attribution, assisted = attr.attribution_pair(ids, utm.get("utm_medium"), ref_host)
    click_id, click_type = ids.best()
    return _Page(
        ids,
        utm,
        cast(_Template, tuple(utm.get(key) for key in SESSION_TEMPLATE_KEYS)),
        _json(ids.other) if ids.other else None,
        ref_host,
        source,
        medium,
        attribution,
        assisted,
        attr.is_google_host(ref_host),
        click_id,
        click_type,
    )


# Memo bound of page facts (partition process), keyed by page URL and referrer (each at most
# attr's 1,024-character memo limit; longer ones are worked out each time). Worst case,
# measured with tracemalloc: ~1.3 KB of value and 2 KB of key per entry, ~14 MB in all.
# Pages and referrers of a site repeat (an ad click's URL is unique, its later page views
# are not); a hit saves ~5 us of the ~20 us ``prepare`` took, a miss costs ~1 us more.
PAGE_MEMO_SIZE = 4096


@functools.lru_cache(maxsize=PAGE_MEMO_SIZE)
def _page_memo(url: str, referrer: str) -> _Page:
    return _page(url or None, referrer or None, None)


def _page_facts(url: str | None, referrer: str | None, meta: Any) -> _Page:
    """``_page``, memoised when ``meta`` has no click id or template key (then the URL and the
    referrer decide alone: the usual event)."""
    if (
        not attr.carries_url_keys(meta)
        and len(url or "") <= attr.MEMO_MAX_CHARS
        and len(referrer or "") <= attr.MEMO_MAX_CHARS
    ):
        return _page_memo(url or "", referrer or "")
    return _page(url, referrer, meta)


# Memo bound of what an event's category, action, label and ``meta.intent_action`` decide
# (partition process): its kind, billable class and intent. A key is at most ~1 KB (the
# schema's limits), so ~5 MB at most. A site's events repeat these few strings; the three
# rules took ~1.5 us per event.
EVENT_RULES_MEMO_SIZE = 4096


@functools.lru_cache(maxsize=EVENT_RULES_MEMO_SIZE)
def _event_rules(
    ec: str | None, ea: str | None, el: str | None, intent_action: str | None
) -> tuple[EventKind, bool, str, IntentAction | None]:
    kind = event_kind(ec, ea)
    billable, reason = classify_billable(ec, ea)
    intent = None if kind == EventKind.HEARTBEAT else detect_intent(ec, ea, el, intent_action)
    return kind, billable, str(reason), intent


def event_row_id(received_ms: int, key: str) -> str:
    """The id of the event row an event becomes: the UUID version 7 layout, with the receive
    time in ms (48 bits) and then bits of the idempotency key (64 hex digits) where version 7
    has random bits. Ids grow with time, so the events' primary key grows at its right edge
    instead of taking every row at a random page; an event's id is the same on every attempt."""
    return f"{received_ms:012x}7{key[:3]}8{key[3:18]}"


def prepare(ev: WireEvent, i: int, day: dt.date) -> BatchEvent:
    """Every per-event rule of SPEC.md §3 that needs no database (pure)."""
    meta = ev.meta
    fp = (meta.fp or "").strip() or None
    key, version = idempotency_key(
        ev.site_id,
        eid=ev.eid,
        ec=ev.ec,
        ea=ev.ea,
        el=ev.el,
        url=ev.url,
        fp=fp,
        sid=ev.sid,
        server_ms=ev.received_ms,
    )
    kind, billable, reason, intent = _event_rules(ev.ec, ev.ea, ev.el, meta.intent_action)
    page = _page_facts(ev.url, ev.referrer, meta)
    score, score_assisted = lead_scores(
        category=ev.ec,
        action=ev.ea,
        value=ev.ev,
        scroll_pct=meta.scroll_pct,
        cta_hovers=meta.cta_hovers,
        google_referrer=page.google_referrer,
    )
    assist = page.assisted != page.attribution
    target = intent_target(intent, ev.el, meta.phone_number) if intent is not None else None
    session_key = ev.sid or (f"fp:{fp}:{day.isoformat()}" if fp else f"key:{key}")
    scroll = _clip(meta.scroll_pct, 100)
    if (ev.ea or "").lower() == "scroll_depth" and ev.ev is not None:
        scroll = max(scroll or 0, _clip(ev.ev, 100) or 0)
    device_type: str | None = None
    device_os: str | None = None
    browser: str | None = None
    if ev.ua is not None:
        device = attr.parse_device(ev.ua, page.utm.get("device"))
        device_type, device_os, browser = device.device_type, device.os, device.browser
    captured = (
        form_identifiers(intent, meta.om_email, meta.om_phone)
        if (meta.om_email or meta.om_phone) and ev.consent is not None and "marketing" in ev.consent
        else {}
    )
    ids = page.ids
    # positional, in BatchEvent's order (see its docstring)
    return BatchEvent(
        i,  # i
        ev.site_id,  # site
        key,  # key
        version,  # ver
        billable,  # billable
        reason,  # reason
        ev.ec,  # lc
        ev.ea,  # la
        ev.el,  # ll
        ev.received_ms,  # at_ms
        kind == EventKind.HEARTBEAT,  # hb
        session_uuid(ev.site_id, ev.sid, fp, day, key),  # sid
        _derived(ev.site_id, f"sid|{session_key}"),  # alt
        ",".join(ev.consent) if ev.consent is not None else None,  # consent
        (ev.ec, ev.ea) == _CONSENT,  # consent_set
        ev.ip,  # ip
        ev.url or None,  # url
        meta.exit_page,  # exit_page (none: the page itself; ingest_batch falls back to url)
        page.ref_host,  # ref
        ids.gclid,  # gclid
        ids.wbraid,  # wbraid
        ids.gbraid,  # gbraid
        page.other,  # other
        *page.template,  # utm_source .. feeditemid
        device_type,  # device_type
        device_os,  # device_os
        browser,  # browser
        meta.lan,  # lan
        meta.sw,  # sw
        meta.sh,  # sh
        meta.city,  # city
        meta.district,  # district
        fp,  # fp
        page.source,  # src
        page.medium,  # medium
        meta.duration_sec,  # dur
        meta.active_sec,  # active
        scroll,  # scroll
        meta.cta_hovers,  # cta
        page.attribution,  # attr
        score,  # score
        assist,  # assist
        page.assisted if assist else None,  # attr_a
        score_assisted if assist else None,  # score_a
        ev.ev,  # ev
        _json(  # meta
            EventMeta(  # by position, in EventMeta's order
                score,  # lead_score
                page.attribution,  # attribution_source
                ev.eid,  # eid
                ev.referrer,  # referrer
                meta.scroll_pct,  # scroll_pct
                meta.cta_hovers,  # cta_hovers
                meta.active_sec,  # active_sec
                meta.duration_sec,  # duration_sec
                meta.focus_dur,  # focus_dur
                target,  # intent_target
                captured.get("email_sha256"),  # email_sha256
                captured.get("phone_sha256"),  # phone_sha256
            )
        ),
        intent.value if intent is not None else None,  # intent
        target,  # target
        target_phone_number(target) if target is not None else None,  # phone
        ev.url[:2048] if intent is not None else None,  # page
        page.click_id,  # click_id
        page.click_type,  # click_type
        None,  # hint (the store's, just before sending)
        event_row_id(ev.received_ms, key),  # row_id
    )


def _dead_payload(ev: WireEvent) -> dict[str, Any]:
    """The event as a dead letter keeps it (enough to replay it)."""
    payload: dict[str, Any] = msgspec.to_builtins(
        {
            "site_id": ev.site_id,
            "received_ms": ev.received_ms,
            "url": ev.url,
            "eid": ev.eid,
            "sid": ev.sid,
            "ec": ev.ec,
            "ea": ev.ea,
            "el": ev.el,
            "ev": ev.ev,
            "r": ev.referrer,
            "consent": ev.consent,
            # a form's captured email and phone are never kept as sent (a replay goes without them)
            "meta": msgspec.structs.replace(ev.meta, **dict.fromkeys(PLAIN_META_KEYS)),
            "ip": ev.ip,
            "ua": ev.ua,
        }
    )
    return payload


class _DeadRow(msgspec.Struct):
    ord: int
    site: str
    key: str
    ver: int
    lc: str | None
    la: str | None
    ll: str | None
    stage: str
    reason: str
    payload: dict[str, Any]


_encode = msgspec.json.Encoder().encode


def _json(value: Any) -> str:
    """JSON text for a ``jsonb`` field of a batch row."""
    return _encode(value).decode()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def use_row_encoder(conn: asyncpg.Connection) -> bool:
    """Send this connection's batch rows (``ingest_batch``'s ``$4``) through the C encoder
    ``_pgrows`` instead of asyncpg's codecs; True when it is in use. For a pool's ``init``.
    The encoder takes the ``BatchEvent`` rows themselves (reading their fields where the
    struct keeps them: no tuple per row) as well as tuples.

    asyncpg encodes an array of composite rows field by field through its generic codecs,
    about a quarter of a partition's CPU per event, and its public ``set_type_codec`` takes
    no codec for an array type. So the encoder is registered for the array's OID through the
    protocol settings ``set_type_codec`` itself uses (asyncpg's internals). It is kept only
    when the C module is there, the SQL type has exactly ``BatchEvent``'s fields, and a row
    sent through it reads back as written; otherwise the connection keeps asyncpg's codecs
    (the same rows, more CPU) and this returns False."""
    encode = _ENCODE_ARRAY
    if encode is None:
        _say_once("the C row encoder was not built (no C compiler at install): batch rows go through asyncpg's codecs")
        return False
    info = await conn.fetchrow(Q.ingest.batch_row_type)
    if info is None or len(info["attr_oids"]) != len(BatchEvent.__struct_fields__):
        _say_once("the C row encoder is not in use: ingest_batch_event does not have BatchEvent's fields")
        return _refuse_structs()
    elem, oids, fields = int(info["oid"]), tuple(info["attr_oids"]), BatchEvent.__struct_fields__

    def encoder(rows: Sequence[BatchEvent | tuple[Any, ...]]) -> bytes:
        return encode(rows, elem, oids, BatchEvent, fields)

    try:
        settings = conn._protocol.get_settings()
        settings.add_python_codec(
            info["array_oid"], "_ingest_batch_event", "public", [], "scalar", encoder, _no_decode, "binary"
        )
        conn._drop_local_statement_cache()
    except (AttributeError, TypeError) as exc:  # another asyncpg: its own codecs stay
        _say_once(f"the C row encoder is not in use: asyncpg's codec settings refused it ({type(exc).__name__})")
        return _refuse_structs()
    if await _row_encoder_reads_back(conn):
        return True
    _say_once("the C row encoder is not in use: a row did not read back as written")
    settings.remove_python_codec(info["array_oid"], "_ingest_batch_event", "public")
    conn._drop_local_statement_cache()
    return _refuse_structs()


def _refuse_structs() -> bool:
    global _ROWS_AS_TUPLES
    _ROWS_AS_TUPLES = True
    return False


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    # once per process (a pool calls use_row_encoder for each of its connections)
    if message not in _SAID:
        _SAID.add(message)
        log.warning(message)


def _no_decode(data: bytes) -> Any:
    raise NotImplementedError("ingest_batch_event[] is never read back")


async def _row_encoder_reads_back(conn: asyncpg.Connection) -> bool:
    site = str(uuid.uuid4())
    values: dict[str, Any] = dict.fromkeys(BatchEvent.__struct_fields__)
    values.update(
        i=7,
        site=site,
        key="k\u00e9y",
        ver=2,
        billable=True,
        reason="page_view",
        at_ms=1_764_000_000_123,
        hb=False,
        sid=site,
        alt=site,
        consent_set=False,
        url="https://\u00fcber.example/\u0131?a=b,c",
        attr="Organic",
        score=15,
        assist=False,
        ev=-2.5,
        hint=dt.date(1999, 12, 31),
        srank=-3,
    )
    sample = BatchEvent(**values)
    try:
        # as a batch goes: the struct itself, or a tuple once a connection was refused
        got = [await conn.fetchrow(Q.ingest.batch_row_check, [row]) for row in (sample, astuple(sample))]
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError, TypeError, AttributeError):
        return False
    want = (7, site, "k\u00e9y", True, 1_764_000_000_123, -2.5, sample.url, dt.date(1999, 12, 31), -3)
    return all(row is not None and tuple(row) == want for row in got)


class IngestStore:
    """Writes batches of ``WireEvent`` for the sites of one partition (see module doc).

    ``pool`` is any asyncpg pool on the owner role; the partition gives it one whose
    connections are not reset on release (nothing per batch changes session state).
    ``encoded_rows``: every connection of ``pool`` ran ``use_row_encoder`` (its ``init``), so
    the batch rows go to the C encoder as they are, not as tuples for asyncpg's codecs."""

    def __init__(
        self, pool: asyncpg.Pool, *, clock: Callable[[], dt.datetime] = _utcnow, encoded_rows: bool = False
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._encoded_rows = encoded_rows
        # session hints (see the module doc and SESSION_HINT_MEMO_SIZE), oldest first
        self._hints: OrderedDict[tuple[str, str], dt.date] = OrderedDict()
        self.stats: dict[str, int] = {
            "batches": 0,
            "events": 0,
            "accepted": 0,
            "duplicate": 0,
            "rejected_quota": 0,
            "dead_letter": 0,
            "retried_batches": 0,
            "split_batches": 0,
            "expired_batches": 0,
        }

    # ------------------------------------------------------------------ public API

    async def ingest(self, events: Sequence[WireEvent], *, deadline: float | None = None) -> list[WireResult]:
        """Decide and store a batch; one result per event, returned after COMMIT.

        ``deadline`` (``time.monotonic()``): when no connection is free before it, the batch
        is dropped unwritten with ``CallExpired``."""
        if not events:
            return []
        now = self._clock()
        day = now.astimezone(dt.UTC).date()
        results: list[WireResult | None] = [None] * len(events)
        rows: list[BatchEvent] = []
        where: list[int] = []  # rows[k] answers events[where[k]]
        broken: list[tuple[int, WireEvent, str]] = []
        seen: set[tuple[str, str]] = set()
        for idx, ev in enumerate(events):
            try:
                row = prepare(ev, len(rows) + 1, day)
            except Exception as exc:  # one malformed event never breaks the batch
                broken.append((idx, ev, f"prepare: {type(exc).__name__}: {exc}"[:1000]))
                continue
            if (row.site, row.key) in seen:
                # the same event twice in one batch: the later copies are duplicates
                results[idx] = WireResult(status="duplicate", ingest_id=row.key)
                continue
            seen.add((row.site, row.key))
            rows.append(row)
            where.append(idx)
        _separate_sites(rows)
        if rows:
            for k, result in enumerate(await self._write(rows, events, where, now, deadline)):
                results[where[k]] = result
        if broken:
            captured = await self._dead_letters(
                [(ev, _fallback_key(ev, day), "prepare", reason) for _, ev, reason in broken], now
            )
            for (idx, _, _), result in zip(broken, captured, strict=True):
                results[idx] = result
        out = [r if r is not None else WireResult(status="duplicate") for r in results]
        self._count(out)
        return out

    async def replay_dead_letter(self, dead_letter_id: int, site_id: str) -> dict[str, Any]:
        """Run a PENDING ingest dead letter through the normal path again.

        Its leftover non-billable ledger row goes first (otherwise the event would be a
        duplicate), then the event is ingested as usual. Safe to repeat: a replayed dead
        letter is no longer PENDING, and the event itself is idempotent.
        """
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(Q.ingest.dead_letter_for_replay, dead_letter_id, uuid.UUID(site_id))
        if row is None:
            return {"status": "not_found"}
        if row["status"] != "PENDING" or row["source"] != "ingest":
            return {"status": "not_replayable", "dead_letter_status": row["status"]}
        payload = row["payload"]
        if isinstance(payload, str | bytes):
            payload = msgspec.json.decode(payload)
        payload = dict(payload)
        payload["referrer"] = payload.pop("r", None)
        try:
            payload["meta"] = msgspec.convert(payload.get("meta") or {}, MetaIn, strict=False)
            ev = WireEvent(**payload)
            key = prepare(ev, 1, self._clock().date()).key
        except Exception as exc:
            # the payload itself is unusable: keep it PENDING for a person to look at
            return {"status": "failed", "error": type(exc).__name__}
        async with self._pool.acquire() as conn:
            await conn.execute(Q.ingest.delete_dead_letter_ledger, ev.site_id, key)
        [result] = await self.ingest([ev])
        failed = "stored again as a dead letter" if result.stored == "dead_letter" else None
        async with self._pool.acquire() as conn:
            await conn.execute(Q.ingest.mark_dead_letter_replayed, dead_letter_id, failed)
        return {"status": "failed" if failed else result.status, "ingest_id": result.ingest_id}

    # ------------------------------------------------------------------ the write

    async def _write(
        self,
        rows: list[BatchEvent],
        events: Sequence[WireEvent],
        where: list[int],
        now: dt.datetime,
        deadline: float | None = None,
    ) -> list[WireResult]:
        try:
            return await self._batch(rows, now, deadline)
        except _DATA_ERRORS as exc:
            if len(rows) == 1:
                reason = f"store: {type(exc).__name__}: {exc}"[:1000]
                ev = events[where[0]]
                return await self._dead_letters([(ev, (rows[0].key, rows[0].ver), "partition", reason)], now)
            log.warning("ingest batch failed on its data, re-running it event by event: %s", type(exc).__name__)
            self.stats["split_batches"] += 1
        out: list[WireResult] = []
        for k, row in enumerate(rows):
            row.i = 1
            out.extend(await self._write([row], events, [where[k]], now))
        return out

    def hint_report(self) -> tuple[int, int]:
        """(entries now, bound) of the session hints (``/metrics``, the soak)."""
        return len(self._hints), SESSION_HINT_MEMO_SIZE

    async def _batch(self, rows: list[BatchEvent], now: dt.datetime, deadline: float | None) -> list[WireResult]:
        hints = self._hints
        # `nth` and `srank`: when every session id is there once and every event is new (the
        # usual batch), ingest_batch() needs no sort to number its session rounds or to rank
        # each site's billable events for the quota
        nth: dict[str, int] = {}
        rank: dict[str, int] = {}
        for row in rows:
            row.hint = hints.get((row.site, row.sid))
            row.nth = nth[row.sid] = nth.get(row.sid, 0) + 1
            if row.billable:
                row.srank = rank[row.site] = rank.get(row.site, 0) + 1
        payload = self._payload(rows)
        # the batch's sites (their month's usage is locked) and whether it holds a consent
        # event: known here, so ingest_batch() spends no statement of its own on them
        sites = sorted({row.site for row in rows})
        consent = any(row.consent_set for row in rows)
        for attempt in range(_ATTEMPTS):
            try:
                async with self._pool.acquire() as conn:
                    if deadline is not None and time.monotonic() > deadline:
                        self.stats["expired_batches"] += 1
                        raise CallExpired("the batch waited longer than the gateway's timeout")
                    if payload is rows and _ROWS_AS_TUPLES:  # a connection was refused the encoder since
                        payload = self._payload(rows)
                    record = await conn.fetchrow(Q.ingest.ingest_batch, now, sites, consent, payload)
                break
            except _AGAIN:
                # nothing was written; a session id another site took meanwhile is visible now,
                # and a hinted session may be gone: the batch runs again without hints
                if attempt == _ATTEMPTS - 1:
                    raise
                self.stats["retried_batches"] += 1
                if any(row.hint is not None for row in rows):
                    for row in rows:
                        if row.hint is not None:
                            hints.pop((row.site, row.sid), None)
                            row.hint = None
                    payload = self._payload(rows)
        assert record is not None
        status: str = record["status"]
        remaining: list[int | None] = record["remaining"]
        self._learn(rows, record["hints"], now)
        retry_after = seconds_to_next_month(now)
        out: list[WireResult] = []
        for row, letter, left in zip(rows, status, remaining, strict=True):
            if letter == "a":
                # (positional, in WireResult's order: built for every event)
                out.append(WireResult("accepted", row.key, left))  # status, ingest_id, quota_remaining
            elif letter == "d":
                out.append(WireResult(status="duplicate", ingest_id=row.key))
            elif letter == "o":
                out.append(WireResult(status="accepted", ingest_id=row.key, quota_remaining=0, overage=True))
            else:
                out.append(
                    WireResult(status="rejected_quota", ingest_id=row.key, quota_remaining=0, retry_after_s=retry_after)
                )
        return out

    def _payload(self, rows: list[BatchEvent]) -> list[BatchEvent] | list[tuple[Any, ...]]:
        """``ingest_batch``'s rows as sent: the structs themselves to the C encoder (it reads
        their fields where they are: ~0.8 us per row less than a tuple each), tuples to
        asyncpg's codecs."""
        return rows if self._encoded_rows and not _ROWS_AS_TUPLES else [astuple(row) for row in rows]

    def _learn(self, rows: list[BatchEvent], codes: str, now: dt.datetime) -> None:
        """Keep what the committed batch says about each event's session: ``c`` (this month)
        or ``p`` (last month) when the session has the id the event was sent with, else ``-``
        (not written, or written under the derived id)."""
        hints = self._hints
        cur = month_start(now)
        prev = (cur - dt.timedelta(days=1)).replace(day=1)
        for row, code in zip(rows, codes, strict=True):
            key = (row.site, row.sid)
            if code == "c" or code == "p":
                hints[key] = cur if code == "c" else prev
                hints.move_to_end(key)
            elif row.hint is not None:
                hints.pop(key, None)
        while len(hints) > SESSION_HINT_MEMO_SIZE:
            hints.popitem(last=False)

    async def _dead_letters(
        self, items: list[tuple[WireEvent, tuple[str, int], str, str]], now: dt.datetime
    ) -> list[WireResult]:
        """Capture events in dead_letters with a non-billable ledger row (a re-send is then a
        duplicate, never billed twice)."""
        rows = [
            _DeadRow(
                ord=k,
                site=ev.site_id,
                key=key,
                ver=ver,
                lc=ev.ec,
                la=ev.ea,
                ll=ev.el,
                stage=stage,
                reason=reason,
                payload=_dead_payload(ev),
            )
            for k, (ev, (key, ver), stage, reason) in enumerate(items)
        ]
        async with self._pool.acquire() as conn:
            status = await conn.fetchval(Q.ingest.ingest_dead_letters, now, _encode(rows).decode())
        self.stats["dead_letter"] += status.count("a")
        return [
            WireResult(status="accepted", ingest_id=row.key, stored="dead_letter")
            if letter == "a"
            else WireResult(status="duplicate", ingest_id=row.key)
            for row, letter in zip(rows, status, strict=True)
        ]

    def _count(self, results: list[WireResult]) -> None:
        stats = self.stats
        stats["batches"] += 1
        stats["events"] += len(results)
        # (counted in C, not a Python step per event; dead letters are counted as they are
        # written, in _dead_letters)
        for status, n in Counter(map(_STATUS, results)).items():
            stats[status] = stats.get(status, 0) + n


_STATUS = operator.attrgetter("status")


def _separate_sites(rows: list[BatchEvent]) -> None:
    """Two sites never share a session id inside one batch (rows are grouped by id): every
    site after the first that uses an id takes its own derived id."""
    owner: dict[str, str] = {}
    for row in rows:
        first = owner.setdefault(row.sid, row.site)
        if first != row.site:
            row.sid = row.alt
            owner.setdefault(row.sid, row.site)


def _fallback_key(ev: WireEvent, day: dt.date) -> tuple[str, int]:
    """The idempotency key of an event that could not be prepared (as far as it can be
    computed: the key depends on few fields)."""
    try:
        return idempotency_key(
            ev.site_id,
            eid=ev.eid,
            ec=ev.ec,
            ea=ev.ea,
            el=ev.el,
            url=ev.url,
            fp=(ev.meta.fp or None) if isinstance(ev.meta, MetaIn) else None,
            sid=ev.sid,
            server_ms=ev.received_ms,
        )
    except Exception:
        return f"unprepared:{uuid.uuid4().hex}", 1
