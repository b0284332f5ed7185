"""The batch writer a ``SitePartition`` runs: SPEC.md §3 steps 1-9, one transaction per batch.

``IngestStore.ingest(events)`` answers one ``WireResult`` per event, in order, and returns
only after COMMIT, so the gateway's 2xx means the event is durable. Each table gets one
statement per batch (rows travel as arrays through ``unnest``):

1. ``lock_usage``       lock and read the month's usage of the batch's sites
2. ``insert_ledger``    idempotency keys; rows not inserted are duplicates
3. ``update_ledger_quota`` (only when needed) overage and quota refusals
4. ``find_sessions``    (cache misses only) sessions by id, current and previous month
5. ``fingerprint_history`` (cache misses only) returning visitors, earlier click ids
6. ``upsert_sessions``  create or fill + update stats
7. ``insert_events``    event rows (not heartbeats)
8. ``upsert_intents``   one intent per session for phone/WhatsApp/form conversions
9. ``add_usage``        month counters

In memory (per partition, so a restart only costs cache misses): recent sessions by
(site, client session id), recent sessions by (site, fingerprint), and plans. PostgreSQL
stays the authority: usage is read under a row lock in every batch (exact quota even when
two writers briefly share a site during a resize), and every cache is filled from it.

Same-site batches are serialised by an asyncio lock per site (caches are updated after
COMMIT, before the lock is released); batches of different sites run concurrently.

An event that cannot be written (a data error on its row) is retried alone inside a
savepoint; if it still fails it is stored in ``dead_letters`` with the reason and a
non-billable ledger row (so a re-send is a duplicate), and the rest of the batch commits.
Replaying a dead letter must first remove that ledger row.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from opsmantik_stream.enums import BillingState, IntentAction
from opsmantik_stream.ingest import attribution as attr
from opsmantik_stream.ingest.billing import (
    DEFAULT_PLAN,
    BillingReason,
    Plan,
    classify_billable,
    decide_quota,
    month_start,
    seconds_to_next_month,
    year_month,
)
from opsmantik_stream.ingest.intents import detect_intent, intent_target, target_phone_number
from opsmantik_stream.ingest.keys import EventKind, event_kind, idempotency_key
from opsmantik_stream.ingest.schema import WireEvent, WireResult
from opsmantik_stream.ingest.scoring import lead_score
from opsmantik_stream.queries import Q

__all__ = ["SESSION_NAMESPACE", "IngestStore", "session_uuid"]

log = logging.getLogger(__name__)

# uuid5 namespace for session ids the server derives (no sid, a non-UUID sid, or a sid
# that another site already uses).
SESSION_NAMESPACE = uuid.UUID("5b0f6a52-3c1e-4d0e-9a7b-0c61d1f0a4e2")

_RETURNING_WINDOW = dt.timedelta(days=7)
_HISTORY_MONTHS = 6
_EVENT_ROW_SKIP = frozenset({EventKind.HEARTBEAT})

# Errors that belong to one event's data (class 22 data exception, class 23 integrity
# violation) or to our own processing of it: the batch is retried event by event.
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    ValueError,
    TypeError,
    KeyError,
)


def session_uuid(site_id: str, sid: str | None, fp: str | None, day: dt.date, key: str) -> uuid.UUID:
    """The session id for a client session id: the sid itself when it is a UUID, else a
    stable id derived from it (or from the fingerprint and day, or from the event)."""
    if sid:
        try:
            return uuid.UUID(sid)
        except ValueError:
            return uuid.uuid5(SESSION_NAMESPACE, f"{site_id}|sid|{sid}")
    if fp:
        return uuid.uuid5(SESSION_NAMESPACE, f"{site_id}|fp|{fp}|{day.isoformat()}")
    return uuid.uuid5(SESSION_NAMESPACE, f"{site_id}|key|{key}")


def _int(value: Any, lo: int = 0, hi: int = 2_000_000_000) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return max(lo, min(hi, number))


def _text(value: Any, limit: int) -> str | None:
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = str(value).strip()
    return text[:limit] or None


@dataclass(slots=True)
class SessionInfo:
    id: uuid.UUID
    month: dt.date
    created_at: dt.datetime
    fingerprint: str | None = None
    gclid: str | None = None
    wbraid: str | None = None
    gbraid: str | None = None

    def click_ids(self) -> attr.ClickIds:
        return attr.ClickIds(gclid=self.gclid, wbraid=self.wbraid, gbraid=self.gbraid)


@dataclass(slots=True)
class FingerprintInfo:
    """Recent sessions of one (site, fingerprint): id -> (created_at, had a click id)."""

    sessions: dict[uuid.UUID, tuple[dt.datetime, bool]]
    loaded_at: float

    def returning_count(self, now: dt.datetime, exclude: uuid.UUID) -> int:
        since = now - _RETURNING_WINDOW
        return sum(1 for sid, (at, _) in self.sessions.items() if sid != exclude and at >= since)

    def earlier_click(self, exclude: uuid.UUID) -> bool:
        return any(has for sid, (_, has) in self.sessions.items() if has and sid != exclude)


@dataclass(slots=True)
class Item:
    """One event being processed, with everything derived from it."""

    idx: int
    ev: WireEvent
    key: str
    version: int
    kind: EventKind
    billable: bool
    reason: str
    fp: str | None
    ids: attr.ClickIds
    utm: dict[str, str]
    ref_host: str | None
    device: attr.Device
    intent: IntentAction | None
    target: str | None
    received_at: dt.datetime
    session_key: tuple[str, str]
    session_id: uuid.UUID
    # filled while writing
    session: SessionInfo | None = None
    score: int = 0
    attribution: str | None = None


@dataclass
class _Pending:
    """Cache changes of a transaction, applied only after it committed."""

    sessions: dict[tuple[str, str], SessionInfo] = field(default_factory=dict)
    # (site, fp) -> sessions: complete histories read from PostgreSQL in this transaction
    fp_fresh: dict[tuple[str, str], dict[uuid.UUID, tuple[dt.datetime, bool]]] = field(default_factory=dict)
    # (site, fp) -> sessions this transaction created or gave a click id
    fp_updates: dict[tuple[str, str], dict[uuid.UUID, tuple[dt.datetime, bool]]] = field(default_factory=dict)

    def merge(self, other: _Pending) -> None:
        self.sessions.update(other.sessions)
        for mine, theirs in ((self.fp_fresh, other.fp_fresh), (self.fp_updates, other.fp_updates)):
            for fkey, sessions in theirs.items():
                mine.setdefault(fkey, {}).update(sessions)


class _Retry(Exception):
    """A session-id conflict with another site's session (created concurrently or in the same
    batch). The batch is re-run event by event, where each event sees the rows written before
    it and derives its own session id; one event's conflict never fails the others."""


# Either re-runs the batch event by event (a savepoint each) instead of failing the call.
_BATCH_RETRY_ERRORS: tuple[type[BaseException], ...] = (*_DATA_ERRORS, _Retry)


class _LRU(OrderedDict[Any, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_fresh(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class IngestStore:
    """Writes batches of ``WireEvent`` for the sites of one partition (see module doc)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        clock: Callable[[], dt.datetime] = _utcnow,
        session_cache_size: int = 50_000,
        fingerprint_cache_size: int = 50_000,
        fingerprint_ttl_s: float = 600.0,
        plan_ttl_s: float = 60.0,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._sessions = _LRU(session_cache_size)
        self._fingerprints = _LRU(fingerprint_cache_size)
        self._fp_ttl_s = fingerprint_ttl_s
        self._plans: dict[str, tuple[Plan, float]] = {}
        self._plan_ttl_s = plan_ttl_s
        self._site_locks: dict[str, asyncio.Lock] = {}
        self.stats: dict[str, int] = {
            "batches": 0,
            "events": 0,
            "accepted": 0,
            "duplicate": 0,
            "rejected_quota": 0,
            "dead_letter": 0,
        }

    # ------------------------------------------------------------------ public API

    async def ingest(self, events: list[WireEvent]) -> list[WireResult]:
        """Decide and store a batch; one result per event, returned after COMMIT."""
        if not events:
            return []
        now = self._clock()
        results: dict[int, WireResult] = {}
        items: list[Item] = []
        broken: list[tuple[WireEvent, str]] = []
        for idx, ev in enumerate(events):
            try:
                items.append(self._prepare(idx, ev, now))
            except Exception as exc:  # one malformed event never breaks the batch
                broken.append((ev, f"prepare: {type(exc).__name__}: {exc}"))
                results[idx] = WireResult(status="accepted", stored="dead_letter")
        sites = sorted({ev.site_id for ev in events})
        async with AsyncExitStack() as locks:
            for site in sites:
                await locks.enter_async_context(self._site_locks.setdefault(site, asyncio.Lock()))
            plans = await self._load_plans(sites)
            async with self._pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        pending = _Pending()
                        results.update(await self._write(conn, items, now, plans, pending, use_cache=True))
                        if broken:
                            await self._dead_letter(conn, broken, "prepare")
                except _BATCH_RETRY_ERRORS as exc:
                    log.warning("ingest batch failed on its data, retrying event by event: %s", type(exc).__name__)
                    pending = _Pending()
                    async with conn.transaction():
                        results.update(await self._write_one_by_one(conn, items, now, plans, pending))
                        if broken:
                            await self._dead_letter(conn, broken, "prepare")
            self._apply(pending)
        ordered = [results[i] for i in range(len(events))]
        self._count(ordered)
        return ordered

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
        payload = dict(row["payload"])
        payload["referrer"] = payload.pop("r", None)
        try:
            ev = WireEvent(**payload)
            key = self._prepare(0, ev, self._clock()).key
        except Exception as exc:
            # the payload itself is unusable: keep it PENDING for a person to look at
            return {"status": "failed", "error": type(exc).__name__}
        await self._pool.execute(Q.ingest.delete_dead_letter_ledger, ev.site_id, key)
        [result] = await self.ingest([ev])
        failed = "stored again as a dead letter" if result.stored == "dead_letter" else None
        await self._pool.execute(Q.ingest.mark_dead_letter_replayed, dead_letter_id, failed)
        return {"status": "failed" if failed else result.status, "ingest_id": result.ingest_id}

    def cache_sizes(self) -> dict[str, int]:
        return {
            "sessions": len(self._sessions),
            "fingerprints": len(self._fingerprints),
            "plans": len(self._plans),
        }

    # ------------------------------------------------------------------ preparation

    def _prepare(self, idx: int, ev: WireEvent, now: dt.datetime) -> Item:
        meta = ev.meta
        fp = _text(meta.get("fp"), 128)
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
        kind = event_kind(ev.ec, ev.ea)
        billable, reason = classify_billable(ev.ec, ev.ea)
        params = attr.url_params(ev.url)
        ids = attr.click_ids(params, meta)
        utm = attr.template_params(params, meta)
        intent = (
            None
            if kind == EventKind.HEARTBEAT
            else detect_intent(ev.ec, ev.ea, ev.el, _text(meta.get("intent_action"), 64))
        )
        target = intent_target(intent, ev.el, _text(meta.get("phone_number"), 256)) if intent else None
        sid_key = ev.sid or (f"fp:{fp}:{now.date().isoformat()}" if fp else f"key:{key}")
        return Item(
            idx=idx,
            ev=ev,
            key=key,
            version=version,
            kind=kind,
            billable=billable,
            reason=str(reason),
            fp=fp,
            ids=ids,
            utm=utm,
            ref_host=attr.referrer_host(ev.referrer, ev.url),
            device=attr.parse_device(ev.ua, utm.get("device")),
            intent=intent,
            target=target,
            received_at=dt.datetime.fromtimestamp(ev.received_ms / 1000, dt.UTC),
            session_key=(ev.site_id, sid_key),
            session_id=session_uuid(ev.site_id, ev.sid, fp, now.date(), key),
        )

    async def _load_plans(self, sites: list[str]) -> dict[str, Plan]:
        mono = time.monotonic()
        missing = [s for s in sites if s not in self._plans or mono - self._plans[s][1] > self._plan_ttl_s]
        if missing:
            rows = await self._pool.fetch(Q.ingest.plans_for_sites, missing)
            for row in rows:
                if row["monthly_limit"] is None:
                    plan = DEFAULT_PLAN
                else:
                    plan = Plan(
                        monthly_limit=int(row["monthly_limit"]),
                        soft_limit=bool(row["soft_limit_enabled"]),
                        hard_cap_multiplier=float(row["hard_cap_multiplier"]),
                    )
                self._plans[str(row["site_id"])] = (plan, mono)
        return {s: self._plans[s][0] for s in sites}

    # ------------------------------------------------------------------ the transaction

    async def _write_one_by_one(
        self,
        conn: asyncpg.Connection,
        items: list[Item],
        now: dt.datetime,
        plans: dict[str, Plan],
        pending: _Pending,
    ) -> dict[int, WireResult]:
        results: dict[int, WireResult] = {}
        for item in items:
            for attempt in range(2):
                try:
                    async with conn.transaction():  # a savepoint per event
                        step = _Pending()
                        results.update(await self._write(conn, [item], now, plans, step, use_cache=False))
                except _Retry as exc:
                    # the conflicting session is visible now: the second try derives another id
                    if attempt == 0:
                        continue
                    results[item.idx] = await self._dead_letter_item(conn, item, now, f"store: {exc}")
                except _DATA_ERRORS as exc:
                    reason = f"store: {type(exc).__name__}: {exc}"[:1000]
                    results[item.idx] = await self._dead_letter_item(conn, item, now, reason)
                else:
                    pending.merge(step)
                break
        return results

    async def _dead_letter_item(
        self, conn: asyncpg.Connection, item: Item, now: dt.datetime, reason: str
    ) -> WireResult:
        ev = item.ev
        inserted = await conn.fetch(
            Q.ingest.insert_ledger,
            [ev.site_id],
            [item.key],
            now,
            [False],
            [BillingState.NOT_BILLABLE.value],
            [BillingReason.DEAD_LETTER.value],
            [item.version],
            [_text(ev.ec, 256)],
            [_text(ev.ea, 256)],
            [_text(ev.el, 512)],
        )
        if not inserted:
            return WireResult(status="duplicate", ingest_id=item.key)
        await self._dead_letter(conn, [(ev, reason)], "partition")
        return WireResult(status="accepted", ingest_id=item.key, stored="dead_letter")

    async def _dead_letter(self, conn: asyncpg.Connection, broken: list[tuple[WireEvent, str]], stage: str) -> None:
        await conn.execute(
            Q.ingest.insert_dead_letters,
            [ev.site_id for ev, _ in broken],
            [stage] * len(broken),
            [reason[:1000] for _, reason in broken],
            [msgspec.json.encode(msgspec.to_builtins(_dead_payload(ev))).decode() for ev, _ in broken],
        )

    async def _write(
        self,
        conn: asyncpg.Connection,
        items: list[Item],
        now: dt.datetime,
        plans: dict[str, Plan],
        pending: _Pending,
        *,
        use_cache: bool,
    ) -> dict[int, WireResult]:
        results: dict[int, WireResult] = {}
        if not items:
            return results
        ym = year_month(now)

        # A key twice in one batch: the later copies are duplicates of the first.
        candidates: list[Item] = []
        seen: set[tuple[str, str]] = set()
        for item in items:
            k = (item.ev.site_id, item.key)
            if k in seen:
                results[item.idx] = WireResult(status="duplicate", ingest_id=item.key)
            else:
                seen.add(k)
                candidates.append(item)

        # 1. lock and read the month's usage of these sites
        sites = sorted({item.ev.site_id for item in candidates})
        used: dict[str, int] = {}
        for row in await conn.fetch(Q.ingest.lock_usage, sites, ym):
            used[str(row["site_id"])] = int(row["event_count"])

        # 2. the idempotency gate
        rows = await conn.fetch(
            Q.ingest.insert_ledger,
            [i.ev.site_id for i in candidates],
            [i.key for i in candidates],
            now,
            [i.billable for i in candidates],
            [(BillingState.ACCEPTED if i.billable else BillingState.NOT_BILLABLE).value for i in candidates],
            [i.reason for i in candidates],
            [i.version for i in candidates],
            [_text(i.ev.ec, 256) for i in candidates],
            [_text(i.ev.ea, 256) for i in candidates],
            [_text(i.ev.el, 512) for i in candidates],
        )
        inserted = {(str(r["site_id"]), r["idempotency_key"]) for r in rows}

        # 3. quota, in arrival order, from the locked usage
        stored: list[Item] = []
        fixes: list[tuple[str, str, bool, str, str]] = []
        delta: dict[str, list[int]] = {}  # site -> [billable, overage, rejected]
        retry_after = seconds_to_next_month(now)
        for item in candidates:
            site = item.ev.site_id
            if (site, item.key) not in inserted:
                results[item.idx] = WireResult(status="duplicate", ingest_id=item.key)
                continue
            if not item.billable:
                stored.append(item)
                results[item.idx] = WireResult(status="accepted", ingest_id=item.key)
                continue
            decision = decide_quota(plans.get(site, DEFAULT_PLAN), used.get(site, 0))
            counts = delta.setdefault(site, [0, 0, 0])
            if not decision.accepted:
                counts[2] += 1
                fixes.append(
                    (
                        site,
                        item.key,
                        False,
                        BillingState.REJECTED_QUOTA.value,
                        BillingReason.REJECTED_QUOTA.value,
                    )
                )
                results[item.idx] = WireResult(
                    status="rejected_quota", ingest_id=item.key, quota_remaining=0, retry_after_s=retry_after
                )
                continue
            used[site] = used.get(site, 0) + 1
            counts[0] += 1
            if decision.overage:
                counts[1] += 1
                fixes.append((site, item.key, True, BillingState.OVERAGE.value, item.reason))
            stored.append(item)
            results[item.idx] = WireResult(
                status="accepted",
                ingest_id=item.key,
                quota_remaining=decision.remaining,
                overage=decision.overage,
            )
        if fixes:
            await conn.execute(Q.ingest.update_ledger_quota, *map(list, zip(*fixes, strict=True)))

        if stored:
            await self._write_tracking(conn, stored, now, pending, use_cache=use_cache)

        # 9. month counters
        if delta:
            dsites = sorted(delta)
            await conn.execute(
                Q.ingest.add_usage,
                dsites,
                [delta[s][0] for s in dsites],
                [delta[s][1] for s in dsites],
                [delta[s][2] for s in dsites],
                ym,
            )
        return results

    async def _write_tracking(
        self,
        conn: asyncpg.Connection,
        items: list[Item],
        now: dt.datetime,
        pending: _Pending,
        *,
        use_cache: bool,
    ) -> None:
        await self._resolve_sessions(conn, items, now, pending, use_cache=use_cache)
        history = await self._fingerprint_history(conn, items, now, pending, use_cache=use_cache)

        # 5-6. attribution and score per event
        for item in items:
            assert item.session is not None
            fh = history.get((item.ev.site_id, item.fp)) if item.fp else None
            earlier = fh.earlier_click(item.session.id) if fh is not None else False
            utm_medium = item.utm.get("utm_medium")
            item.attribution = attr.attribution_source(
                item.ids, utm_medium, item.ref_host, earlier_click_on_site=earlier
            )
            meta = item.ev.meta
            item.score = lead_score(
                category=item.ev.ec,
                action=item.ev.ea,
                value=item.ev.ev,
                scroll_pct=_num(meta.get("scroll_pct")),
                cta_hovers=_int(meta.get("cta_hovers")),
                google_referrer=attr.is_google_host(item.ref_host),
                ads_assisted=item.attribution == attr.Attribution.ADS_ASSISTED,
            )

        # 6. sessions: one row per session touched by the batch
        rows = self._session_rows(items, now, history)
        returned = await conn.fetch(Q.ingest.upsert_sessions, *rows)
        by_id = {(r["id"], r["created_month"]): r for r in returned}
        for item in items:
            info = item.session
            assert info is not None
            row = by_id.get((info.id, info.month))
            if row is None:
                # the id belongs to another site's session created concurrently: let the
                # client retry, the next attempt sees that session and derives another id
                raise _Retry("session id collision with another site")
            info.gclid, info.wbraid, info.gbraid = row["gclid"], row["wbraid"], row["gbraid"]
            info.fingerprint = row["fingerprint"]
            pending.sessions[item.session_key] = info
            if info.fingerprint:
                has_click = bool(info.gclid or info.wbraid or info.gbraid)
                pending.fp_updates.setdefault((item.ev.site_id, info.fingerprint), {})[info.id] = (
                    info.created_at,
                    has_click,
                )

        # 7. event rows (heartbeats only update the session)
        event_items = [i for i in items if i.kind not in _EVENT_ROW_SKIP]
        if event_items:
            await conn.execute(Q.ingest.insert_events, *self._event_rows(event_items))

        # 8. intents
        intent_items = [i for i in items if i.intent is not None]
        if intent_items:
            await conn.execute(Q.ingest.upsert_intents, *self._intent_rows(intent_items))

    async def _resolve_sessions(
        self,
        conn: asyncpg.Connection,
        items: list[Item],
        now: dt.datetime,
        pending: _Pending,
        *,
        use_cache: bool,
    ) -> None:
        """Attach a SessionInfo to every item: cache, else PostgreSQL (this and last month),
        else a new session in the server's current UTC month."""
        month = month_start(now)
        prev = (month - dt.timedelta(days=1)).replace(day=1)
        unresolved: dict[tuple[str, str], list[Item]] = {}
        for item in items:
            info = pending.sessions.get(item.session_key)
            if info is None and use_cache:
                info = self._sessions.get_fresh(item.session_key)
            if info is not None:
                item.session = info
            else:
                unresolved.setdefault(item.session_key, []).append(item)
        if not unresolved:
            return
        wanted = {skey: group[0].session_id for skey, group in unresolved.items()}
        # New sessions of one batch never share an id across sites: rows are grouped by id,
        # so a shared id would put one site's events into another site's session.
        new_owner: dict[uuid.UUID, str] = {}
        for attempt in range(2):
            ids = sorted(set(wanted.values()))
            found: dict[uuid.UUID, list[asyncpg.Record]] = {}
            for row in await conn.fetch(Q.ingest.find_sessions, ids, [month, prev]):
                found.setdefault(row["id"], []).append(row)
            clashes = False
            for skey, sid in list(wanted.items()):
                rows = found.get(sid, [])
                site = skey[0]
                own = [r for r in rows if str(r["site_id"]) == site]
                if own:
                    row = max(own, key=lambda r: r["created_month"])
                    info = SessionInfo(
                        id=sid,
                        month=row["created_month"],
                        created_at=row["created_at"],
                        fingerprint=row["fingerprint"],
                        gclid=row["gclid"],
                        wbraid=row["wbraid"],
                        gbraid=row["gbraid"],
                    )
                elif rows and attempt == 0:
                    # another site uses this session id: never share it, derive our own
                    wanted[skey] = uuid.uuid5(SESSION_NAMESPACE, f"{site}|sid|{skey[1]}")
                    clashes = True
                    continue
                elif rows:
                    raise _Retry("derived session id already taken")
                else:
                    if new_owner.setdefault(sid, site) != site:
                        sid = uuid.uuid5(SESSION_NAMESPACE, f"{site}|sid|{skey[1]}")
                        new_owner[sid] = site
                    info = SessionInfo(id=sid, month=month, created_at=now)
                for item in unresolved[skey]:
                    item.session = info
                del wanted[skey]
            if not clashes:
                break

    async def _fingerprint_history(
        self,
        conn: asyncpg.Connection,
        items: list[Item],
        now: dt.datetime,
        pending: _Pending,
        *,
        use_cache: bool,
    ) -> dict[tuple[str, str], FingerprintInfo]:
        """History of the (site, fingerprint) pairs that need it: new sessions (returning
        visitor count) and events with a Google referrer (Ads Assisted)."""
        mono = time.monotonic()
        out: dict[tuple[str, str], FingerprintInfo] = {}
        missing: set[tuple[str, str]] = set()
        for item in items:
            if not item.fp:
                continue
            assert item.session is not None
            is_new = item.session.created_at == now
            if not (is_new or attr.is_google_host(item.ref_host)):
                continue
            fkey = (item.ev.site_id, item.fp)
            if fkey in out or fkey in missing:
                continue
            cached = self._fingerprints.get_fresh(fkey) if use_cache else None
            if cached is not None and mono - cached.loaded_at <= self._fp_ttl_s:
                out[fkey] = FingerprintInfo(sessions=dict(cached.sessions), loaded_at=cached.loaded_at)
            else:
                missing.add(fkey)
        if missing:
            keys = sorted(missing)
            since = month_start(now)
            for _ in range(_HISTORY_MONTHS - 1):
                since = (since - dt.timedelta(days=1)).replace(day=1)
            for fkey in keys:
                out[fkey] = FingerprintInfo(sessions={}, loaded_at=mono)
            rows = await conn.fetch(Q.ingest.fingerprint_history, [k[0] for k in keys], [k[1] for k in keys], since)
            for row in rows:
                out[(str(row["site_id"]), row["fp"])].sessions[row["id"]] = (
                    row["created_at"],
                    row["has_click"],
                )
            for fkey in keys:
                pending.fp_fresh[fkey] = dict(out[fkey].sessions)
        return out

    # ------------------------------------------------------------------ row building

    def _session_rows(
        self, items: list[Item], now: dt.datetime, history: dict[tuple[str, str], FingerprintInfo]
    ) -> list[list[Any]]:
        groups: dict[uuid.UUID, list[Item]] = {}
        for item in items:
            assert item.session is not None
            groups.setdefault(item.session.id, []).append(item)
        cols: list[list[Any]] = [[] for _ in range(45)]
        for sid, group in groups.items():
            info = group[0].session
            assert info is not None
            first = group[0]
            last = group[-1]

            def pick(get: Callable[[Item], Any], group: list[Item] = group) -> Any:
                for it in group:
                    value = get(it)
                    if value is not None:
                        return value
                return None

            ids = pick(lambda i: i.ids if i.ids.google else None) or first.ids
            other: dict[str, str] = {}
            for it in reversed(group):
                other.update(it.ids.other)
            utm: dict[str, str] = {}
            for it in reversed(group):
                utm.update(it.utm)
            ref = pick(lambda i: i.ref_host)
            fp = pick(lambda i: i.fp)
            traffic = attr.traffic_source(ids, utm, ref)
            previous = 0
            if info.created_at == now and fp:
                fh = history.get((first.ev.site_id, fp))
                previous = fh.returning_count(now, sid) if fh is not None else 0
            exit_page = None
            for it in group:
                exit_page = _text(it.ev.meta.get("exit_page"), 4096) or it.ev.url or exit_page
            meta_max = _max_meta(group)
            values = [
                sid,
                first.ev.site_id,
                info.month,
                info.created_at,
                max(i.received_at for i in group),
                pick(lambda i: i.ev.ip),
                first.ev.url or None,
                exit_page,
                ref,
                ids.gclid,
                ids.wbraid,
                ids.gbraid,
                msgspec.json.encode(other).decode(),
                utm.get("utm_source"),
                utm.get("utm_medium"),
                utm.get("utm_campaign"),
                utm.get("utm_term"),
                utm.get("utm_content"),
                utm.get("utm_adgroup"),
                utm.get("matchtype"),
                utm.get("network"),
                utm.get("placement"),
                utm.get("adposition"),
                utm.get("targetid"),
                utm.get("feeditemid"),
                first.device.device_type if first.ev.ua else None,
                first.device.os if first.ev.ua else None,
                first.device.browser if first.ev.ua else None,
                pick(lambda i: _text(i.ev.meta.get("lan"), 64)),
                pick(lambda i: _int(i.ev.meta.get("sw"), 0, 100_000)),
                pick(lambda i: _int(i.ev.meta.get("sh"), 0, 100_000)),
                pick(lambda i: _text(i.ev.meta.get("city"), 128)),
                pick(lambda i: _text(i.ev.meta.get("district"), 128)),
                fp,
                first.attribution,
                traffic[0],
                traffic[1],
                previous,
                sum(1 for i in group if i.kind not in _EVENT_ROW_SKIP),
                meta_max["duration_sec"],
                meta_max["active_sec"],
                min(100, meta_max["scroll"]),
                meta_max["cta_hovers"],
                max(i.score for i in group),
                ",".join(last.ev.consent),
            ]
            for col, value in zip(cols, values, strict=True):
                col.append(value)
        return cols

    def _event_rows(self, items: list[Item]) -> list[list[Any]]:
        cols: list[list[Any]] = [[] for _ in range(12)]
        for item in items:
            ev = item.ev
            info = item.session
            assert info is not None
            metadata = dict(ev.meta)
            metadata.update(
                {
                    "referrer": ev.referrer,
                    "fingerprint": item.fp,
                    "eid": ev.eid,
                    "lead_score": item.score,
                    "attribution_source": item.attribution,
                    "gclid": item.ids.gclid,
                    "wbraid": item.ids.wbraid,
                    "gbraid": item.ids.gbraid,
                    "consent_scopes": ev.consent,
                    "device_type": item.device.device_type,
                    "client_sid": ev.sid,
                }
            )
            if item.intent is not None:
                metadata["intent_target"] = item.target
            values = [
                uuid.uuid4(),
                info.id,
                info.month,
                ev.site_id,
                item.received_at,
                ev.url,
                (ev.ec or "interaction")[:256],
                (ev.ea or "view")[:256],
                ev.el,
                ev.ev,
                msgspec.json.encode(metadata).decode(),
                item.key,
            ]
            for col, value in zip(cols, values, strict=True):
                col.append(value)
        return cols

    def _intent_rows(self, items: list[Item]) -> list[list[Any]]:
        groups: dict[uuid.UUID, list[Item]] = {}
        for item in items:
            assert item.session is not None
            groups.setdefault(item.session.id, []).append(item)
        cols: list[list[Any]] = [[] for _ in range(16)]
        for group in groups.values():
            last = group[-1]
            info = last.session
            assert info is not None and last.target is not None and last.intent is not None
            best: tuple[str | None, str | None] = (None, None)
            rank = {"gclid": 0, "wbraid": 1, "gbraid": 2}
            for it in [*group]:
                for cand in (it.ids.best(), info.click_ids().best()):
                    if cand[1] is not None and (best[1] is None or rank[cand[1]] < rank[best[1]]):
                        best = cand
            number = None
            for it in reversed(group):
                number = target_phone_number(it.target or "")
                if number:
                    break
            values = [
                last.ev.site_id,
                info.id,
                info.month,
                number,
                info.fingerprint or last.fp,
                max(i.score for i in group),
                last.intent.value,
                last.target,
                last.ev.url[:2048],
                sum(1 for i in group if i.intent == IntentAction.PHONE),
                sum(1 for i in group if i.intent == IntentAction.WHATSAPP),
                sum(1 for i in group if i.intent == IntentAction.FORM),
                min(i.received_at for i in group),
                max(i.received_at for i in group),
                best[0],
                best[1],
            ]
            for col, value in zip(cols, values, strict=True):
                col.append(value)
        return cols

    # ------------------------------------------------------------------ caches

    def _apply(self, pending: _Pending) -> None:
        for skey, info in pending.sessions.items():
            self._sessions.put(skey, info)
        mono = time.monotonic()
        for fkey, sessions in pending.fp_fresh.items():
            self._fingerprints.put(fkey, FingerprintInfo(sessions=dict(sessions), loaded_at=mono))
        for fkey, sessions in pending.fp_updates.items():
            current = self._fingerprints.get(fkey)
            # Only a complete read from PostgreSQL may start an entry (a partial one would
            # undercount returning visits); later sessions are added to a live entry.
            if current is not None and mono - current.loaded_at <= self._fp_ttl_s:
                current.sessions.update(sessions)

    def _count(self, results: Iterable[WireResult]) -> None:
        self.stats["batches"] += 1
        for r in results:
            self.stats["events"] += 1
            if r.stored == "dead_letter":
                self.stats["dead_letter"] += 1
            self.stats[r.status] = self.stats.get(r.status, 0) + 1


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _max_meta(group: list[Item]) -> dict[str, int]:
    out = {"duration_sec": 0, "active_sec": 0, "scroll": 0, "cta_hovers": 0}
    for it in group:
        meta = it.ev.meta
        out["duration_sec"] = max(out["duration_sec"], _int(meta.get("duration_sec")) or 0)
        out["active_sec"] = max(out["active_sec"], _int(meta.get("active_sec")) or 0)
        scroll = _int(meta.get("scroll_pct"), 0, 100) or 0
        if (it.ev.ea or "").lower() == "scroll_depth" and it.ev.ev is not None:
            scroll = max(scroll, int(max(0.0, min(100.0, it.ev.ev))))
        out["scroll"] = max(out["scroll"], scroll)
        out["cta_hovers"] = max(out["cta_hovers"], _int(meta.get("cta_hovers"), 0, 1_000_000) or 0)
    return out


def _dead_payload(ev: WireEvent) -> dict[str, Any]:
    return {
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
        "meta": ev.meta,
        "ip": ev.ip,
        "ua": ev.ua,
    }
