"""The Uploader actors on real Ray against the emulator (real uvicorn on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import ray

from actors.runtime import get_actor
from opsmantik_stream.config import Settings
from opsmantik_stream.jobs import run_job
from tests.integration._uploader_support import (
    add_rows,
    assert_ledger_complete,
    rows_of,
    set_creds,
)

pytestmark = pytest.mark.integration


async def _wait_until(pred: Callable[[], Any], timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_happy_path_to_completed(pool, make_site, emu, uploader_stack) -> None:
    s, [uploader] = uploader_stack(1)
    site = await make_site()
    await set_creds(pool, s, site["site_id"])
    rows = await add_rows(pool, site["site_id"], ["Cj0Ka", "Cj0Kb", "Cj0Kc"])
    summary = await uploader.run_once.remote()
    assert summary["completed"] == 3 and summary["request_id"]
    got = await rows_of(pool, [r["id"] for r in rows])
    for r in got.values():
        assert r["status"] == "COMPLETED" and r["uploaded_at"] is not None
        assert r["provider_request_id"] == summary["request_id"] and r["attempt"] == 1
    state = await emu.state()
    assert state["order_id_counts"] == {r["order_id"]: 1 for r in rows}
    ledger = await pool.fetch("SELECT * FROM provider_upload_attempts ORDER BY id")
    assert [r["phase"] for r in ledger] == ["STARTED", "FINISHED"]
    assert ledger[1]["completed_count"] == 3 and ledger[1]["request_id"] == summary["request_id"]
    assert ledger[1]["http_status"] == 200 and ledger[1]["breaker_state"] == "CLOSED"
    assert await pool.fetchval("SELECT count(*) FROM provider_leases") == 0


async def test_killed_after_send_is_rescued_and_sent_once(pool, make_site, emu, uploader_stack, settings) -> None:
    s, [uploader] = uploader_stack(1)
    site = await make_site()
    await set_creds(pool, s, site["site_id"])
    [row] = await add_rows(pool, site["site_id"], ["Cj0Kcrash"])
    await emu.config(latency_ms=20000)  # Google stores it, the answer never arrives in time
    ref = uploader.run_once.remote()

    async def accepted() -> bool:
        return (await emu.state())["accepted_count"] == 1

    await _wait_until(accepted)
    ray.kill(uploader, no_restart=False)  # dies after sending, before FINISHED
    with pytest.raises(ray.exceptions.RayError):
        await ref
    await emu.config(latency_ms=0)
    r = (await rows_of(pool, [row["id"]]))[row["id"]]
    assert r["status"] == "PROCESSING"
    phases = await pool.fetch("SELECT phase FROM provider_upload_attempts")
    assert [p["phase"] for p in phases] == ["STARTED"]  # visible to operators as unfinished
    rescued = await run_job("upload_rescue", pool, s, now=datetime.now(UTC) + timedelta(seconds=5))
    assert rescued["rescued"] == 1
    restarted = get_actor(uploader_stack_name(s), s.ray_namespace)

    async def back_up() -> bool:
        try:
            return bool(await restarted.ping.remote() == "ok")
        except ray.exceptions.RayError:
            return False

    await _wait_until(back_up)  # Ray restarts the killed actor (max_restarts=-1)
    result = await restarted.run_once.remote()
    assert result["completed"] == 1
    r = (await rows_of(pool, [row["id"]]))[row["id"]]
    assert r["status"] == "COMPLETED" and r["attempt"] == 2
    state = await emu.state()
    assert state["order_id_counts"] == {row["order_id"]: 1}  # exactly one accepted conversion
    assert state["order_id_attempts"] == {row["order_id"]: 2}  # re-sent with the same order id
    await assert_ledger_complete(pool)


def uploader_stack_name(s: Settings) -> str:
    from actors.registry import uploader_actor_name

    return uploader_actor_name(1, 0)


async def test_two_uploaders_never_process_the_same_row(pool, make_site, emu, uploader_stack) -> None:
    # One batch at a time per uploader and 40 ms per request: alone, one uploader would need
    # 20 requests (0.8 s or more) for the 60 rows, so the other, already polling every 50 ms,
    # takes part however late Ray scheduled it.
    s, uploaders = uploader_stack(2, upload_chunk_size=3, uploader_concurrency=1)
    sites = [await make_site() for _ in range(2)]
    for site in sites:
        await set_creds(pool, s, site["site_id"])
    await emu.config(latency_ms=40)
    await asyncio.gather(*(u.start.remote() for u in uploaders))

    async def both_polling() -> bool:
        statuses = await asyncio.gather(*(u.status.remote() for u in uploaders))
        return all(st["running"] and st["share"] is not None and st["iterations"] >= 1 for st in statuses)

    await _wait_until(both_polling)  # each has its share and has looked for work once
    rows = []
    for site in sites:
        rows += await add_rows(pool, site["site_id"], [f"Cj0K{i}" for i in range(30)])
    for u in uploaders:
        u.wake.remote()

    async def all_done() -> bool:
        return await pool.fetchval("SELECT count(*) FROM offline_conversion_queue WHERE status = 'COMPLETED'") == len(
            rows
        )

    try:
        await _wait_until(all_done)
    finally:
        await asyncio.gather(*(u.drain.remote() for u in uploaders))
    got = await rows_of(pool, [r["id"] for r in rows])
    assert all(r["attempt"] == 1 for r in got.values())
    state = await emu.state()
    assert state["order_id_attempts"] == {r["order_id"]: 1 for r in rows}  # never sent twice
    ledger = await assert_ledger_complete(pool)
    finished = await pool.fetch("SELECT uploader_id, row_count FROM provider_upload_attempts WHERE phase = 'FINISHED'")
    assert sum(f["row_count"] for f in finished) == len(rows) == 60 and len(ledger) == len(finished)
    assert len({f["uploader_id"] for f in finished}) == 2  # both uploaders took part


@pytest.mark.parametrize(("n_uploaders", "rps"), [(1, 8), (4, 12)])
async def test_requests_never_exceed_the_account_rate(pool, make_site, emu, uploader_stack, n_uploaders, rps) -> None:
    # The pool's bound holds at the wire for sends that reach Google within the margin of their
    # slot. The emulator counts in a thread of this busy test process, so a request may be
    # counted later than it was sent: a margin of 0.3 s instead of 0.05 s covers that.
    s, uploaders = uploader_stack(n_uploaders, upload_chunk_size=1, upload_bucket_margin_s=0.3)
    account = "3333333333"
    # several sites share one Google account: the budget is the account's, for the whole pool
    sites = [await make_site() for _ in range(n_uploaders)]
    rows = []
    for site in sites:
        await set_creds(pool, s, site["site_id"], customer_id=account, requests_per_s=rps)
        rows += await add_rows(pool, site["site_id"], [f"Cj0K{i}" for i in range(3 * rps // n_uploaders)])
    # Google itself enforces the same limit in 1 s windows: a 429 would mean we exceeded it
    await emu.config(account_rates={account: {"rps": rps}})
    await asyncio.gather(*(u.start.remote() for u in uploaders))

    async def all_done() -> bool:
        return await pool.fetchval("SELECT count(*) FROM offline_conversion_queue WHERE status = 'COMPLETED'") == len(
            rows
        )

    try:
        await _wait_until(all_done)
    finally:
        await asyncio.gather(*(u.drain.remote() for u in uploaders))
    state = await emu.state()
    per_second = state["requests_per_second"][account]
    assert max(per_second.values()) <= rps, per_second
    assert "429" not in state["responses_by_status"], state["responses_by_status"]
    assert sum(per_second.values()) == len(rows)
    await assert_ledger_complete(pool)
