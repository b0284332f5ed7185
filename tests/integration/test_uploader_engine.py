"""Uploader behaviour against the emulator over HTTP and a real PostgreSQL, driven one
iteration at a time (``UploadEngine.run_once``), so every step is deterministic."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from opsmantik_stream.config import Settings
from opsmantik_stream.jobs import run_job
from opsmantik_stream.uploads import UploadEngine
from opsmantik_stream.uploads.store import claim_rows
from tests.integration._uploader_support import (
    add_rows,
    assert_ledger_complete,
    fast_settings,
    health,
    rows_of,
    set_creds,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def fast(settings: Settings, emu_base: str) -> Settings:
    return fast_settings(settings, emu_base)


@pytest.fixture
async def engines(pool: asyncpg.Pool, fast: Settings) -> AsyncIterator[list[UploadEngine]]:
    made: list[UploadEngine] = []

    def make(name: str = "uploader-t-0", settings: Settings | None = None, **kw: Any) -> UploadEngine:
        e = UploadEngine(pool, settings or fast, name, seed=len(made), **kw)
        made.append(e)
        return e

    made_fn: Any = make
    yield made_fn  # type: ignore[misc]
    for e in made:
        await e.aclose()


async def test_partial_failure_gives_per_row_states(pool, make_site, fast, emu, engines) -> None:
    site = await make_site()
    await set_creds(pool, fast, site["site_id"])
    rows = await add_rows(pool, site["site_id"], ["Cj0Kgood", "UNPARSEABLE-1", "TRANSIENT-1", "TOORECENT-1"])
    engine = engines()
    before = datetime.now(UTC)
    summary = await engine.run_once()
    assert summary["claimed"] == 4 and summary["requests_sent"] == 1
    got = await rows_of(pool, [r["id"] for r in rows])
    ok, bad, transient, recent = (got[r["id"]] for r in rows)
    assert ok["status"] == "COMPLETED" and ok["uploaded_at"] is not None and ok["provider_request_id"]
    assert bad["status"] == "FAILED" and bad["error_code"] == "UNPARSEABLE_GCLID"
    assert bad["error_category"] == "VALIDATION"
    assert transient["status"] == "RETRY" and transient["error_category"] == "TRANSIENT"
    assert recent["status"] == "RETRY" and recent["next_retry_at"] >= before + timedelta(hours=6)
    assert all(r["attempt"] == 1 for r in got.values())
    h = await health(pool, site["site_id"])
    assert h is not None and h["state"] == "CLOSED" and h["failure_count"] == 0
    metrics = await pool.fetchrow("SELECT * FROM provider_upload_metrics WHERE site_id = $1", site["site_id"])
    assert (
        metrics["attempts_total"],
        metrics["completed_total"],
        metrics["failed_total"],
        metrics["retry_total"],
    ) == (4, 1, 1, 2)
    ledger = await assert_ledger_complete(pool)
    assert len(ledger) == 1


async def test_rate_limited_rows_wait_and_count_one_attempt(pool, make_site, fast, emu, engines) -> None:
    site = await make_site()
    await set_creds(pool, fast, site["site_id"])
    rows = await add_rows(pool, site["site_id"], ["Cj0Ka", "Cj0Kb"])
    await emu.config(account_rates={"1234567890": {"rps": 0}})  # every request: 429 with retry info
    clock = {"now": datetime.now(UTC) + timedelta(seconds=1)}  # moved, never slept through
    engine = engines(clock=lambda: clock["now"])
    before = clock["now"]
    summary = await engine.run_once()
    assert summary["claimed"] == 2 and summary["http_status"] == 429
    got = await rows_of(pool, [r["id"] for r in rows])
    for r in got.values():
        assert r["status"] == "RETRY" and r["attempt"] == 1 and r["error_category"] == "RATE_LIMIT"
        assert r["next_retry_at"] >= before + timedelta(seconds=1)  # at least Google's retryDelay
    # the account's bucket is paused: nothing is claimed, no attempt is spent
    again = await engine.run_once()
    assert again.get("idle") and not again.get("claimed")
    assert all(r["attempt"] == 1 for r in (await rows_of(pool, [r["id"] for r in rows])).values())
    h = await health(pool, site["site_id"])
    assert h["state"] == "CLOSED" and h["failure_count"] == 0  # rate limits never trip the breaker
    await emu.config(account_rates={})
    clock["now"] = max(r["next_retry_at"] for r in got.values())  # Google's delay has passed
    done = await engine.run_once()
    assert done["completed"] == 2
    final = await rows_of(pool, [r["id"] for r in rows])
    assert all(r["status"] == "COMPLETED" and r["attempt"] == 2 for r in final.values())
    assert len(await assert_ledger_complete(pool)) == 2
    state = await emu.state()
    assert state["responses_by_status"] == {"200": 1, "429": 1}


async def test_breaker_opens_after_5_transient_failures_then_probe_closes(pool, make_site, fast, emu, engines) -> None:
    site = await make_site()
    await set_creds(pool, fast, site["site_id"])
    rows = await add_rows(pool, site["site_id"], [f"Cj0K{i}" for i in range(12)])
    await emu.config(outage=True)  # every API request: 503
    # the breaker's clock is injected (and passed into the SQL gate), so the test moves it
    # instead of sleeping through the open period
    clock = {"now": datetime.now(UTC) + timedelta(seconds=1)}
    engine = engines(clock=lambda: clock["now"])
    for i in range(5):
        s = await engine.run_once()
        assert s["claimed"] > 0 and s["signal"] == "transient", (i, s)
    h = await health(pool, site["site_id"])
    assert h["state"] == "OPEN" and h["failure_count"] == 5 and h["next_probe_at"] is not None
    sent = (await emu.state())["api_requests"]
    attempts_before = {r["id"]: r["attempt"] for r in (await rows_of(pool, [r["id"] for r in rows])).values()}
    # while open: no claim, no attempt, no request, for this uploader and any other
    other = engines("uploader-t-1", clock=lambda: clock["now"])
    for e in (engine, other):
        gated = await e.run_once()
        assert gated.get("idle") and gated["gated_groups"] == 1
    assert (await emu.state())["api_requests"] == sent
    assert {r["id"]: r["attempt"] for r in (await rows_of(pool, [r["id"] for r in rows])).values()} == attempts_before
    # after the open period: one small probe batch, which closes it on success
    await emu.config(outage=False)
    clock["now"] = h["next_probe_at"]  # the probe time has come
    probe = await engine.run_once()
    assert probe["probe"] is True and probe["claimed"] == fast.upload_breaker_probe_rows
    assert probe["breaker_state"] == "CLOSED"
    h = await health(pool, site["site_id"])
    assert h["state"] == "CLOSED" and h["failure_count"] == 0 and h["probe_holder"] is None
    full = await engine.run_once()
    assert full["probe"] is False and full["claimed"] == fast.upload_chunk_size
    await assert_ledger_complete(pool)


async def test_validation_errors_never_open_breaker_and_other_sites_flow(pool, make_site, fast, emu, engines) -> None:
    bad_site, good_site, no_creds = await make_site(), await make_site(), await make_site()
    await set_creds(pool, fast, bad_site["site_id"])
    await set_creds(pool, fast, good_site["site_id"], customer_id="2222222222")
    bad = await add_rows(pool, bad_site["site_id"], [f"UNPARSEABLE-{i}" for i in range(30)])
    good = await add_rows(pool, good_site["site_id"], [f"Cj0Kgood{i}" for i in range(10)])
    blocked = await add_rows(pool, no_creds["site_id"], ["Cj0Kx", "Cj0Ky"])
    engine = engines()
    for _ in range(20):
        s = await engine.run_once()
        if s.get("idle"):
            break
    got = await rows_of(pool, [r["id"] for r in bad + good + blocked])
    assert all(got[r["id"]]["status"] == "FAILED" for r in bad)
    assert all(got[r["id"]]["status"] == "COMPLETED" for r in good)
    assert all(
        got[r["id"]]["status"] == "BLOCKED"
        and got[r["id"]]["error_code"] == "MISSING_CREDENTIALS"
        and "credentials" in got[r["id"]]["last_error"]
        for r in blocked
    )
    hb = await health(pool, bad_site["site_id"])
    assert hb["state"] == "CLOSED" and hb["failure_count"] == 0
    assert (await health(pool, good_site["site_id"]))["state"] == "CLOSED"
    hn = await health(pool, no_creds["site_id"])
    assert hn["state"] == "OPEN" and "MISSING_CREDENTIALS" in hn["last_error"]  # config error: held
    blocked_ledger = await pool.fetch(
        "SELECT phase, blocked_count, error_code, error_category FROM provider_upload_attempts WHERE site_id = $1",
        no_creds["site_id"],
    )
    assert {r["phase"] for r in blocked_ledger} == {"STARTED", "FINISHED"}
    fin = next(r for r in blocked_ledger if r["phase"] == "FINISHED")
    assert (
        fin["blocked_count"] == 2 and fin["error_code"] == "MISSING_CREDENTIALS" and fin["error_category"] == "CONFIG"
    )
    await assert_ledger_complete(pool)


async def test_undecryptable_credentials_block_rows(pool, make_site, fast, emu, engines) -> None:
    site = await make_site()
    await set_creds(pool, fast, site["site_id"])
    await pool.execute(
        "UPDATE provider_credentials SET key_fingerprint = 'other-key' WHERE site_id = $1", site["site_id"]
    )
    rows = await add_rows(pool, site["site_id"], ["Cj0Kq"])
    tokens_before = (await emu.state())["token_requests"]
    s = await engines().run_once()
    assert s["blocked"] == 1 and s["requests_sent"] == 0
    r = (await rows_of(pool, [rows[0]["id"]]))[rows[0]["id"]]
    assert r["status"] == "BLOCKED" and r["error_code"] == "CREDENTIALS_UNDECRYPTABLE"
    assert (await emu.state())["token_requests"] == tokens_before
    await assert_ledger_complete(pool)


async def test_concurrent_claims_are_disjoint(pool, make_site, fast) -> None:
    site = await make_site()
    rows = await add_rows(pool, site["site_id"], [f"Cj0K{i}" for i in range(100)])

    async def claim(i: int) -> list[Any]:
        async with pool.acquire() as conn:
            got = await claim_rows(conn, site["site_id"], "google_ads", f"u{i}", uuid.uuid4(), 15)
        return [r["id"] for r in got]

    claimed = await asyncio.gather(*(claim(i) for i in range(9)))
    flat = [x for c in claimed for x in c]
    assert len(flat) == len(set(flat)) == 100
    states = await rows_of(pool, [r["id"] for r in rows])
    assert all(r["status"] == "PROCESSING" and r["attempt"] == 1 and r["claimed_by"] for r in states.values())


async def test_late_finish_of_rescued_attempt_changes_nothing(pool, make_site, fast, emu, engines) -> None:
    site = await make_site()
    await set_creds(pool, fast, site["site_id"])
    [row] = await add_rows(pool, site["site_id"], ["Cj0Klate"])
    slow, fresh = engines("uploader-a-0"), engines("uploader-b-0")
    # the answer is held 4 s: the rescue and the resend below must both happen before it comes
    # (they take well under a second; 1.5 s was sometimes not enough on a busy machine)
    await emu.config(latency_ms=4000)
    task = asyncio.create_task(slow.run_once())
    for _ in range(400):  # until Google has stored the conversion (the answer is still delayed)
        if (await emu.state())["accepted_count"] == 1:
            break
        await asyncio.sleep(0.01)
    await emu.config(latency_ms=0)
    rescued = await run_job("upload_rescue", pool, fast, now=datetime.now(UTC) + timedelta(seconds=5))
    assert rescued["rescued"] == 1 and rescued["retry"] == 1
    r = (await rows_of(pool, [row["id"]]))[row["id"]]
    assert r["status"] == "RETRY" and r["error_code"] == "PROCESSING_STALE"
    resent = await fresh.run_once()
    assert resent["completed"] == 1  # Google: ORDER_ID_ALREADY_IN_USE -> ours -> COMPLETED
    after_resend = (await rows_of(pool, [row["id"]]))[row["id"]]
    late = await task
    assert late["transitioned"] == 0 and late["late"] is True and late["ledger_finished"] is False
    final = (await rows_of(pool, [row["id"]]))[row["id"]]
    assert dict(final) == dict(after_resend)
    assert final["status"] == "COMPLETED" and final["attempt"] == 2 and final["claimed_by"] == fresh.uploader_id
    metrics = await pool.fetchrow("SELECT * FROM provider_upload_metrics WHERE site_id = $1", site["site_id"])
    assert metrics["attempts_total"] == 2 and metrics["completed_total"] == 1 and metrics["retry_total"] == 1
    state = await emu.state()
    assert state["order_id_counts"] == {row["order_id"]: 1}
    await assert_ledger_complete(pool)


async def test_rescue_closes_orphan_started_rows(pool, make_site, fast) -> None:
    site = await make_site()
    batch = uuid.uuid4()
    await pool.execute(
        """INSERT INTO provider_upload_attempts
               (batch_id, site_id, destination, uploader_id, attempt, phase, row_count)
           VALUES ($1, $2, 'google_ads', 'uploader-x', 1, 'STARTED', 3)""",
        batch,
        site["site_id"],
    )
    result = await run_job("upload_rescue", pool, fast, now=datetime.now(UTC) + timedelta(seconds=5))
    assert result["orphans_closed"] == 1 and result["orphan_batches"] == [str(batch)]
    fin = await pool.fetchrow(
        "SELECT * FROM provider_upload_attempts WHERE batch_id = $1 AND phase = 'FINISHED'", batch
    )
    assert fin["error_code"] == "UPLOADER_LOST"
    again = await run_job("upload_rescue", pool, fast, now=datetime.now(UTC) + timedelta(seconds=5))
    assert again["orphans_closed"] == 0
