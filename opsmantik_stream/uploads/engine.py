"""One uploader's work, independent of Ray: the loop body of SPEC §6.

:meth:`UploadEngine.run_once` does one iteration:

1. list due (site, destination) groups and pick one at random weighted by backlog, so groups
   share the pool fairly; groups whose breaker is open are skipped before anything is claimed
   (no attempt is spent); a group whose probe time has come is taken as the single half-open
   probe (a small batch);
2. take a lease (at most ``upload_site_concurrency`` uploads per site and
   ``upload_account_concurrency`` per destination account, in PostgreSQL, with an expiry);
3. claim up to the chunk size in one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)``;
4. open the credentials (missing/undecryptable -> every row BLOCKED, ledgered, breaker open);
5. for each request: wait for the account's token bucket, commit the STARTED ledger row, send;
6. in one transaction: guarded row transitions, the FINISHED ledger row, metrics and the
   breaker outcome;
7. release the lease.

A crash between 5 and 6 leaves rows PROCESSING and a STARTED row without FINISHED; the rescue
job (``uploads.rescue``) sends the rows back through the retry policy, and the deterministic
order id makes Google answer the re-send with "already exists" instead of a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from opsmantik_stream.config import Settings
from opsmantik_stream.google import (
    Conversion,
    ErrorCategory,
    OutcomeKind,
    RowOutcome,
    TokenProvider,
    UploadClient,
    UploadResult,
    make_client,
)
from opsmantik_stream.queries import Q
from opsmantik_stream.retry import QueueStatus, RetryPolicy
from opsmantik_stream.uploads import store
from opsmantik_stream.uploads.breaker import BreakerConfig, PgBreakerStorage, Signal, record_outcome
from opsmantik_stream.uploads.bucket import AccountBucket, BucketSet
from opsmantik_stream.uploads.credentials import CredentialsError, open_credentials, vault_from_settings
from opsmantik_stream.vault import Vault

__all__ = ["ShareFn", "UploadEngine", "breaker_config", "outcome_signal", "retry_policy"]

log = logging.getLogger(__name__)

#: Returns this uploader's (index, pool size) for splitting account budgets.
ShareFn = Callable[[], Awaitable[tuple[int, int]]]

_DELIVERED = (OutcomeKind.COMPLETED, OutcomeKind.ALREADY_EXISTS)


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(base_delay_s=settings.upload_retry_base_delay_s, jitter_max_s=settings.upload_retry_jitter_s)


def breaker_config(settings: Settings, clock: Callable[[], datetime] | None = None) -> BreakerConfig:
    return BreakerConfig(
        fail_max=settings.upload_breaker_fail_max,
        open_s=settings.upload_breaker_open_s,
        jitter_s=settings.upload_breaker_jitter_s,
        probe_rows=settings.upload_breaker_probe_rows,
        clock=clock or (lambda: datetime.now(UTC)),
    )


def outcome_signal(outcomes: list[RowOutcome]) -> Signal:
    """What an attempt says about the destination (see ``breaker.py``).

    An account/config problem wins (the account must stop); otherwise any delivered row is a
    success; otherwise a transient failure counts; permanent row errors, rate limits and
    collateral re-sends are neutral.
    """
    if any(o.kind is OutcomeKind.BLOCKED for o in outcomes):
        return Signal.BLOCK
    if any(o.kind in _DELIVERED for o in outcomes):
        return Signal.SUCCESS
    if any(
        o.kind is OutcomeKind.RETRY and o.error_category is ErrorCategory.TRANSIENT and o.error_code != "COLLATERAL"
        for o in outcomes
    ):
        return Signal.TRANSIENT
    return Signal.NEUTRAL


def _weighted_order(groups: list[Any], rng: random.Random) -> list[Any]:
    """Groups in a random order where a bigger backlog tends to come first (Efraimidis-
    Spirakis: key = u ** (1 / weight)), so every group gets turns in proportion to backlog."""
    return sorted(groups, key=lambda g: rng.random() ** (1.0 / max(1, int(g[0]["backlog"]))), reverse=True)


class UploadEngine:
    """The uploader's state (pool, HTTP client, token cache, buckets) and one iteration."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        name: str,
        *,
        share: ShareFn | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], datetime] | None = None,
        seed: int | None = None,
    ) -> None:
        if settings.upload_lease_ttl_s <= settings.upload_request_timeout_s:
            raise ValueError("upload_lease_ttl_s must exceed upload_request_timeout_s")
        self.pool = pool
        self.settings = settings
        self.name = name
        # A new id per incarnation: a restarted actor never finishes its predecessor's claims.
        self.uploader_id = f"{name}:{uuid.uuid4().hex[:8]}"
        self._share_fn = share
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rng = random.Random(seed)
        timeout = httpx.Timeout(settings.upload_request_timeout_s, connect=min(5.0, settings.upload_request_timeout_s))
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=50))
        self._tokens = TokenProvider(self._http, timeout=timeout)
        self._timeout = timeout
        self._clients: dict[str, UploadClient] = {}
        self.policy = retry_policy(settings)
        self.breaker_cfg = breaker_config(settings, self._clock)
        self.buckets = BucketSet(margin_s=settings.upload_bucket_margin_s, max_batch=settings.upload_chunk_size)
        self._split_hint: dict[tuple[Any, str], int] = {}
        self._vault: Vault | None = None
        self._vault_error: CredentialsError | None = None
        try:
            self._vault = vault_from_settings(settings)
        except CredentialsError as exc:
            self._vault_error = exc

    async def startup(self) -> None:
        """Drop leases left by earlier incarnations of this uploader (they hold nothing now)."""
        async with self.pool.acquire() as conn:
            await conn.execute(Q.uploads.release_leases_of_holder_prefix, f"{self.name}:", self.uploader_id)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _client(self, destination: str) -> UploadClient:
        client = self._clients.get(destination)
        if client is None:
            client = make_client(
                destination,
                self._http,
                tokens=self._tokens,
                chunk_size=self.settings.upload_chunk_size,
                timeout=self._timeout,
            )
            self._clients[destination] = client
        return client

    async def _share(self) -> tuple[int, int]:
        if self._share_fn is None:
            return (0, 1)
        return await self._share_fn()

    # ------------------------------------------------------------------ one iteration

    async def run_once(self) -> dict[str, Any]:
        """One pass of the loop; returns a summary (``idle`` when nothing could be done)."""
        share = await self._share()
        async with self.pool.acquire() as conn:
            groups = await store.list_groups(conn)
        now = self._clock()
        stale = timedelta(seconds=self.settings.upload_lease_ttl_s)
        candidates: list[tuple[Any, bool]] = []
        gated = 0
        for g in groups:
            state = g["breaker_state"]
            if state == "CLOSED":
                candidates.append((g, False))
            elif state == "OPEN" and (g["next_probe_at"] is None or g["next_probe_at"] <= now):
                candidates.append((g, True))
            elif state == "HALF_OPEN" and (
                g["probe_holder"] is None or (g["probe_started_at"] is not None and g["probe_started_at"] < now - stale)
            ):
                candidates.append((g, True))
            else:
                gated += 1  # breaker open: wait without claiming, so no attempt is spent
        for g, probe in _weighted_order(candidates, self._rng):
            result = await self._try_group(g, probe, share)
            if result is not None:
                result["gated_groups"] = gated
                return result
        return {"idle": True, "groups": len(groups), "gated_groups": gated}

    async def _try_group(self, g: Any, probe: bool, share: tuple[int, int]) -> dict[str, Any] | None:
        site_id, destination = g["site_id"], g["destination"]
        s = self.settings
        async with self.pool.acquire() as conn:
            cred_row = await conn.fetchrow(Q.uploads.credentials_for, site_id, destination)
        account = cred_row["account_id"] if cred_row is not None else ""
        bucket: AccountBucket | None = None
        limit = s.upload_chunk_size
        if cred_row is not None:
            rps = float(cred_row["requests_per_s"] or s.upload_default_requests_per_s)
            cpm = float(cred_row["conversions_per_min"] or s.upload_default_conversions_per_min)
            bucket = self.buckets.get(destination, account, rps, cpm, share)
            if not bucket.usable or bucket.paused_for() > 0:
                # no share of this account for us, or Google asked us to wait: leave the
                # rows unclaimed (no attempt spent)
                return None
            limit = min(limit, bucket.max_batch)
            await bucket.wait_ready()
        limit = min(limit, self._split_hint.get((site_id, destination), limit))
        if probe:
            async with self.pool.acquire() as conn:
                took = await conn.fetchval(
                    Q.uploads.take_probe, site_id, destination, self.uploader_id, s.upload_lease_ttl_s
                )
            if took is None:
                return None
            limit = min(limit, s.upload_breaker_probe_rows)
        async with self.pool.acquire() as conn:
            lease = await store.acquire_lease(
                conn,
                site_id,
                destination,
                account,
                self.uploader_id,
                ttl_s=s.upload_lease_ttl_s,
                site_limit=s.upload_site_concurrency,
                account_limit=s.upload_account_concurrency,
            )
        if lease is None:
            if probe:
                await self._release_probe(site_id, destination)
            return None
        try:
            return await self._attempt(site_id, destination, cred_row, bucket, limit, probe)
        finally:
            # shielded: a cancelled uploader still gives its slot back (else it expires)
            await asyncio.shield(self._release(lease, site_id, destination, probe))

    async def _release(self, lease: uuid.UUID, site_id: Any, destination: str, probe: bool) -> None:
        try:
            async with self.pool.acquire() as conn:
                await store.release_lease(conn, lease)
            if probe:
                await self._release_probe(site_id, destination)
        except Exception:
            log.exception("releasing lease %s failed (it expires on its own)", lease)

    async def _release_probe(self, site_id: Any, destination: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(Q.uploads.release_probe, site_id, destination, self.uploader_id)

    async def _attempt(
        self,
        site_id: Any,
        destination: str,
        cred_row: Any | None,
        bucket: AccountBucket | None,
        limit: int,
        probe: bool,
    ) -> dict[str, Any]:
        batch_id = uuid.uuid4()
        async with self.pool.acquire() as conn:
            rows = await store.claim_rows(conn, site_id, destination, self.uploader_id, batch_id, limit)
        summary: dict[str, Any] = {
            "site_id": str(site_id),
            "destination": destination,
            "batch_id": str(batch_id),
            "probe": probe,
            "claimed": len(rows),
        }
        if not rows:
            return summary
        attempt = max(int(r["attempt"]) for r in rows)
        t0 = time.monotonic()
        started = False

        async def write_started() -> None:
            nonlocal started
            if started:
                return
            async with self.pool.acquire() as conn:
                await store.insert_started(conn, batch_id, site_id, destination, self.uploader_id, attempt, len(rows))
            started = True

        result: UploadResult | None = None
        try:
            if self._vault_error is not None:
                raise self._vault_error
            creds = open_credentials(self._vault, cred_row, destination)
        except CredentialsError as exc:
            outcomes = [
                RowOutcome(str(r["id"]), i, OutcomeKind.BLOCKED, exc.code, ErrorCategory.CONFIG, exc.message)
                for i, r in enumerate(rows)
            ]
        else:
            assert bucket is not None
            active_bucket = bucket

            async def before_request(n: int) -> None:
                # bucket first (waiting is never an attempt), then the durable STARTED row,
                # then the request goes out
                await active_bucket.acquire(n)
                await write_started()

            try:
                result = await self._client(destination).upload(
                    creds, [_conversion(r) for r in rows], before_request=before_request
                )
                outcomes = result.rows
            except Exception as exc:  # a bug, not a Google error (the client never raises those)
                log.exception("upload of batch %s raised", batch_id)
                outcomes = [
                    RowOutcome(
                        str(r["id"]),
                        i,
                        OutcomeKind.RETRY,
                        "UPLOADER_ERROR",
                        ErrorCategory.TRANSIENT,
                        type(exc).__name__,
                    )
                    for i, r in enumerate(rows)
                ]
        await write_started()  # gated-by-credentials attempts are ledgered too

        now = self._clock()
        updates: list[store.RowUpdate] = []
        split = False
        for row, o in zip(rows, outcomes, strict=True):
            d = self.policy.decide(o, int(row["attempt"]), now)
            split = split or d.split_batch
            done = d.status is QueueStatus.COMPLETED
            updates.append(
                store.RowUpdate(
                    id=row["id"],
                    attempt=int(row["attempt"]),
                    status=d.status.value,
                    next_retry_at=d.next_retry_at,
                    error_code=None if done else d.error_code,
                    error_category=None if done or d.error_category is None else d.error_category.value,
                    last_error=None if done else (o.message or d.error_code),
                    request_id=o.request_id,
                )
            )
        key = (site_id, destination)
        if split:
            self._split_hint[key] = max(1, len(rows) // 2)
        elif key in self._split_hint and any(o.kind in _DELIVERED for o in outcomes):
            self._split_hint.pop(key, None)
        delays = [o.retry_delay_s for o in outcomes if o.error_category is ErrorCategory.RATE_LIMIT and o.retry_delay_s]
        if delays and bucket is not None:
            bucket.pause(max(d for d in delays if d is not None))

        signal = outcome_signal(outcomes)
        first_err = next((o for o in outcomes if o.kind not in _DELIVERED), None)
        err_code = (result.error_code if result else None) or (first_err.error_code if first_err else None)
        err_cat = (result.error_category if result else None) or (first_err.error_category if first_err else None)
        counts = store.FinishCounts.of([u.status for u in updates])
        duration_ms = int((time.monotonic() - t0) * 1000)

        async with self.pool.acquire() as conn, conn.transaction():
            changed = await store.finish_rows(conn, self.uploader_id, batch_id, updates)
            breaker_state: str | None = None
            if changed:
                storage = await PgBreakerStorage.load(conn, site_id, destination, self.breaker_cfg)
                error = f"{err_code}: {first_err.message}" if first_err is not None and err_code else err_code
                breaker_state = record_outcome(storage, signal, holder=self.uploader_id, error=error).value
                await storage.save(conn)
                await store.add_metrics(
                    conn,
                    site_id,
                    destination,
                    len(changed),
                    store.FinishCounts.of([r["status"] for r in changed]),
                )
            finished = await store.insert_finished(
                conn,
                batch_id=batch_id,
                site_id=site_id,
                destination=destination,
                uploader_id=self.uploader_id,
                attempt=attempt,
                row_count=len(rows),
                counts=counts,
                http_status=(result.http_status or None) if result else None,
                request_id=result.request_id if result else None,
                error_code=err_code,
                error_category=err_cat.value if err_cat is not None else None,
                duration_ms=duration_ms,
                breaker_state=breaker_state,
            )
        summary.update(
            completed=counts.completed,
            failed=counts.failed,
            retry=counts.retry,
            blocked=counts.blocked,
            transitioned=len(changed),
            late=not changed,
            ledger_finished=finished,
            signal=signal.value,
            breaker_state=breaker_state,
            requests_sent=result.requests_sent if result else 0,
            request_id=result.request_id if result else None,
            http_status=result.http_status if result else None,
        )
        return summary


def _conversion(row: Any) -> Conversion:
    return Conversion(
        queue_id=str(row["id"]),
        order_id=row["order_id"],
        conversion_time=row["conversion_time"],
        value_minor=int(row["value_minor"]),
        currency=row["currency"],
        gclid=row["gclid"],
        wbraid=row["wbraid"],
        gbraid=row["gbraid"],
        phone_sha256=row["phone_sha256"],
        # A conversion is enqueued only with the visitor's marketing consent (SPEC §5).
        ad_user_data_consent=True,
    )
