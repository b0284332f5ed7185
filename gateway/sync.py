"""``POST /api/sync`` on the lean path (SPEC.md §3): the hot route of the product.

The gateway app hands this route's requests straight to ``asgi`` before FastAPI's generic
machinery (middleware stack, routing, dependency resolution), which cost more than the
route's own work per single-event request. The contract is unchanged and checked in its
order, first failure answers:

    body size 413 -> JSON 400 / schema 422 -> site 400 -> origin 403 (or the site's ingest
    key, which then requires ``eid``) -> rate limit 429 -> consent 204 -> partition 503

Nothing before the partition writes anything, so every refusal leaves the database as it
was; accepted events go through the owner's micro-batcher and are answered only after the
partition's transaction committed. Every answer carries ``x-request-id``; outcomes feed the
same metrics and JSON log lines as the other routes.

What repeats is remembered, each in a bounded structure (issue 18): a site's admission facts
(``ingest_site_cache_ttl_s``, unknown ids briefly; ``_MAX_SITES``), an origin's verdict per
site (``_MAX_ORIGINS``, origins up to ``_ORIGIN_MEMO_MAX_BYTES``), rate-limit buckets
(``LIMITER_MAX_KEYS`` per limiter), truncated client addresses (``ADDRESS_MEMO_SIZE``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from typing import Any

import msgspec

from gateway.logs import new_request_id, request_id_var
from gateway.metrics import HTTP_LATENCY, INGEST_EVENTS, register_cache_source
from gateway.partitions import Backpressure, PartitionClient, PartitionUnavailable
from opsmantik_stream.config import Settings
from opsmantik_stream.ingest.admission import TokenBucketLimiter, client_net, origin_allowed, truncate_ip
from opsmantik_stream.ingest.schema import (
    MAX_BODY_BYTES,
    BodyError,
    EventIn,
    WireEvent,
    WireResult,
    clean_text,
    consent_scopes,
    decode_body,
    encode_event,
)
from opsmantik_stream.queries import Q

__all__ = ["SiteInfo", "SyncRuntime", "asgi", "handle"]

log = logging.getLogger("opsmantik.http")

INGEST_KEY_HEADER = b"x-opsmantik-ingest-key"
EXPOSE = (
    "Retry-After, X-OpsMantik-Error-Code, x-opsmantik-dedup, x-opsmantik-ratelimit, "
    "x-opsmantik-quota-exceeded, x-opsmantik-quota-remaining, x-opsmantik-overage, "
    "x-opsmantik-consent-missing"
)
_UNAVAILABLE_RETRY_S = b"2"
_NEGATIVE_TTL_S = 5.0
# Sites remembered (known and unknown ids, ~0.6 KB each with a few origins): at most ~60 MB.
# Beyond it the least recently loaded is dropped (and looked up again when it comes back);
# unknown ids -- which anyone can make up -- live 5 s, so a flood of them churns this cache
# but cannot grow it.
_MAX_SITES = 100_000
# Origin verdicts remembered per (site, Origin), oldest first out: ~0.5 KB each, so at most
# ~50 MB. An Origin header longer than _ORIGIN_MEMO_MAX_BYTES (no real origin is: a host
# name has at most 253 characters) is judged each time and never remembered, so neither
# the number nor the size of entries depends on what clients send.
_MAX_ORIGINS = 100_000
_ORIGIN_MEMO_MAX_BYTES = 300
# A site's public id is 32 hex characters: anything else is refused without a look-up.
_PUBLIC_ID = re.compile(r"[0-9a-fA-F]{32}")
_CONSENT_EVENT = ("system", "consent")

_JSON = (b"content-type", b"application/json")
_VARY = (b"vary", b"Origin")
_EXPOSE_H = (b"access-control-expose-headers", EXPOSE.encode())
_CREDENTIALS = (b"access-control-allow-credentials", b"true")
_encode = msgspec.json.Encoder().encode

Headers = list[tuple[bytes, bytes]]


class SiteInfo(msgspec.Struct, frozen=True):
    """What admission needs to know about a site."""

    site_id: str
    public_id: str
    origins: tuple[str, ...]
    ingest_key_sha256: str | None
    rate_limit_per_min: int | None


class SyncRuntime:
    """Per-gateway ingest state: site cache, origin verdicts, rate limits, outcome counters."""

    def __init__(self, settings: Settings, pool: Any, partitions: PartitionClient) -> None:
        self.settings = settings
        self.pool = pool
        self.partitions = partitions
        self.clients = TokenBucketLimiter()  # per (site, client address)
        self.sites = TokenBucketLimiter()  # per site, whatever the clients
        self._sites: OrderedDict[str, tuple[SiteInfo | None, float]] = OrderedDict()
        # look-ups running now (one per id, shared by concurrent requests): removed when
        # done, so bounded by the requests in flight
        self._loading: dict[str, asyncio.Future[SiteInfo | None]] = {}
        self._origins: OrderedDict[tuple[str, bytes], bool] = OrderedDict()
        # per-outcome event counts (shared with /metrics, which reads them at scrape time);
        # keys are the fixed outcome names
        self.outcomes = INGEST_EVENTS
        # latency histogram children per HTTP status the route answers (a fixed handful)
        self._latency: dict[int, Any] = {}
        # cache hit rates for /metrics: one integer add per request (lookups) and per miss
        self.site_lookups = 0
        self.site_loads = 0
        self.origin_lookups = 0
        self.origin_checks = 0
        register_cache_source(self.cache_figures)

    async def site(self, public_id: str) -> SiteInfo | None:
        """The site by public id, cached for ``ingest_site_cache_ttl_s`` (unknown ids briefly);
        an id that cannot be a public id is unknown without a database query."""
        if not _PUBLIC_ID.fullmatch(public_id):
            return None
        self.site_lookups += 1
        now = time.monotonic()
        hit = self._sites.get(public_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        self.site_loads += 1  # a miss: loaded now, or by the request already loading it
        loading = self._loading.get(public_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[SiteInfo | None] = asyncio.get_running_loop().create_future()
        self._loading[public_id] = future
        try:
            row = await self.pool.fetchrow(Q.ingest.site_for_ingest, public_id)
            info = None
            if row is not None:
                info = SiteInfo(
                    site_id=str(row["id"]),
                    public_id=row["public_id"],
                    origins=tuple(row["origins"]),
                    ingest_key_sha256=row["ingest_key_sha256"],
                    rate_limit_per_min=row["rate_limit_per_min"],
                )
            ttl = self.settings.ingest_site_cache_ttl_s if info is not None else _NEGATIVE_TTL_S
            self._sites[public_id] = (info, time.monotonic() + ttl)
            self._sites.move_to_end(public_id)
            while len(self._sites) > _MAX_SITES:
                self._sites.popitem(last=False)
            future.set_result(info)
            return info
        except BaseException as exc:
            future.set_exception(exc)
            # the waiters (if any) re-raise it; mark it retrieved for the loop's sake
            future.exception()
            raise
        finally:
            self._loading.pop(public_id, None)

    def origin_ok(self, site: SiteInfo, origin: bytes) -> bool:
        """Whether ``origin`` may write for the site (remembered per site and origin; the
        site's origins change only with its cache entry, which carries them)."""
        if len(origin) > _ORIGIN_MEMO_MAX_BYTES:
            return origin_allowed(origin.decode("latin-1"), site.origins)
        key = (site.site_id, origin)
        self.origin_lookups += 1
        verdict = self._origins.get(key)
        if verdict is None:
            self.origin_checks += 1
            verdict = origin_allowed(origin.decode("latin-1"), site.origins)
            self._origins[key] = verdict
            if len(self._origins) > _MAX_ORIGINS:
                self._origins.popitem(last=False)
        return verdict

    def cache_figures(self) -> dict[str, tuple[int, int, int, int]]:
        """``cache -> (hits, misses, entries, capacity)`` of the site and origin caches (read
        by /metrics at scrape time)."""
        return {
            "gateway.sync.sites": (
                self.site_lookups - self.site_loads,
                self.site_loads,
                len(self._sites),
                _MAX_SITES,
            ),
            "gateway.sync.origins": (
                self.origin_lookups - self.origin_checks,
                self.origin_checks,
                len(self._origins),
                _MAX_ORIGINS,
            ),
        }

    def forget_site(self, public_id: str) -> None:
        self._sites.pop(public_id, None)
        self._origins.clear()

    def bounded(self) -> dict[str, tuple[int, int]]:
        """Entries and bound of each structure above (``/metrics``, the soak)."""
        return {
            "gateway_sites": (len(self._sites), _MAX_SITES),
            "gateway_origin_verdicts": (len(self._origins), _MAX_ORIGINS),
            "gateway_client_buckets": (len(self.clients), self.clients.max_keys),
            "gateway_site_buckets": (len(self.sites), self.sites.max_keys),
        }

    def count(self, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n

    def observe(self, status: int, elapsed_s: float) -> None:
        child = self._latency.get(status)
        if child is None:
            child = self._latency[status] = HTTP_LATENCY.labels("POST", "/api/sync", str(status))
        child.observe(elapsed_s)


# ---------------------------------------------------------------------------- answers


def _cors(origin: bytes | None, allowed: bool = False) -> Headers:
    # The origin is reflected on every answer (also refusals) so the tracker can read the
    # status and drop or back off; whether the origin may *write* is decided by the origin
    # check, not by CORS. Credentials are allowed only for an allowed origin.
    if not origin:
        return [_VARY]
    headers = [_VARY, (b"access-control-allow-origin", origin), _EXPOSE_H]
    if allowed:
        headers.append(_CREDENTIALS)
    return headers


Answer = tuple[int, Headers, bytes]


def _error(http_status: int, code: str, message: str, headers: Headers, **extra: Any) -> Answer:
    body = {"ok": False, "error": code, "message": message, **extra}
    return http_status, [*headers, _JSON, (b"x-opsmantik-error-code", code.encode())], _encode(body)


def _unavailable(runtime: SyncRuntime, headers: Headers, n: int, code: str = "partition_unavailable") -> Answer:
    runtime.count("unavailable" if code == "partition_unavailable" else "backpressure", n)
    return _error(
        503,
        code,
        "the site's partition cannot take events right now; retry later",
        [*headers, (b"retry-after", _UNAVAILABLE_RETRY_S)],
    )


def _count_results(runtime: SyncRuntime, results: list[WireResult]) -> None:
    """The outcome counters of a request's results, one update per outcome (not per event)."""
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r.status] = outcomes.get(r.status, 0) + 1
        if r.stored:
            outcomes[r.stored] = outcomes.get(r.stored, 0) + 1
    for outcome, n in outcomes.items():
        runtime.count(outcome, n)


def _result_item(r: WireResult) -> dict[str, Any]:
    if r.status == "accepted" and not r.overage and not r.stored:
        return {"status": "accepted", "ingest_id": r.ingest_id}  # the usual one
    item: dict[str, Any] = {"status": r.status, "ingest_id": r.ingest_id}
    if r.status == "rejected_quota":
        item["retry_after"] = r.retry_after_s
    if r.overage:
        item["overage"] = True
    if r.stored:
        item["stored"] = r.stored
    return item


def _single_answer(r: WireResult, headers: Headers) -> Answer:
    if r.status == "duplicate":
        dup = {"ok": True, "status": "duplicate", "ingest_id": r.ingest_id}
        return 200, [*headers, _JSON, (b"x-opsmantik-dedup", b"1")], _encode(dup)
    if r.status == "rejected_quota":
        return _error(
            429,
            "quota_exceeded",
            "the site's monthly event quota is used up",
            [
                *headers,
                (b"x-opsmantik-quota-exceeded", b"1"),
                (b"x-opsmantik-quota-remaining", b"0"),
                (b"retry-after", str(r.retry_after_s or 1).encode()),
            ],
            status="rejected_quota",
            ingest_id=r.ingest_id,
        )
    out = [*headers, _JSON]
    if r.quota_remaining is not None:
        out.append((b"x-opsmantik-quota-remaining", str(r.quota_remaining).encode()))
    if r.overage:
        out.append((b"x-opsmantik-overage", b"true"))
    body: dict[str, Any] = {"ok": True, "status": "accepted", "ingest_id": r.ingest_id}
    if r.stored:
        body["stored"] = r.stored
    return 202, out, _encode(body)


# ---------------------------------------------------------------------------- the route


class _Request:
    """The headers the route reads, picked from the ASGI scope in one pass."""

    __slots__ = ("content_length", "ingest_key", "origin", "user_agent", "xff")

    def __init__(self, scope: MutableMapping[str, Any]) -> None:
        self.content_length: bytes | None = None
        self.origin: bytes | None = None
        self.user_agent: bytes | None = None
        self.ingest_key: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"origin":
                self.origin = value
            elif name == b"user-agent":
                self.user_agent = value
            elif name == b"content-length":
                self.content_length = value
            elif name == INGEST_KEY_HEADER:
                self.ingest_key = value


def _missing_eid(envelope: Any, events: list[EventIn]) -> str | None:
    for i, ev in enumerate(events):
        if not (ev.eid or "").strip():
            return f"events.{i}.eid" if envelope.events is not None else "eid"
    return None


async def handle(
    runtime: SyncRuntime, scope: MutableMapping[str, Any], request: _Request, body: bytes | None
) -> Answer:
    """The contract of ``POST /api/sync`` (module doc); ``body`` is None when over 256 KiB."""
    received_ms = time.time_ns() // 1_000_000
    origin = request.origin
    headers = _cors(origin)

    # 1. size, JSON, schema
    if body is None:
        runtime.count("too_large")
        return _error(413, "payload_too_large", "the body is larger than 256 KiB", headers)
    try:
        envelope, events = decode_body(body)
    except BodyError as exc:
        runtime.count("invalid")
        return _error(exc.status, exc.code, exc.message, headers)
    if origin is None:
        # server-to-server (the site's ingest key): a retry after a timeout must be the same
        # event, so the client's event id is required
        missing = _missing_eid(envelope, events)
        if missing is not None:
            runtime.count("invalid")
            return _error(422, f"validation_error:{missing}", "`eid` is required on requests without Origin", headers)
    default_site = envelope.s
    public_id = ((events[0].s if events[0].s is not None else default_site) or "").strip()
    for ev in events:
        if ((ev.s if ev.s is not None else default_site) or "").strip() != public_id:
            runtime.count("invalid")
            return _error(400, "batch_mixed_sites", "all events of a batch must belong to one site", headers)

    # 2. site
    site = await runtime.site(public_id)
    if site is None:
        runtime.count("site_not_found")
        return _error(400, "site_not_found", "no site with this id", headers)

    # 3. origin (browsers), or the site's ingest key (server-to-server, no Origin)
    if origin is not None:
        if not runtime.origin_ok(site, origin):
            runtime.count("origin_rejected")
            return _error(403, "origin_not_allowed", "this origin may not send events for the site", headers)
        headers = _cors(origin, allowed=True)
    else:
        key = request.ingest_key or b""
        expected = site.ingest_key_sha256 or ""
        given = hashlib.sha256(key).hexdigest() if key else ""
        if not (expected and given and hmac.compare_digest(given, expected)):
            runtime.count("origin_rejected")
            return _error(403, "origin_required", "a request without Origin needs the site's ingest key", headers)

    # 4. rate limit per (site, client address), charged per event, and per site
    settings = runtime.settings
    client = scope.get("client")
    ip = client[0] if client else None
    n = len(events)
    limit = site.rate_limit_per_min or settings.rate_limit_per_min
    wait = runtime.clients.take((site.site_id, client_net(ip)), limit, n)
    if wait <= 0:
        wait = runtime.sites.take(site.site_id, max(settings.site_rate_limit_per_min, limit), n)
    if wait > 0:
        runtime.count("rate_limited", n)
        return _error(
            429,
            "rate_limited",
            "too many events from this client",
            [
                *headers,
                (b"x-opsmantik-ratelimit", b"1"),
                (b"retry-after", str(TokenBucketLimiter.retry_after(wait)).encode()),
            ],
        )

    # 5. consent: nothing is stored or billed without the analytics scope (a consent event
    #    itself passes: it records the visitor's choice, also a withdrawal)
    scopes = [consent_scopes(ev) for ev in events]
    wanted = [
        i
        for i, sc in enumerate(scopes)
        if "analytics" in sc or ((events[i].ec or "").strip(), (events[i].ea or "").strip()) == _CONSENT_EVENT
    ]
    if not wanted:
        runtime.count("consent_missing", n)
        return 204, [*headers, (b"x-opsmantik-consent-missing", b"analytics")], b""

    # 6. the owning partition, through its micro-batcher
    if not runtime.partitions.enabled:
        return _unavailable(runtime, headers, len(wanted))
    stored_ip = truncate_ip(ip)
    ua = clean_text(request.user_agent.decode("latin-1")[:512]) if request.user_agent else None
    # the request's events as they travel: encoded one by one and joined (one object to hold
    # while the batch is written, however many events)
    build = WireEvent.build
    site_id = site.site_id
    encoded = b"".join([encode_event(build(events[i], site_id, received_ms, scopes[i], stored_ip, ua)) for i in wanted])
    # Let the decoded request go before the wait: its ~20 objects per event are freed now,
    # while they are still in the CPU's caches. Held over the batch's commit (tens to hundreds
    # of milliseconds of other traffic), each one was a cache miss when freed, and the
    # gateway spent a third more CPU per batched event (paired runs: docs/performance.md).
    single = envelope.events is None
    del envelope, events, scopes
    try:
        results = await runtime.partitions.ingest(site.site_id, encoded, len(wanted))
    except Backpressure:
        return _unavailable(runtime, headers, len(wanted), code="partition_busy")
    except PartitionUnavailable:
        return _unavailable(runtime, headers, len(wanted))
    except Exception as exc:
        log.warning("ingest routing failed", extra={"error": type(exc).__name__})
        return _unavailable(runtime, headers, len(wanted))

    _count_results(runtime, results)
    if len(wanted) < n:
        runtime.count("consent_missing", n - len(wanted))
    if single:
        return _single_answer(results[0], headers)
    if len(wanted) == n:
        items = [_result_item(r) for r in results]
    else:
        by_index = dict(zip(wanted, results, strict=True))
        items = []
        for i in range(n):
            found = by_index.get(i)
            items.append({"status": "consent_missing"} if found is None else _result_item(found))
    out = [*headers, _JSON]
    if any(r.status == "rejected_quota" for r in results):
        out.append((b"x-opsmantik-quota-exceeded", b"1"))
        out.append((b"x-opsmantik-quota-remaining", b"0"))
    return 202, out, _encode({"ok": True, "status": "accepted", "results": items})


async def _read_body(receive: Any, declared: bytes | None) -> bytes | None:
    """The body, or None when it is larger than 256 KiB (checked before and while reading)."""
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def asgi(runtime: SyncRuntime | None, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI entry of ``POST /api/sync`` (called by the app before its generic stack)."""
    rid = new_request_id()
    token = request_id_var.set(rid)
    started = time.perf_counter()
    status = 500
    try:
        if runtime is None:
            answer = _error(503, "starting", "the gateway is starting; retry later", [(b"retry-after", b"1")])
        else:
            request = _Request(scope)
            answer = await handle(runtime, scope, request, await _read_body(receive, request.content_length))
        status, headers, body = answer
        headers.append((b"x-request-id", rid.encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except Exception:
        log.exception("request failed", extra={"method": "POST", "path": "/api/sync"})
        status = 500
        body = _encode({"ok": False, "error": "internal_error", "message": "internal error"})
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [_JSON, (b"x-request-id", rid.encode()), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        except Exception:  # the response had started or the client left: nothing more to say
            pass
    finally:
        elapsed = time.perf_counter() - started
        if runtime is not None:
            runtime.observe(status, elapsed)
        if status >= 500 or log.isEnabledFor(logging.DEBUG):
            log.log(
                logging.WARNING if status >= 500 else logging.DEBUG,
                "request",
                extra={
                    "method": "POST",
                    "path": "/api/sync",
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
        request_id_var.reset(token)
