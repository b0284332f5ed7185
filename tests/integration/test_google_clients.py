"""Round trips of both Google destinations against the emulator (in-process ASGI and real uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette

from opsmantik_stream.config import Settings, load_settings
from opsmantik_stream.destinations import registry
from opsmantik_stream.destinations.base import (
    Conversion,
    DestinationContext,
    ErrorCategory,
    OutcomeKind,
    UserIdentifier,
)
from opsmantik_stream.destinations.data_manager import DataManagerDestination
from opsmantik_stream.destinations.google.credentials import GoogleCredentials
from opsmantik_stream.destinations.google.oauth import TokenProvider
from opsmantik_stream.destinations.google.transport import GoogleDestination
from opsmantik_stream.destinations.google_ads import GoogleAdsDestination
from opsmantik_stream.emulator import EmulatorConfig, EmulatorState, create_app
from tests.serving import serve_in_thread

pytestmark = pytest.mark.integration

BASE = "http://emu.test"
T = datetime(2026, 11, 2, 13, 5, 9, tzinfo=UTC)
K = OutcomeKind


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.25) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def creds(destination: str = "google_ads", **kw: object) -> GoogleCredentials:
    c = GoogleCredentials(
        client_id="client",
        client_secret="secret",
        refresh_token="refresh",
        customer_id="123-456-7890",
        conversion_action="customers/1234567890/conversionActions/987654",
    )
    return msgspec.structs.replace(c, **kw)


def rows(n: int, prefix: str = "o", gclids: list[str] | None = None) -> list[Conversion]:
    return [
        Conversion(
            queue_id=f"q{i}",
            order_id=f"{prefix}{i}",
            conversion_time=T,
            value_minor=1000 + i,
            currency="EUR",
            gclid=(gclids[i] if gclids else f"Cj0K{i}"),
            user_identifiers=(UserIdentifier.phone("+16502530000"),),
            consent_scopes=("analytics", "marketing"),
        )
        for i in range(n)
    ]


def deployment(base: str, **kw: object) -> Settings:
    """The deployment's Google endpoints, pointed at the emulator."""
    return load_settings(
        environ={}, google_ads_base_url=base, data_manager_base_url=base, google_token_url=f"{base}/token", **kw
    )


def make(
    destination: str,
    http: httpx.AsyncClient,
    base: str,
    *,
    chunk_size: int = 200,
    timeout: httpx.Timeout | None = None,
    tokens: TokenProvider | None = None,
    **settings: object,
) -> GoogleDestination:
    ctx = DestinationContext(deployment(base, **settings), http, timeout or httpx.Timeout(30.0), chunk_size)
    cls = registry.get(destination)
    assert issubclass(cls, GoogleDestination)
    return cls(ctx, tokens=tokens)


@dataclasses.dataclass
class Env:
    app: Starlette
    state: EmulatorState
    clock: FakeClock
    http: httpx.AsyncClient

    def configure(self, **kw: object) -> None:
        self.state.update_config(kw)

    def client(self, destination: str = "google_ads", **kw: Any) -> GoogleDestination:
        return make(destination, self.http, BASE, **kw)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FakeClock()
    app = create_app(EmulatorConfig(seed=7), clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        yield Env(app, app.state.emulator, clock, http)


DESTS = ["google_ads", "data_manager"]


# ------------------------------------------------------------------ success / partial failure


@pytest.mark.parametrize("dest", DESTS)
async def test_success_round_trip(env: Env, dest: str) -> None:
    client = env.client(dest)
    seen: list[int] = []

    async def before(n: int) -> None:
        seen.append(n)

    res = await client.upload(creds(dest), rows(3), before_request=before)
    assert [r.kind for r in res.rows] == [K.COMPLETED] * 3
    assert res.http_status == 200 and res.request_id and res.requests_sent == 1
    assert all(r.request_id == res.request_id for r in res.rows)
    assert seen == [3]
    snap = env.state.snapshot()
    assert snap["order_id_counts"] == {"o0": 1, "o1": 1, "o2": 1}
    rec = snap["conversions"][0]
    assert rec["value"] == 10.0 and rec["currency"] == "EUR" and rec["user_identifiers"] == 1
    assert rec["request_id"] == res.request_id
    if dest == "google_ads":
        assert rec["conversion_date_time"] == "2026-11-02 13:05:09+00:00"
        assert rec["consent"] == {"adUserData": "GRANTED"}
    else:
        assert rec["conversion_date_time"] == "2026-11-02T13:05:09Z"
        assert rec["consent"] == {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"}


async def test_ads_partial_failure_per_row(env: Env) -> None:
    gclids = [
        "okA",
        "TOORECENT1",
        "EXPIRED2",
        "UNPARSEABLE3",
        "INTERNAL4",
        "NOTALLOWLISTED5",
        "okB",
        "FLAKY7",
    ]
    res = await env.client().upload(creds(), rows(8, gclids=gclids))
    got = [(r.kind, r.error_code) for r in res.rows]
    assert got == [
        (K.COMPLETED, None),
        (K.RETRY_AFTER_6H, "TOO_RECENT_EVENT"),
        (K.FAILED, "EXPIRED_EVENT"),
        (K.FAILED, "UNPARSEABLE_GCLID"),
        (K.RETRY, "INTERNAL_ERROR"),
        (K.BLOCKED, "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"),
        (K.COMPLETED, None),
        (K.RETRY, "TRANSIENT_ERROR"),
    ]
    assert res.rows[1].retry_delay_s == 6 * 3600
    # the FLAKY row succeeds when retried, alone, in a new request (index 0 there)
    again = await env.client().upload(creds(), rows(8, gclids=gclids)[7:])
    assert again.rows[0].kind is K.COMPLETED
    assert sorted(env.state.order_id_counts) == ["o0", "o6", "o7"]


async def test_chunking_gives_each_chunk_its_own_outcome(env: Env) -> None:
    env.configure(failure_rate=0.0)
    client = env.client(chunk_size=2)
    sizes: list[int] = []

    async def before(n: int) -> None:
        sizes.append(n)
        if len(sizes) == 2:
            env.configure(outage=True)  # the second chunk hits an outage
        else:
            env.configure(outage=False)

    res = await client.upload(creds(), rows(5), before_request=before)
    assert sizes == [2, 2, 1]
    assert [r.kind for r in res.rows] == [K.COMPLETED, K.COMPLETED, K.RETRY, K.RETRY, K.COMPLETED]
    assert res.requests_sent == 3 and len(res.request_ids) == 3
    assert res.error_code == "UNAVAILABLE"


# ------------------------------------------------------------------ whole-request failures


async def test_400_too_many_conversions_splits(env: Env) -> None:
    env.configure(max_conversions=2)
    res = await env.client(chunk_size=3).upload(creds(), rows(3))
    assert {(r.kind, r.error_code) for r in res.rows} == {(K.SPLIT_BATCH, "TOO_MANY_CONVERSIONS_IN_REQUEST")}
    assert res.http_status == 400 and res.request_id
    dm = await env.client("data_manager", chunk_size=3).upload(creds("data_manager"), rows(3))
    assert {(r.kind, r.error_code) for r in dm.rows} == {(K.SPLIT_BATCH, "TOO_MANY_EVENTS")}


async def test_400_retired_and_unknown_versions_block(env: Env) -> None:
    res = await env.client(google_ads_api_version="v21").upload(creds(), rows(1))
    assert (res.rows[0].kind, res.rows[0].error_code, res.http_status) == (
        K.BLOCKED,
        "UNSUPPORTED_VERSION",
        400,
    )
    res = await env.client(google_ads_api_version="v99").upload(creds(), rows(1))
    assert (res.rows[0].kind, res.rows[0].error_category, res.http_status) == (
        K.BLOCKED,
        ErrorCategory.CONFIG,
        404,
    )


@pytest.mark.parametrize("dest", DESTS)
async def test_401_refreshes_once_then_succeeds(env: Env, dest: str) -> None:
    env.configure(token_ttl_s=100)
    client = env.client(dest)
    # the bucket's hook: the token is already there when it is called (a token fetch never
    # stands between the bucket's slot and the send), and the resend after a 401 is a request
    # of its own, so it goes through the bucket again
    tokens_at_hook: list[int] = []

    async def before(n: int) -> None:
        tokens_at_hook.append(env.state.token_requests)

    assert (await client.upload(creds(dest), rows(1, "a"), before_request=before)).rows[0].kind is K.COMPLETED
    assert tokens_at_hook == [1]
    env.clock.t += 200  # the emulator expired the token; the client's cache has not noticed
    res = await client.upload(creds(dest), rows(1, "b"), before_request=before)
    assert res.rows[0].kind is K.COMPLETED
    assert res.requests_sent == 2
    assert env.state.token_requests == 2
    assert env.state.responses_by_status[401] == 1
    assert tokens_at_hook == [1, 1, 2]


class _BogusTokens(TokenProvider):
    async def get_token(self, creds: GoogleCredentials) -> str:
        self.refreshes += 1
        return "not-a-token"


@pytest.mark.parametrize("dest", DESTS)
async def test_401_twice_blocks(env: Env, dest: str) -> None:
    client = env.client(dest, tokens=_BogusTokens(env.http))
    res = await client.upload(creds(dest), rows(2))
    assert {(r.kind, r.error_category) for r in res.rows} == {(K.BLOCKED, ErrorCategory.AUTH)}
    assert res.http_status == 401 and res.requests_sent == 2


@pytest.mark.parametrize("dest", DESTS)
async def test_invalid_grant_blocks_without_api_call(env: Env, dest: str) -> None:
    env.configure(invalid_grant_tokens=["rt-secret-xyz"])
    hooked: list[int] = []

    async def before(n: int) -> None:
        hooked.append(n)

    res = await env.client(dest).upload(creds(dest, refresh_token="rt-secret-xyz"), rows(2), before_request=before)
    assert hooked == []  # no bucket slot spent on an account without a token
    assert {(r.kind, r.error_code, r.error_category) for r in res.rows} == {
        (K.BLOCKED, "invalid_grant", ErrorCategory.AUTH)
    }
    assert res.requests_sent == 0 and env.state.api_requests == 0
    assert "rt-secret-xyz" not in (res.message or "")


async def test_token_endpoint_outage_is_transient(env: Env) -> None:
    env.configure(token_outage=True)
    res = await env.client().upload(creds(), rows(1))
    assert (res.rows[0].kind, res.rows[0].error_code) == (K.RETRY, "TOKEN_ENDPOINT_UNAVAILABLE")


async def test_403_not_allowlisted_and_permission(env: Env) -> None:
    env.configure(not_allowlisted=["1234567890"])
    res = await env.client().upload(creds(), rows(2))
    assert {(r.kind, r.error_code) for r in res.rows} == {(K.BLOCKED, "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE")}
    assert res.http_status == 403
    # Data Manager is the way out for a non-allowlisted account
    dm = await env.client("data_manager").upload(creds("data_manager"), rows(2))
    assert {r.kind for r in dm.rows} == {K.COMPLETED}
    env.configure(not_allowlisted=[], manager_links={"1234567890": ["5555555555"]})
    res = await env.client().upload(creds(login_customer_id="999-999-9999"), rows(1, "p"))
    assert (res.rows[0].kind, res.rows[0].error_code, res.http_status) == (
        K.BLOCKED,
        "USER_PERMISSION_DENIED",
        403,
    )
    res = await env.client().upload(creds(login_customer_id="555-555-5555"), rows(1, "p"))
    assert res.rows[0].kind is K.COMPLETED


async def test_403_data_manager_scope(env: Env) -> None:
    env.configure(ads_only_refresh_tokens=["ads-only"])
    res = await env.client("data_manager").upload(creds("data_manager", refresh_token="ads-only"), rows(1))
    assert (res.rows[0].kind, res.rows[0].error_code, res.http_status) == (
        K.BLOCKED,
        "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        403,
    )


@pytest.mark.parametrize("dest", DESTS)
async def test_429_with_retry_info(env: Env, dest: str) -> None:
    env.configure(rate_rps=1)
    client = env.client(dest)
    assert (await client.upload(creds(dest), rows(1, "a"))).rows[0].kind is K.COMPLETED
    res = await client.upload(creds(dest), rows(2, "b"))
    assert res.http_status == 429
    assert {(r.kind, r.error_category) for r in res.rows} == {(K.RETRY, ErrorCategory.RATE_LIMIT)}
    assert res.rows[0].retry_delay_s == 1.0  # rest of the current 1 s window, rounded up
    assert res.rows[0].error_code in ("RESOURCE_TEMPORARILY_EXHAUSTED", "RATE_LIMIT_EXCEEDED")
    env.clock.t += 1
    assert (await client.upload(creds(dest), rows(2, "b"))).rows[0].kind is K.COMPLETED


async def test_429_conversions_per_minute_and_daily_quota(env: Env) -> None:
    env.configure(rate_cpm=5)
    client = env.client()
    assert (await client.upload(creds(), rows(3, "a"))).rows[0].kind is K.COMPLETED
    env.clock.t += 10
    res = await client.upload(creds(), rows(3, "b"))
    # the 3 conversions of second 0 leave the 60 s window at second 60 (50 s from now)
    assert (res.rows[0].kind, res.rows[0].retry_delay_s) == (K.RETRY, 50.0)
    env.clock.t += 50
    assert (await client.upload(creds(), rows(3, "b"))).rows[0].kind is K.COMPLETED
    env.configure(rate_cpm=None, daily_ops_limit=2)
    res = await client.upload(creds(), rows(1, "c"))
    assert (res.rows[0].error_code, res.rows[0].error_category) == (
        "RESOURCE_EXHAUSTED",
        ErrorCategory.RATE_LIMIT,
    )
    assert res.rows[0].retry_delay_s is not None and res.rows[0].retry_delay_s > 3600


@pytest.mark.parametrize("dest", DESTS)
@pytest.mark.parametrize(("status", "code"), [(500, "INTERNAL"), (503, "UNAVAILABLE"), (504, "DEADLINE_EXCEEDED")])
async def test_5xx_is_transient(env: Env, dest: str, status: int, code: str) -> None:
    env.configure(failure_rate=1.0, failure_status=status)
    res = await env.client(dest).upload(creds(dest), rows(2))
    assert {(r.kind, r.error_code, r.error_category) for r in res.rows} == {(K.RETRY, code, ErrorCategory.TRANSIENT)}
    assert res.http_status == status and res.request_id


@pytest.mark.parametrize("dest", DESTS)
async def test_outage_switch(env: Env, dest: str) -> None:
    env.configure(outage=True)
    res = await env.client(dest).upload(creds(dest), rows(1))
    assert (res.http_status, res.rows[0].kind, res.rows[0].error_code) == (503, K.RETRY, "UNAVAILABLE")
    env.configure(outage=False)
    assert (await env.client(dest).upload(creds(dest), rows(1))).rows[0].kind is K.COMPLETED


async def test_data_manager_invalid_conversion_action_blocks(env: Env) -> None:
    env.configure(conversion_actions=["111"])
    dm = await env.client("data_manager").upload(creds("data_manager"), rows(2))
    assert {(r.kind, r.error_code) for r in dm.rows} == {(K.BLOCKED, "INVALID_CONVERSION_ACTION_ID")}
    ads = await env.client().upload(creds(), rows(2))
    assert {(r.kind, r.error_code) for r in ads.rows} == {(K.BLOCKED, "NO_CONVERSION_ACTION_FOUND")}


# ------------------------------------------------------------------ tokens and dedupe


async def test_token_cached_until_60s_before_expiry(env: Env) -> None:
    mono = FakeClock(1000.0)
    tokens = TokenProvider(env.http, token_url=f"{BASE}/token", clock=mono)
    client = env.client(tokens=tokens)
    for i in range(5):
        await client.upload(creds(), rows(1, f"a{i}"))
    assert env.state.token_requests == 1 and tokens.refreshes == 1
    mono.t += 3599 - 60 - 1  # still inside the cache window
    await client.upload(creds(), rows(1, "b"))
    assert env.state.token_requests == 1
    mono.t += 1  # 60 s before expiry: refresh
    await client.upload(creds(), rows(1, "c"))
    assert env.state.token_requests == 2
    # a different refresh token is a different cache entry
    await client.upload(creds(refresh_token="other"), rows(1, "d"))
    assert env.state.token_requests == 3


async def test_ads_dedupe_by_order_id(env: Env) -> None:
    client = env.client()
    first = await client.upload(creds(), rows(3))
    assert [r.kind for r in first.rows] == [K.COMPLETED] * 3
    second = await client.upload(creds(), rows(3))
    assert [(r.kind, r.error_code) for r in second.rows] == [(K.ALREADY_EXISTS, "ORDER_ID_ALREADY_IN_USE")] * 3
    assert env.state.order_id_counts == {"o0": 1, "o1": 1, "o2": 1}
    assert env.state.order_id_attempts["o0"] == 2
    # two rows with one order id in the same request: neither is stored
    dup = rows(2, "d")
    dup[1] = dataclasses.replace(dup[1], order_id="d0")
    res = await client.upload(creds(), dup)
    assert [(r.kind, r.error_code) for r in res.rows] == [(K.RETRY, "DUPLICATE_ORDER_ID")] * 2
    assert "d0" not in env.state.order_id_counts


async def test_data_manager_dedupe_is_an_adjustment(env: Env) -> None:
    client = env.client("data_manager")
    await client.upload(creds("data_manager"), rows(2))
    again = [dataclasses.replace(r, value_minor=9900) for r in rows(2)]
    res = await client.upload(creds("data_manager"), again)
    assert [r.kind for r in res.rows] == [K.COMPLETED] * 2
    assert env.state.order_id_counts == {"o0": 1, "o1": 1}
    assert env.state.adjustments == {"o0": 1, "o1": 1}
    assert env.state.accepted[0]["value"] == 99.0


async def test_registry_builds_both_destinations_sharing_one_token_cache(env: Env) -> None:
    assert registry.names()[:2] == ["google_ads", "data_manager"]
    ctx = DestinationContext(deployment(BASE), env.http, httpx.Timeout(5.0), 10)
    ads, dm = registry.get("google_ads")(ctx), registry.get("data_manager")(ctx)
    assert isinstance(ads, GoogleAdsDestination) and isinstance(dm, DataManagerDestination)
    assert ads.tokens is dm.tokens  # one OAuth client for both Google destinations
    await ads.upload(creds(), rows(1, "x"))
    await dm.upload(creds(), rows(1, "y"))
    assert env.state.token_requests == 1
    with pytest.raises(registry.UnknownDestination):
        registry.get("meta")


# ------------------------------------------------------------------ real uvicorn on 127.0.0.1


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[str]:
    with serve_in_thread(app, loop="asyncio") as base:
        yield base


@pytest.mark.parametrize("dest", DESTS)
async def test_real_server_round_trip_and_timeout(dest: str) -> None:
    app = create_app(EmulatorConfig(seed=1))
    state: EmulatorState = app.state.emulator
    with serve(app) as base:
        c = creds(dest)
        # the read timeout must hold for the normal requests on a busy machine (the server is a
        # thread of this process) and still be well under the slow request's latency
        timeout = httpx.Timeout(1.0, connect=2.0)
        async with httpx.AsyncClient() as http:
            client = make(dest, http, base, timeout=timeout)
            ok = await client.upload(c, rows(2, "a"))
            assert [r.kind for r in ok.rows] == [K.COMPLETED] * 2 and ok.request_id
            # slower than the client's read timeout: ambiguous, the row is retried
            state.update_config({"latency_ms": 2500})
            slow = await client.upload(c, rows(1, "t"))
            assert (slow.rows[0].kind, slow.rows[0].error_code, slow.http_status) == (K.RETRY, "TIMEOUT", 0)
            state.update_config({"latency_ms": 0})
            # Google processed the timed-out request; the resend is recognised by its order id
            deadline = time.monotonic() + 5
            while "t0" not in state.order_id_counts and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            again = await client.upload(c, rows(1, "t"))
            expected = K.ALREADY_EXISTS if dest == "google_ads" else K.COMPLETED
            assert again.rows[0].kind is expected
            assert state.order_id_counts["t0"] == 1
            snap = (await http.get(f"{base}/_emulator/state", params={"conversions": "false"})).json()
            assert "conversions" not in snap and snap["order_id_counts"]["a0"] == 1
