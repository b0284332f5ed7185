"""Property-based fuzzing of every route of a served stack from its own OpenAPI description
(schemathesis + hypothesis), with and without valid credentials.

Each operation of ``/openapi.json`` gets requests generated from its schema (valid and
invalid bodies, parameters and headers). Half of them use valid credentials for that route
(a bearer token, a signed call event, an allowed Origin or the site's ingest key, the cron
secret) and real ids of seeded objects, the other half none. Properties checked on every
answer:

- no answer is a 5xx (a bug shows here as the exact request that produced it);
- a rejected request (any 4xx) changed nothing in the database: a fingerprint of every table
  an API request can write is taken after each request and must equal the one before when
  the answer is a 4xx.

``make test`` runs a short pass (``OPSMANTIK_TEST_FUZZ_REQUESTS``, default 400); ``make fuzz``
runs >= 10,000 requests and prints the counts by status and by route.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from opsmantik_stream import tenancy
from opsmantik_stream.jobs import JOBS
from opsmantik_stream.leads.signing import sign
from tests.integration._leads_support import make_intent, make_session

pytestmark = [pytest.mark.e2e, pytest.mark.fuzz]

REQUESTS = int(os.environ.get("OPSMANTIK_TEST_FUZZ_REQUESTS", "400"))
# generation is reproducible from this seed (printed with the counts): rerun a finding with it
SEED = int(os.environ.get("OPSMANTIK_TEST_FUZZ_SEED", "20261126"))

# one query: counts and high-water marks of everything an API request can write
FINGERPRINT = """
SELECT jsonb_build_object(
  'sites', (SELECT jsonb_build_array(count(*), max(updated_at)) FROM sites),
  'origins', (SELECT count(*) FROM site_origins),
  'plans', (SELECT max(updated_at) FROM site_plans),
  'users', (SELECT count(*) FROM users), 'members', (SELECT count(*) FROM site_members),
  'sessions', (SELECT jsonb_build_array(count(*), max(last_activity_at)) FROM sessions),
  'events', (SELECT count(*) FROM events),
  'ledger', (SELECT count(*) FROM ingest_idempotency),
  'usage', (SELECT jsonb_build_array(sum(event_count), sum(rejected_count)) FROM site_usage_monthly),
  'calls', (SELECT jsonb_build_array(count(*), max(updated_at)) FROM calls),
  'call_actions', (SELECT count(*) FROM call_actions),
  'conversations', (SELECT jsonb_build_array(count(*), max(updated_at)) FROM conversations),
  'links', (SELECT count(*) FROM conversation_links),
  'sales', (SELECT jsonb_build_array(count(*), max(updated_at)) FROM sales),
  'queue', (SELECT jsonb_build_array(count(*), max(updated_at)) FROM offline_conversion_queue),
  'credentials', (SELECT jsonb_build_array(count(*), max(updated_at)) FROM provider_credentials),
  'breakers', (SELECT jsonb_build_array(count(*), max(updated_at)) FROM provider_health_state),
  'audit', (SELECT count(*) FROM audit_log),
  'dead_letters', (SELECT jsonb_build_array(count(*), max(last_replay_at)) FROM dead_letters),
  'tokens', (SELECT jsonb_build_array(count(*), count(revoked_at)) FROM private.api_tokens)
)::text
"""


class Db:
    """One owner connection on a loop of its own (the fuzz loop itself is synchronous)."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.conn: asyncpg.Connection = self.run(asyncpg.connect(url))

    def run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=60)

    def fingerprint(self) -> str:
        return str(self.run(self.conn.fetchval(FINGERPRINT)))

    def close(self) -> None:
        self.run(self.conn.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


async def _seed(pool: asyncpg.Pool) -> dict[str, Any]:
    """A site with an origin, an ingest key, members, a session, an intent, a conversation and a
    draft sale: real ids for the generated requests to reach."""
    async with pool.acquire() as conn:
        site = await tenancy.create_site(conn, name="Fuzz shop", domain="fuzz.example.com")
        admin = await tenancy.create_token(conn, email="fuzz-admin@example.com", public_id=None, role=None,
                                           platform_admin=True)  # fmt: skip
        owner = await tenancy.create_token(conn, email="fuzz-owner@example.com", public_id=site["public_id"],
                                           role="owner")  # fmt: skip
        ingest_key = "ik_" + uuid.uuid4().hex
        await conn.execute(
            "UPDATE sites SET ingest_key_sha256 = encode(sha256($2::bytea), 'hex') WHERE id = $1",
            uuid.UUID(site["site_id"]),
            ingest_key.encode(),
        )
    session = await make_session(pool, site["site_id"], fingerprint="fuzz-fp")
    call_id = await make_intent(pool, site["site_id"], session)
    conv_id = await pool.fetchval(
        "INSERT INTO conversations (site_id, primary_call_id) VALUES ($1, $2) RETURNING id",
        uuid.UUID(site["site_id"]),
        uuid.UUID(call_id),
    )
    sale_id = await pool.fetchval(
        "INSERT INTO sales (site_id, occurred_at, amount_minor, currency) VALUES ($1, now(), 100, 'TRY') RETURNING id",
        uuid.UUID(site["site_id"]),
    )
    return {
        "site": site,
        "tokens": [admin["token"], owner["token"]],
        "ingest_key": ingest_key,
        "ids": {
            "site": site["public_id"],
            "call_id": call_id,
            "conversation_id": str(conv_id),
            "sale_id": str(sale_id),
            "dead_letter_id": "1",
            "name": sorted(JOBS),
            "entity_id": [call_id, session["id"], str(sale_id)],
        },
    }


# values that get a generated body past the checks a route makes beyond its schema
_MEANINGFUL: dict[str, dict[str, list[Any]]] = {
    "/api/calls/{call_id}/actions": {"action": ["seal", "junk", "cancel", "restore", "undo"]},
    "/api/conversations/{conversation_id}/links": {"entity_type": ["session", "call", "event", "sale"]},
    "/api/conversations/{conversation_id}/resolve": {"status": ["WON", "LOST", "JUNK"]},
    "/api/sales": {"occurred_at": ["2026-11-20T10:00:00Z", "2026-11-20", "2026-11-20T10:00:00+03:00"]},
    "/api/call-event": {"fingerprint": ["fuzz-fp"]},
    "/api/consent": {"identifier_type": ["session_id", "fingerprint"], "scopes": [["analytics"], []]},
    "/api/privacy/erase": {"identifier_type": ["session_id", "fingerprint", "phone", "email"]},
    "/api/oci/requeue": {"status": ["FAILED", "BLOCKED"]},
    "/api/oci/breaker/reset": {"destination": ["google_ads", "data_manager"]},
}


class Fuzzer:
    def __init__(self, base: str, db: Db, seed: dict[str, Any], cron_secret: str) -> None:
        self.base = base
        self.db = db
        self.seed = seed
        self.cron_secret = cron_secret
        self.http = httpx.Client(base_url=base, timeout=60)
        self.by_status: collections.Counter[int] = collections.Counter()
        self.by_route: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        self.server_errors: list[str] = []
        self.changed_on_reject: list[str] = []
        self.last = db.fingerprint()

    @property
    def sent(self) -> int:
        return sum(self.by_status.values())

    def _known(self, case: Any, rnd: random.Random) -> None:
        """Put real ids into the generated path and query parameters (and bodies' site)."""
        ids = self.seed["ids"]

        def pick(name: str) -> Any:
            value = ids[name]
            return rnd.choice(value) if isinstance(value, list) else value

        for name in list(case.path_parameters or {}):
            if name in ids:
                case.path_parameters[name] = pick(name)
        if case.query is not None and "site" in case.query:
            case.query["site"] = ids["site"]
        body = case.body
        if isinstance(body, dict):
            for key in ("site", "s", "site_id"):
                if key in body:
                    body[key] = ids["site"]
            if "entity_id" in body:
                body["entity_id"] = pick("entity_id")
            # values the routes check beyond the schema, so generated bodies also get past
            # those checks and into the deeper code (sometimes; the rest stay as generated)
            for key, choices in _MEANINGFUL.get(case.operation.path, {}).items():
                if rnd.random() < 0.7:
                    body[key] = rnd.choice(choices)
            if case.operation.path == "/api/sync":
                batch = body.get("events")
                events: list[Any] = batch if isinstance(batch, list) else [body]
                for event in events:
                    if isinstance(event, dict):
                        event["s"] = ids["site"]
                        event.setdefault("u", "https://fuzz.example.com/")
                        if rnd.random() < 0.7:
                            event["consent"] = ["analytics", "marketing"]

    def send(self, case: Any, valid: bool, known: bool, rnd: random.Random) -> None:
        if known:
            self._known(case, rnd)
        kwargs = case.as_transport_kwargs(base_url=self.base)
        # our own credentials, never the generated ones
        headers = {
            k: v
            for k, v in kwargs.get("headers", {}).items()
            if k.lower() not in {"authorization", "x-ops-signature", "x-cron-secret", "user-agent"}
        }
        headers["User-Agent"] = "opsmantik-fuzz"
        content: bytes | None = None
        if "json" in kwargs:
            content = json.dumps(kwargs["json"]).encode()
            headers["Content-Type"] = "application/json"
        elif kwargs.get("data") is not None:
            data = kwargs["data"]
            content = data if isinstance(data, bytes) else str(data).encode()
        path = case.operation.path
        site = self.seed["site"]
        if valid:
            if path in ("/api/call-event", "/api/consent"):
                ts = int(time.time())
                headers.update(
                    {
                        "X-Ops-Site-Id": site["public_id"],
                        "X-Ops-Ts": str(ts),
                        "X-Ops-Signature": sign(site["secret"], ts, content or b""),
                    }
                )
            elif path == "/api/sync":
                if rnd.random() < 0.5:
                    headers["Origin"] = "https://fuzz.example.com"
                else:
                    headers["X-OpsMantik-Ingest-Key"] = self.seed["ingest_key"]
            elif path.startswith("/api/jobs/"):
                headers["X-Cron-Secret"] = self.cron_secret
            else:
                headers["Authorization"] = f"Bearer {rnd.choice(self.seed['tokens'])}"
        elif rnd.random() < 0.3:
            headers["Authorization"] = "Bearer opsm_" + uuid.uuid4().hex
        url = httpx.URL(kwargs["url"])
        try:
            resp = self.http.request(
                kwargs["method"], url.raw_path.decode(), params=kwargs.get("params"), headers=headers, content=content
            )
        except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
            return  # not sendable over HTTP at all (the client refuses it): not a request
        status = resp.status_code
        self.by_status[status] += 1
        self.by_route[f"{kwargs['method']} {path}"][status] += 1
        now = self.db.fingerprint()
        if status >= 500:
            self.server_errors.append(
                f"{status} {kwargs['method']} {resp.request.url} headers={dict(headers)} "
                f"body={content[:500] if content else None!r} -> {resp.text[:300]}"
            )
        elif 400 <= status < 500 and now != self.last:
            self.changed_on_reject.append(f"{status} {kwargs['method']} {resp.request.url} body={content!r}")
        self.last = now

    def run_operation(self, operation: Any, valid: bool, examples: int, seed: int) -> None:
        rnd = random.Random(seed)

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=False,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @hypothesis_seed(seed)
        @given(case=operation.as_strategy(), known=st.booleans())
        def check(case: Any, known: bool) -> None:
            self.send(case, valid, known, rnd)

        check()

    def report(self) -> str:
        lines = [f"fuzz: {self.sent} requests (seed {SEED}); by status: {dict(sorted(self.by_status.items()))}"]
        lines.append(f"5xx answers: {sum(n for s, n in self.by_status.items() if s >= 500)}")
        for route, counts in sorted(self.by_route.items()):
            lines.append(f"  {route}: {dict(sorted(counts.items()))}")
        return "\n".join(lines)


@pytest.fixture
def fuzz_stack(settings: Any, db_url: str, stack: dict[str, Any]) -> Iterator[tuple[str, Db, dict[str, Any], str]]:
    from gateway.app import create_app
    from opsmantik_stream.db import close_pool, create_pool
    from tests.serving import serve_in_thread

    async def seed() -> dict[str, Any]:
        pool = await create_pool(db_url, min_size=1, max_size=2)
        try:
            return await _seed(pool)
        finally:
            await close_pool(pool)

    seeded = asyncio.run(seed())
    cron_secret = "fuzz-cron-" + uuid.uuid4().hex
    # generous limits: the fuzzer is one client sending thousands of requests
    cfg = settings.with_overrides(
        cron_secret=cron_secret,
        rate_limit_per_min=1_000_000,
        call_event_rate_limit_per_min=1_000_000,
        call_event_fingerprint_rate_limit_per_min=1_000_000,
        call_event_lookup_rate_limit_per_min=1_000_000,
    )
    app = create_app(settings=cfg, db_url=db_url, ray_enabled=True)
    db = Db(db_url)
    try:
        with serve_in_thread(app, lifespan="on") as base:
            yield base, db, seeded, cron_secret
    finally:
        db.close()


@pytest.mark.timeout(3600)
def test_fuzz_every_route_with_and_without_credentials(fuzz_stack: tuple[str, Db, dict[str, Any], str]) -> None:
    base, db, seeded, cron_secret = fuzz_stack
    spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == sum(len(ops) for ops in spec["paths"].values())
    fuzzer = Fuzzer(base, db, seeded, cron_secret)
    groups = [(op, valid) for op in operations for valid in (True, False)]
    rounds = 0
    while fuzzer.sent < REQUESTS:
        per_group = max(1, (REQUESTS - fuzzer.sent) // len(groups) + 1)
        for i, (op, valid) in enumerate(groups):
            fuzzer.run_operation(op, valid, per_group, seed=SEED + rounds * 1000 + i)
        rounds += 1
    print("\n" + fuzzer.report())
    summary_path = os.environ.get("OPSMANTIK_TEST_FUZZ_SUMMARY")
    if summary_path:
        with open(summary_path, "w") as fh:
            json.dump(
                {
                    "requests": fuzzer.sent,
                    "seed": SEED,
                    "by_status": {str(k): v for k, v in sorted(fuzzer.by_status.items())},
                    "server_errors": len(fuzzer.server_errors),
                    "changed_on_reject": len(fuzzer.changed_on_reject),
                    "by_route": {r: {str(k): v for k, v in c.items()} for r, c in sorted(fuzzer.by_route.items())},
                },
                fh,
                indent=2,
            )
    # every route was exercised with and without credentials
    assert {f"{op.method.upper()} {op.path}" for op in operations} <= set(fuzzer.by_route)
    assert fuzzer.server_errors == [], "\n".join(fuzzer.server_errors[:20])
    assert fuzzer.changed_on_reject == [], "\n".join(fuzzer.changed_on_reject[:20])
    assert fuzzer.sent >= REQUESTS
