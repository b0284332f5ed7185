"""One uploader's work, independent of Ray: the loop body of SPEC §6.

:meth:`UploadEngine.run_once` does one iteration:

1. list due (site, destination) groups with their gate: the breaker (``provider_breaker_gate``
   in SQL, the one place that decides when a probe may run), and the account's pool-wide
   pause (a 429). Gated groups are not claimed (no attempt spent); each is ledgered at most
   once per ``upload_gate_ledger_interval_s``. One sendable group is picked at random weighted
   by backlog, so groups share the pool fairly; a group whose probe time has come is taken as
   the single half-open probe (a small batch);
2. take a lease (at most ``upload_site_concurrency`` uploads per site and
   ``upload_account_concurrency`` per destination account, in PostgreSQL, with an expiry);
3. claim up to the batch size (the chunk size, the bucket share, and the size Google accepts
   for the account) in one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)``;
4. the request (:meth:`UploadEngine._request`): open the credentials (missing/undecryptable ->
   every row BLOCKED), and for each request wait for the account's token bucket, re-check the
   account's pause, commit the STARTED ledger row, and send through the group's destination
   (``destinations/``: the registry names the class; the engine knows only the contract);
5. plan the finish (:func:`~opsmantik_stream.uploads.plan.plan_finish`, pure);
6. write it: a 429's pause and a smaller batch size for the whole pool at once, then in one
   transaction the guarded row transitions, the FINISHED ledger row, metrics and the breaker;
7. release the lease.

A crash between 4 and 6 leaves rows PROCESSING and a STARTED row without FINISHED; the rescue
job (``uploads.rescue``) sends the rows back through the retry policy, and the deterministic
order id makes Google answer the re-send with "already exists" instead of a duplicate.

Clock: ``clock`` (injected by tests) drives the retry policy and the breaker; when a test
injects it, the same instant is passed to every time comparison in SQL, so a test moves the
clock instead of sleeping. Without it the database's clock decides due-ness and gates.
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
from opsmantik_stream.destinations import registry
from opsmantik_stream.destinations.base import (
    Conversion,
    Destination,
    DestinationContext,
    IdentifierKind,
    Operation,
    RowOutcome,
    UploadResult,
    UserIdentifier,
)
from opsmantik_stream.enums import CircuitState, ErrorCategory, GateDecision, OutcomeKind, QueueKind
from opsmantik_stream.queries import Q
from opsmantik_stream.retry import RetryPolicy
from opsmantik_stream.telemetry import UPLOADER_METRICS, Stats
from opsmantik_stream.uploads import store
from opsmantik_stream.uploads.breaker import BreakerConfig, PgBreakerStorage, record_outcome
from opsmantik_stream.uploads.bucket import AccountBucket, BucketSet
from opsmantik_stream.uploads.credentials import CredentialsError, open_credentials, vault_from_settings
from opsmantik_stream.uploads.plan import ClaimedRow, FinishPlan, GroupFacts, outcome_signal, plan_finish
from opsmantik_stream.vault import Vault

__all__ = ["ShareFn", "UploadEngine", "breaker_config", "outcome_signal", "retry_policy"]

log = logging.getLogger(__name__)

#: Returns this uploader's (index, pool size) for splitting account budgets.
ShareFn = Callable[[], Awaitable[tuple[int, int]]]

_SENDABLE = (GateDecision.SEND, GateDecision.PROBE)
# telemetry.UPLOADER_METRICS names the engine records
_ROWS = "opsmantik_upload_rows"
_BUCKET_WAIT = "opsmantik_upload_bucket_wait_seconds"
_BREAKER = "opsmantik_upload_breaker_transitions"


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


def gate_of(group: Any) -> GateDecision:
    """The group's gate: the breaker's (from SQL), unless the account is paused."""
    gate = GateDecision(group["gate"])
    if gate in _SENDABLE and group["paused"]:
        return GateDecision.ACCOUNT_PAUSED
    return gate


def _weighted_order(groups: list[Any], rng: random.Random) -> list[Any]:
    """Groups in a random order where a bigger backlog tends to come first (Efraimidis-
    Spirakis: key = u ** (1 / weight)), so every group gets turns in proportion to backlog."""
    return sorted(groups, key=lambda g: rng.random() ** (1.0 / max(1, int(g[0]["backlog"]))), reverse=True)


class _Started:
    """The attempt's STARTED ledger row: written with the first request (together with the
    pause check, :meth:`before_send`), or by :meth:`ensure` for attempts that sent nothing."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        batch_id: uuid.UUID,
        site_id: Any,
        destination: str,
        uploader_id: str,
        attempt: int,
        row_count: int,
    ) -> None:
        self._pool = pool
        self._row = (batch_id, site_id, destination, uploader_id, attempt, row_count)
        self.written = False

    async def ensure(self) -> None:
        if self.written:
            return
        b, s, d, u, a, n = self._row
        async with self._pool.acquire() as conn:
            await store.insert_started(conn, b, s, d, u, a, n)
        self.written = True

    async def before_send(self, account: str, now: datetime | None) -> datetime | None:
        """STARTED committed (idempotent) and the account's pause read, in one round trip."""
        b, s, d, u, a, n = self._row
        async with self._pool.acquire() as conn:
            until = await store.start_request(conn, b, s, d, u, a, n, account, now)
        self.written = True
        return until


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
        # the instant passed to SQL time comparisons: the injected clock, or the database's
        self._sql_now: Callable[[], datetime | None] = clock or (lambda: None)
        self._rng = random.Random(seed)
        timeout = httpx.Timeout(settings.upload_request_timeout_s, connect=min(5.0, settings.upload_request_timeout_s))
        self._owns_http = http is None
        # Destinations take their endpoints from the deployment's settings only (never from a
        # tenant), and redirects are not followed, so no answer can send a request elsewhere.
        self._http = http or httpx.AsyncClient(
            timeout=timeout, limits=httpx.Limits(max_connections=50), follow_redirects=False
        )
        #: this uploader's figures for /metrics (telemetry.UPLOADER_METRICS), shared with its
        #: destinations; the actor hands out snapshots
        self.stats = Stats(UPLOADER_METRICS)
        self._ctx = DestinationContext(settings, self._http, timeout, settings.upload_chunk_size, stats=self.stats)
        self._destinations: dict[str, Destination] = {}
        self.policy = retry_policy(settings)
        self.breaker_cfg = breaker_config(settings, self._clock)
        self.buckets = BucketSet(margin_s=settings.upload_bucket_margin_s, max_batch=settings.upload_chunk_size)
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
        for d in self._destinations.values():
            await d.aclose()
        if self._owns_http:
            await self._http.aclose()

    def _destination(self, name: str) -> Destination:
        """The registered destination ``name`` (one instance per uploader)."""
        dest = self._destinations.get(name)
        if dest is None:
            dest = registry.get(name)(self._ctx)
            self._destinations[name] = dest
        return dest

    async def _share(self) -> tuple[int, int]:
        if self._share_fn is None:
            return (0, 1)
        return await self._share_fn()

    # ------------------------------------------------------------------ one iteration

    async def run_once(self) -> dict[str, Any]:
        """One pass of the loop; returns a summary (``idle`` when nothing could be done)."""
        share = await self._share()
        async with self.pool.acquire() as conn:
            groups = await store.list_groups(conn, self._sql_now(), probe_stale_s=self.settings.upload_lease_ttl_s)
        candidates: list[tuple[Any, bool]] = []
        gated: list[tuple[Any, GateDecision]] = []
        for g in groups:
            gate = gate_of(g)
            if gate in _SENDABLE:
                candidates.append((g, gate is GateDecision.PROBE))
            else:
                gated.append((g, gate))  # waits without being claimed: no attempt is spent
        ledgered = await self._ledger_gated(gated)
        for g, probe in _weighted_order(candidates, self._rng):
            result = await self._try_group(g, probe, share)
            if result is not None:
                result["gated_groups"] = len(gated)
                result["gated_ledgered"] = ledgered
                return result
        return {"idle": True, "groups": len(groups), "gated_groups": len(gated), "gated_ledgered": ledgered}

    async def _ledger_gated(self, gated: list[tuple[Any, GateDecision]]) -> int:
        """A ledger entry (STARTED + FINISHED, no rows, no attempt spent) per gated group, at
        most one per group and gate interval across the pool."""
        interval = self.settings.upload_gate_ledger_interval_s
        now = self._sql_now()
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=interval)
        written = 0
        for g, gate in gated:
            last = g["gate_ledgered_at"]
            if last is not None and last > cutoff:
                continue  # cheap pre-check; the UPDATE below decides for the pool
            async with self.pool.acquire() as conn, conn.transaction():
                if not await store.mark_gate_ledgered(conn, g["site_id"], g["destination"], interval, now):
                    continue
                batch_id = uuid.uuid4()
                await store.insert_started(conn, batch_id, g["site_id"], g["destination"], self.uploader_id, 0, 0)
                await store.insert_finished(
                    conn,
                    batch_id=batch_id,
                    site_id=g["site_id"],
                    destination=g["destination"],
                    uploader_id=self.uploader_id,
                    attempt=0,
                    row_count=0,
                    counts=store.FinishCounts(),
                    http_status=None,
                    request_id=None,
                    error_code=gate.value,
                    error_category=(
                        ErrorCategory.RATE_LIMIT if gate is GateDecision.ACCOUNT_PAUSED else ErrorCategory.TRANSIENT
                    ).value,
                    duration_ms=0,
                    breaker_state=g["breaker_state"],
                )
                written += 1
        return written

    async def _try_group(self, g: Any, probe: bool, share: tuple[int, int]) -> dict[str, Any] | None:
        site_id, destination = g["site_id"], g["destination"]
        s = self.settings
        async with self.pool.acquire() as conn:
            ctx = await conn.fetchrow(Q.uploads.group_context, site_id, destination)
        if ctx is None:
            return None  # the site is gone
        has_creds = ctx["destination"] is not None
        account = ctx["account_id"] or ""
        bucket: AccountBucket | None = None
        turn: object | None = None
        limit = s.upload_chunk_size
        if has_creds:
            rps = float(ctx["requests_per_s"] or s.upload_default_requests_per_s)
            cpm = float(ctx["conversions_per_min"] or s.upload_default_conversions_per_min)
            bucket = self.buckets.get(destination, account, rps, cpm, share)
            if not bucket.usable:
                return None  # no share of this account for us: leave the rows unclaimed
            limit = min(limit, bucket.max_batch)
            ready_from = time.monotonic()
            turn = await bucket.wait_ready()
            ready_wait_s = time.monotonic() - ready_from
        else:
            ready_wait_s = 0.0
        try:
            return await self._leased_attempt(g, probe, ctx, bucket, limit, ready_wait_s)
        finally:
            if bucket is not None and turn is not None:
                bucket.end_turn(turn)  # gave up before its slot (no lease, no rows, a probe taken)

    async def _leased_attempt(
        self, g: Any, probe: bool, ctx: Any, bucket: AccountBucket | None, limit: int, ready_wait_s: float
    ) -> dict[str, Any] | None:
        site_id, destination = g["site_id"], g["destination"]
        s = self.settings
        account = ctx["account_id"] or ""
        if g["max_batch"]:
            limit = min(limit, int(g["max_batch"]))  # what Google accepts for this account
        if probe:
            async with self.pool.acquire() as conn:
                took = await conn.fetchval(
                    Q.uploads.take_probe, site_id, destination, self.uploader_id, s.upload_lease_ttl_s, self._sql_now()
                )
            if took is None:
                return None
            if g["breaker_state"] != CircuitState.HALF_OPEN:  # else: a gone holder's probe retaken
                self.stats.inc(_BREAKER, (destination, g["breaker_state"], CircuitState.HALF_OPEN.value))
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
            return await self._attempt(site_id, destination, ctx, bucket, limit, probe, ready_wait_s)
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
        ctx: Any,
        bucket: AccountBucket | None,
        limit: int,
        probe: bool,
        ready_wait_s: float = 0.0,
    ) -> dict[str, Any]:
        batch_id = uuid.uuid4()
        async with self.pool.acquire() as conn:
            rows = await store.claim_rows(
                conn, site_id, destination, self.uploader_id, batch_id, limit, self._sql_now()
            )
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
        started = _Started(self.pool, batch_id, site_id, destination, self.uploader_id, attempt, len(rows))
        outcomes, result = await self._request(destination, ctx, bucket, rows, started, ready_wait_s)
        await started.ensure()  # attempts that sent nothing (credentials, pause) are ledgered too
        plan = plan_finish(
            [ClaimedRow(r["id"], int(r["attempt"])) for r in rows],
            outcomes,
            policy=self.policy,
            now=self._clock(),
            facts=self._facts(destination, ctx),
            request_error=(result.error_code, result.error_category) if result else (None, None),
        )
        written = await self._write(site_id, destination, ctx["account_id"], batch_id, attempt, rows, plan, result, t0)
        summary.update(written)
        summary.update(
            completed=plan.counts.completed,
            failed=plan.counts.failed,
            retry=plan.counts.retry,
            blocked=plan.counts.blocked,
            refunded=plan.refunded,
            signal=plan.signal.value,
            paused_s=plan.pause_s,
            max_batch=plan.max_batch,
            requests_sent=result.requests_sent if result else 0,
            request_id=result.request_id if result else None,
            http_status=result.http_status if result else None,
        )
        return summary

    @staticmethod
    def _facts(destination: str, ctx: Any) -> GroupFacts:
        """What the finish plan needs for BLOCKED hints: the site and its destinations."""
        site_destination = ctx["site_destination"]
        public_id = ctx["public_id"]
        other = next((n for n in registry.names() if n != destination), None)
        try:
            cls: type[Destination] | None = registry.get(destination)
        except registry.UnknownDestination:
            cls = None

        def destination_hint(code: str | None) -> str | None:
            if cls is None:
                return None
            return cls.blocked_hint(
                code,
                public_id=public_id,
                site_destination=site_destination,
                site_has_credentials=bool(ctx["site_has_credentials"]),
            )

        return GroupFacts(public_id, destination, site_destination, other, destination_hint)

    async def _request(
        self,
        destination: str,
        ctx: Any,
        bucket: AccountBucket | None,
        rows: list[Any],
        started: _Started,
        ready_wait_s: float = 0.0,
    ) -> tuple[list[RowOutcome], UploadResult | None]:
        """Open the credentials and send; one outcome per row (never raises for the destination)."""
        try:
            if destination not in registry.names() or Operation.UPLOAD not in registry.get(destination).operations:
                raise CredentialsError("UNKNOWN_DESTINATION", f"no destination {destination!r} can upload here")
            if self._vault_error is not None:
                raise self._vault_error
            creds = open_credentials(self._vault, ctx if ctx["destination"] is not None else None, destination)
        except CredentialsError as exc:
            return [
                RowOutcome(str(r["id"]), i, OutcomeKind.BLOCKED, exc.code, ErrorCategory.CONFIG, exc.message)
                for i, r in enumerate(rows)
            ], None
        assert bucket is not None
        account = ctx["account_id"]
        # the first request's wait includes the wait for the bucket before the claim
        carried_wait_s = ready_wait_s

        async def before_request(n: int) -> float | None:
            # The bucket first (waiting is never an attempt); then one round trip commits the
            # durable STARTED row and reads the pool-wide pause (another uploader may have set
            # it since the group was listed); then the bucket's send window, right before the
            # send (the destination fetched its token before calling us), so the budget per
            # 1 s holds at the wire even when the commit was slow.
            nonlocal carried_wait_s
            waiting_from = time.monotonic()
            await bucket.acquire(n)
            self.stats.observe(_BUCKET_WAIT, (destination,), carried_wait_s + time.monotonic() - waiting_from)
            carried_wait_s = 0.0
            until = await started.before_send(account, self._sql_now())
            if until is not None:
                return max(0.0, (until - (self._sql_now() or datetime.now(UTC))).total_seconds())
            # the last gate: a commit slow enough to make this send late must not let it
            # bunch with the next one in Google's 1 s window
            await bucket.at_send()
            return None

        try:
            result = await self._destination(destination).upload(
                creds, [_conversion(r) for r in rows], before_request=before_request
            )
            return result.rows, result
        except Exception as exc:  # a bug, not a Google error (the client never raises those)
            log.exception("upload to %s raised", destination)
            return [
                RowOutcome(
                    str(r["id"]), i, OutcomeKind.RETRY, "UPLOADER_ERROR", ErrorCategory.TRANSIENT, type(exc).__name__
                )
                for i, r in enumerate(rows)
            ], None

    async def _write(
        self,
        site_id: Any,
        destination: str,
        account: str | None,
        batch_id: uuid.UUID,
        attempt: int,
        rows: list[Any],
        plan: FinishPlan,
        result: UploadResult | None,
        t0: float,
    ) -> dict[str, Any]:
        """Apply the plan: account-wide facts first (so the pool stops at once), then the
        guarded transitions, breaker, metrics and FINISHED row in one transaction."""
        now = self._sql_now()
        if account and (plan.pause_s or plan.max_batch):
            async with self.pool.acquire() as conn:
                if plan.pause_s:
                    await store.pause_account(conn, destination, account, plan.pause_s, plan.error_code, now)
                if plan.max_batch:
                    await store.lower_max_batch(conn, destination, account, plan.max_batch)
        duration_ms = int((time.monotonic() - t0) * 1000)
        refunds = {u.id for u in plan.updates if u.refund}
        async with self.pool.acquire() as conn, conn.transaction():
            changed = await store.finish_rows(conn, self.uploader_id, batch_id, plan.updates)
            breaker_state: str | None = None
            transition: tuple[str, str] | None = None
            moved = store.FinishCounts.of([r["status"] for r in changed])
            if changed:
                storage = await PgBreakerStorage.load(conn, site_id, destination, self.breaker_cfg)
                before = storage.circuit_state
                after = record_outcome(storage, plan.signal, holder=self.uploader_id, error=plan.breaker_error)
                breaker_state = after.value
                if after is not before:
                    transition = (before.value, after.value)
                await storage.save(conn)
                await store.add_metrics(
                    conn,
                    site_id,
                    destination,
                    sum(1 for r in changed if r["id"] not in refunds),  # refunded rows spent nothing
                    moved,
                )
            finished = await store.insert_finished(
                conn,
                batch_id=batch_id,
                site_id=site_id,
                destination=destination,
                uploader_id=self.uploader_id,
                attempt=attempt,
                row_count=len(rows),
                counts=plan.counts,
                http_status=(result.http_status or None) if result else None,
                request_id=result.request_id if result else None,
                error_code=plan.error_code,
                error_category=plan.error_category.value if plan.error_category is not None else None,
                duration_ms=duration_ms,
                breaker_state=breaker_state,
            )
        # counted once committed: the figures say what the database says
        if transition is not None:
            self.stats.inc(_BREAKER, (destination, *transition))
        for outcome, n in (
            ("completed", moved.completed),
            ("failed", moved.failed),
            ("retry", moved.retry),
            ("blocked", moved.blocked),
            ("late", len(rows) - len(changed)),
        ):
            if n:
                self.stats.inc(_ROWS, (destination, outcome), n)
        return {
            "transitioned": len(changed),
            "late": not changed,
            "ledger_finished": finished,
            "breaker_state": breaker_state,
        }


def _conversion(row: Any) -> Conversion:
    ids = tuple(
        UserIdentifier(kind, row[kind.value])
        for kind in (IdentifierKind.EMAIL_SHA256, IdentifierKind.PHONE_SHA256)
        if row[kind.value]
    )
    scopes = row["consent_scopes"]
    return Conversion(
        queue_id=str(row["id"]),
        order_id=row["order_id"],
        conversion_time=row["conversion_time"],
        value_minor=int(row["value_minor"]),
        currency=row["currency"],
        gclid=row["gclid"],
        wbraid=row["wbraid"],
        gbraid=row["gbraid"],
        user_identifiers=ids,
        # an adjustment of an uploaded conversion (restatement, retraction), or None
        adjustment=row["kind"] if row["kind"] != QueueKind.CONVERSION else None,
        adjusted_at=row["adjusted_at"],
        # the visitor's consent as recorded when the conversion was enqueued
        consent_scopes=tuple(scopes) if scopes is not None else None,
    )
