"""Fault tests (issue 7): the stack under a steady load, with faults injected one at a time.

Load (all on loopback): unsigned ``/api/sync`` events and signed ``/api/call-event`` requests
against a real uvicorn serving the gateway, and confirmed conversions queued for upload while
the uploaders drain the queue to the Google emulator (a real uvicorn too).

Faults: a SitePartition actor killed; an Uploader actor killed mid-request; a second Ray node
joining on 127.0.0.1, hosting partitions and an uploader, then stopped; PostgreSQL restarted;
partitions scaled 2 -> 4 -> 1 and uploaders 1 -> 4 -> 2; the emulator in outage, then back.

After each fault: every event that got a 2xx is stored exactly once (and every other one is
stored exactly once when the client retries it), every confirmed conversion reaches the
emulator exactly once per order id, every upload attempt has its STARTED and FINISHED ledger
rows (or was reported as orphaned by the rescue job, which closes it), and the stack recovers
by itself. The measured recovery time is printed (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
import ray
import uvicorn

from actors.runtime import get_actor, scale_stack, start_stack, stop_stack
from opsmantik_stream.config import Settings
from opsmantik_stream.jobs import run_job
from tests.ingest_support import ORIGIN, event
from tests.integration._leads_support import call_body, signed_headers
from tests.integration._uploader_support import (
    Emu,
    add_rows,
    assert_ledger_complete,
    fast_settings,
    set_creds,
)
from tests.serving import free_port

pytestmark = pytest.mark.integration

UA = "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36"
CALL_FP = "fp-caller"
# what the test's own pool may raise while PostgreSQL restarts
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)


# --------------------------------------------------------------------------- infrastructure


@pytest.fixture
async def emu(emu_base: str) -> AsyncIterator[Emu]:
    """The shared emulator (tests/integration/conftest.py) with 50 ms latency, so a kill can land
    mid-request."""
    e = Emu(emu_base)
    await e.reset(latency_ms=50.0)
    try:
        yield e
    finally:
        await e.aclose()


class Harness:
    """A stack with running uploaders, a gateway on uvicorn, sites with credentials, the load."""

    def __init__(self, settings: Settings, db_url: str, pool: asyncpg.Pool, emu: Emu) -> None:
        self.settings = settings
        self.db_url = db_url
        self.pool = pool
        self.emu = emu
        self.base = ""
        self.sites: list[dict[str, Any]] = []
        self.sync: dict[str, tuple[dict[str, Any], int]] = {}  # eid -> (body, last status)
        self.calls: dict[str, tuple[dict[str, Any], bytes, int]] = {}  # event id -> (site, body, status)
        self.orders: list[str] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.http = httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=32))
        self._server: uvicorn.Server | None = None
        self.rescued = {"rescued": 0, "orphans_closed": 0}
        self._thread: threading.Thread | None = None

    # -- lifecycle
    async def start(self, make_site: Any) -> None:
        await asyncio.to_thread(start_stack, self.settings, self.db_url, start_maintenance=False, start_uploaders=True)
        from gateway.app import create_app

        port = free_port()
        app = create_app(settings=self.settings, db_url=self.db_url, ray_enabled=True)
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        while not self._server.started:
            assert self._thread.is_alive(), "uvicorn did not start"
            await asyncio.sleep(0.05)
        self.base = f"http://127.0.0.1:{port}"
        for _ in range(4):
            site = await make_site(origins=[ORIGIN])
            await set_creds(self.pool, self.settings, site["site_id"])
            self.sites.append(site)
        # an analytics-consented session of the caller's fingerprint on every site, so the
        # signed call events match it (nothing is stored for a call without consent)
        for site in self.sites:
            body = event(site, meta={"fp": CALL_FP})
            assert (await self._post_sync(body)) == 202

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.aclose()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 15)
        await asyncio.to_thread(stop_stack, self.settings.ray_namespace)

    # -- load
    async def _post_sync(self, body: dict[str, Any]) -> int:
        try:
            r = await self.http.post(f"{self.base}/api/sync", json=body, headers={"Origin": ORIGIN, "User-Agent": UA})
            return r.status_code
        except httpx.HTTPError:
            return 0  # connection error: not acknowledged

    async def _post_call(self, site: dict[str, Any], raw: bytes) -> int:
        try:
            r = await self.http.post(f"{self.base}/api/call-event", content=raw, headers=signed_headers(site, raw))
            if r.status_code == 200:
                assert r.json()["status"] in ("matched", "noop"), r.text
            return r.status_code
        except httpx.HTTPError:
            return 0

    def start_load(self, *, sync_workers: int = 3, max_events: int = 6000, max_orders: int = 400) -> None:
        async def sync_worker(w: int) -> None:
            i = 0
            while not self.stop.is_set() and len(self.sync) < max_events:
                site = self.sites[(w + i) % len(self.sites)]
                sid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{site['public_id']}-{w}-{i // 20}"))
                body = event(site, sid=sid, u=f"{ORIGIN}/p/{w}/{i}")
                self.sync[body["eid"]] = (body, await self._post_sync(body))
                i += 1
                await asyncio.sleep(0.01)

        async def call_worker() -> None:
            i = 0
            while not self.stop.is_set() and len(self.calls) < max_events // 10:
                site = self.sites[i % len(self.sites)]
                eid = str(uuid.uuid4())
                raw = call_body(site, CALL_FP, event_id=eid)
                self.calls[eid] = (site, raw, await self._post_call(site, raw))
                i += 1
                await asyncio.sleep(0.05)

        async def conversion_producer() -> None:
            # confirmed conversions entering the upload queue (issue 4 enqueues them in production)
            i = 0
            while not self.stop.is_set() and len(self.orders) < max_orders:
                site = self.sites[i % len(self.sites)]
                try:
                    rows = await add_rows(self.pool, site["site_id"], [f"Cj0K{uuid.uuid4().hex[:16]}"])
                    self.orders += [r["order_id"] for r in rows]
                except DB_ERRORS:
                    pass  # PostgreSQL restarting: nothing was queued, try again
                i += 1
                await asyncio.sleep(0.1)

        self.stop.clear()
        self.tasks = [asyncio.create_task(sync_worker(w)) for w in range(sync_workers)]
        self.tasks += [asyncio.create_task(call_worker()), asyncio.create_task(conversion_producer())]

    async def pause_load(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        self.tasks = []

    async def wait_events(self, n: int, timeout_s: float = 30.0) -> None:
        """Until ``n`` more sync events were answered with a 2xx."""
        target = self.acked() + n
        deadline = time.monotonic() + timeout_s
        while self.acked() < target:
            assert time.monotonic() < deadline, "the load did not progress"
            await asyncio.sleep(0.05)

    def acked(self) -> int:
        return sum(1 for _, code in self.sync.values() if 200 <= code < 300)

    # -- recovery
    async def recovery(self, since: float, *, uploads: bool = True, timeout_s: float = 60.0) -> float:
        """Seconds from ``since`` until every site takes an event and a call event again and
        (``uploads``) a conversion queued after the fault has been uploaded."""
        marker: list[str] = []
        if uploads:
            while True:
                try:
                    marker = [
                        r["order_id"]
                        for r in await add_rows(
                            self.pool, self.sites[0]["site_id"], ["Cj0Kmarker" + uuid.uuid4().hex[:8]]
                        )
                    ]
                    break
                except DB_ERRORS:
                    assert time.monotonic() - since < timeout_s, "PostgreSQL did not come back"
                    await asyncio.sleep(0.1)
            self.orders += marker
        pending = set(range(len(self.sites)))
        while pending:
            assert time.monotonic() - since < timeout_s, f"sites {pending} did not recover"
            for i in list(pending):
                body = event(self.sites[i])
                code = await self._post_sync(body)
                self.sync[body["eid"]] = (body, code)
                eid = str(uuid.uuid4())
                raw = call_body(self.sites[i], CALL_FP, event_id=eid)
                ccode = await self._post_call(self.sites[i], raw)
                self.calls[eid] = (self.sites[i], raw, ccode)
                if code == 202 and ccode == 200:
                    pending.discard(i)
            if pending:
                await asyncio.sleep(0.05)
        while marker:
            assert time.monotonic() - since < timeout_s, "uploads did not recover"
            try:
                status = await self.pool.fetchval(
                    "SELECT status FROM offline_conversion_queue WHERE order_id = $1", marker[0]
                )
                if status == "COMPLETED":
                    break
                if status == "PROCESSING":
                    # an uploader that died holding it: the rescue job hands it back
                    await self.rescue()
            except DB_ERRORS:
                pass
            await asyncio.sleep(0.05)
        return time.monotonic() - since

    # -- the invariants
    async def verify(self, label: str) -> None:
        """Pause the load, retry what was not acknowledged, then check every invariant."""
        await self.pause_load()
        # every 2xx already in PostgreSQL exactly once (before any retry)
        counts = await self._eid_counts()
        acked = [eid for eid, (_, code) in self.sync.items() if 200 <= code < 300]
        assert all(counts.get(eid) == 1 for eid in acked), f"{label}: an acknowledged event is missing"
        assert all(n == 1 for n in counts.values()), f"{label}: an event was stored twice"
        # the client retries what was refused (503) or cut (connection error): stored once
        for eid, (body, code) in list(self.sync.items()):
            for _ in range(200):
                if 200 <= code < 300:
                    break
                assert code in (0, 503), (label, code)
                await asyncio.sleep(0.05)
                code = await self._post_sync(body)
            self.sync[eid] = (body, code)
            assert 200 <= code < 300, f"{label}: a retried event was never accepted"
        for eid, (site, raw, code) in list(self.calls.items()):
            for _ in range(200):
                if code == 200:
                    break
                assert code in (0, 503), (label, code)
                await asyncio.sleep(0.05)
                code = await self._post_call(site, raw)
            self.calls[eid] = (site, raw, code)
            assert code == 200, f"{label}: a retried call event was never accepted"
        counts = await self._eid_counts()
        assert set(counts) == set(self.sync) and set(counts.values()) == {1}, label
        assert await self.pool.fetchval("SELECT count(*) FROM ingest_idempotency") == len(self.sync)
        assert await self.pool.fetchval("SELECT sum(event_count) FROM site_usage_monthly") == len(self.sync)
        call_rows = await self.pool.fetch(
            "SELECT event_id::text AS eid, count(*) AS n FROM calls WHERE event_id IS NOT NULL GROUP BY 1"
        )
        assert {r["eid"]: r["n"] for r in call_rows} == dict.fromkeys(self.calls, 1), label
        # the queue drains completely; each order id reaches Google exactly once
        deadline = time.monotonic() + 60
        while True:
            left = await self.pool.fetchval("SELECT count(*) FROM offline_conversion_queue WHERE status <> 'COMPLETED'")
            if left == 0:
                break
            assert time.monotonic() < deadline, f"{label}: {left} conversions never completed"
            bad = await self.pool.fetchval(
                "SELECT count(*) FROM offline_conversion_queue WHERE status IN ('FAILED', 'BLOCKED')"
            )
            assert bad == 0, f"{label}: conversions failed"
            await self.rescue()  # rows of a lost uploader
            await asyncio.sleep(0.2)
        state = await self.emu.state()
        order_counts = state["order_id_counts"]
        assert all(order_counts.get(o) == 1 for o in self.orders), f"{label}: an order id was not uploaded once"
        assert not state["duplicate_order_ids"], label
        # attempts in flight when an uploader died are reported as orphans and closed
        await self.rescue()
        await assert_ledger_complete(self.pool)
        print(
            f"[{label}] sync events {len(self.sync)}, call events {len(self.calls)}, "
            f"conversions {len(self.orders)}, rescued claims {self.rescued['rescued']}, "
            f"orphan attempts closed {self.rescued['orphans_closed']}"
        )

    async def rescue(self) -> None:
        """Run the rescue job (the Maintenance actor runs it every minute in production)."""
        summary = await run_job("upload_rescue", self.pool, self.settings)
        for key in self.rescued:
            self.rescued[key] += int(summary[key])

    async def _eid_counts(self) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT metadata->>'eid' AS eid, count(*) AS n FROM events GROUP BY 1")
        # the set-up's caller-session events are part of the load
        return {r["eid"]: int(r["n"]) for r in rows}


@pytest.fixture
async def harness(
    settings: Settings, db_url: str, pool: asyncpg.Pool, emu: Emu, make_site: Any, ray_session: None
) -> AsyncIterator[Harness]:
    s = fast_settings(
        settings,
        emu.base,
        partitions=2,
        uploaders=1,
        upload_retry_base_delay_s=0.3,  # an outage never spends the attempt cap in a test
        upload_breaker_open_s=2.0,
        upload_stale_after_s=3,
        upload_chunk_size=10,
        rate_limit_per_min=1_000_000,
        call_event_rate_limit_per_min=1_000_000,
        call_event_fingerprint_rate_limit_per_min=1_000_000,
        partition_call_timeout_s=10.0,
    )
    h = Harness(s, db_url, pool, emu)
    await h.start(make_site)
    # the set-up events belong to the checked set
    for (eid,) in await pool.fetch("SELECT metadata->>'eid' FROM events"):
        h.sync[eid] = ({}, 202)
    try:
        yield h
    finally:
        await h.close()


def _report(label: str, seconds: float) -> None:
    print(f"recovery after {label}: {seconds:.1f}s")


# --------------------------------------------------------------------------- the faults


@pytest.mark.timeout(120)
async def test_kill_a_partition_then_an_uploader_mid_request(harness: Harness) -> None:
    h = harness
    h.start_load()
    await h.wait_events(100)

    # 1. a SitePartition actor dies (Ray restarts it; its caches refill from PostgreSQL)
    table = ray.get(get_actor("registry", h.settings.ray_namespace).routing.remote())
    victim = get_actor(table["actors"][0], h.settings.ray_namespace)
    t0 = time.monotonic()
    ray.kill(victim, no_restart=False)
    _report("partition kill", await h.recovery(t0, uploads=False))
    await h.wait_events(100)
    await h.verify("partition kill")

    # 2. an Uploader dies while a request to Google is in flight (slow emulator: the kill must
    #    land before the answer, and on a busy machine 400 ms was sometimes too short)
    await h.emu.config(latency_ms=2000.0)
    h.start_load()
    deadline = time.monotonic() + 30
    while not await h.pool.fetchval(
        """SELECT count(*) FROM provider_upload_attempts s WHERE s.phase = 'STARTED' AND NOT EXISTS
           (SELECT 1 FROM provider_upload_attempts f WHERE f.batch_id = s.batch_id AND f.phase = 'FINISHED')"""
    ):
        assert time.monotonic() < deadline, "no upload in flight"
        await asyncio.sleep(0.02)
    uploader = get_actor(table["uploaders"][0], h.settings.ray_namespace)
    t0 = time.monotonic()
    ray.kill(uploader, no_restart=False)
    await h.emu.config(latency_ms=50.0)
    _report("uploader kill mid-request", await h.recovery(t0))
    # the restarted uploader resumed its loop by itself
    deadline = time.monotonic() + 30
    while not (status := await uploader.status.remote())["running"]:
        assert time.monotonic() < deadline, f"the restarted uploader did not resume: {status}"
        await asyncio.sleep(0.1)
    await h.verify("uploader kill")
    # the attempt the kill cut short was found by the rescue job and closed
    assert h.rescued["rescued"] + h.rescued["orphans_closed"] >= 1


RAY_JOIN = (
    "import sys\n"
    "import ray._private.services as services\n"
    # join the head at the loopback address it was given (Ray would swap in the machine's
    # routable address, where a loopback-only head does not listen)
    "services.resolve_ip_for_localhost = lambda host: host\n"
    "from ray.scripts.scripts import main\n"
    "sys.argv = ['ray', *sys.argv[1:]]\n"
    "main()\n"
)


class SecondNode:
    """A Ray worker node on 127.0.0.1 joined to the suite's head, with its own temp dir."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="opsm-n2-", dir="/tmp"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.node_id: str | None = None

    def start(self) -> str:
        gcs = ray.get_runtime_context().gcs_address
        before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        env = dict(os.environ)
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"  # a joining node must not be single-machine
        env.setdefault("RAY_AUTH_MODE", "token")
        resources = {"opsmantik_partition": 64, "opsmantik_uploader": 64}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RAY_JOIN,
                "start",
                f"--address={gcs}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=1",
                f"--resources={json.dumps(resources)}",
                f"--temp-dir={self.tmp}",
                "--disable-usage-stats",
                "--block",
            ],
            env=env,
            stdout=(self.tmp / "ray-start.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            new = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in before]
            if new:
                self.node_id = new[0]
                return new[0]
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.tmp / "ray-start.log").read_text()[-2000:])
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the node: its raylet first (the head learns at once), then every process the
        `ray start` we launched spawned, by pid (never `ray stop`: it would stop every Ray here)."""
        if self.proc is None:
            return
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                if p.name() == "raylet":
                    p.terminate()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs([p for p in procs if p.is_running()], timeout=2)
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)  # its logs and sockets, once it is gone

    def wait_dead(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(n["NodeID"] == self.node_id and n["Alive"] for n in ray.nodes()):
            assert time.monotonic() < deadline, "the stopped node is still alive for the head"
            time.sleep(0.1)


@pytest.mark.timeout(150)
async def test_a_second_node_hosts_actors_and_then_stops(harness: Harness) -> None:
    h = harness
    node = SecondNode()
    try:
        node_id = await asyncio.to_thread(node.start)
        h.start_load()
        await h.wait_events(50)
        # the resize spreads the new generation over both nodes
        result = await asyncio.to_thread(scale_stack, h.settings, h.db_url, 4, 2)
        ns = h.settings.ray_namespace
        places = {
            n: await get_actor(n, ns).node.remote()
            for n in [*result["routing"]["actors"], *result["routing"]["uploaders"]]
        }
        there = [n for n, where in places.items() if where == node_id]
        assert any(n.startswith("partition-") for n in there), places
        assert any(n.startswith("uploader-") for n in there), places
        await h.wait_events(100)
        t0 = time.monotonic()
        await asyncio.to_thread(node.stop)
        await asyncio.to_thread(node.wait_dead)
        _report("second node stop", await h.recovery(t0))
        # the actors of the lost node came back on the head by themselves
        deadline = time.monotonic() + 30
        for name in there:
            while True:
                try:
                    where = await get_actor(name, ns).node.remote()
                    break
                except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
                    assert time.monotonic() < deadline, f"{name} did not come back"
                    await asyncio.sleep(0.1)
            assert where != node_id
        print(f"every actor of the lost node is back on the head {time.monotonic() - t0:.1f}s after the stop")
        moved = get_actor(next(n for n in there if n.startswith("uploader-")), ns)
        deadline = time.monotonic() + 30
        while not (status := await moved.status.remote())["running"]:
            assert time.monotonic() < deadline, f"the restarted uploader did not resume: {status}"
            await asyncio.sleep(0.1)
        print(f"the lost node's uploader runs again {time.monotonic() - t0:.1f}s after the stop")
        await h.verify("second node stop")
    finally:
        await asyncio.to_thread(node.stop)


@pytest.mark.timeout(120)
async def test_postgresql_restart(harness: Harness, pg_server: str) -> None:
    if os.environ.get("OPSMANTIK_TEST_DATABASE_URL"):
        pytest.skip("PostgreSQL is external (OPSMANTIK_TEST_DATABASE_URL): not ours to restart")
    from tests.conftest import pg_ctl

    h = harness
    conn = await asyncpg.connect(pg_server)
    try:
        pgdata = await conn.fetchval("SHOW data_directory")
    finally:
        await conn.close()
    h.start_load()
    await h.wait_events(100)
    t0 = time.monotonic()
    await asyncio.to_thread(pg_ctl, Path(pgdata), "-w", "-m", "fast", "restart")
    print(f"PostgreSQL restarted in {time.monotonic() - t0:.1f}s")
    _report("PostgreSQL restart", await h.recovery(t0))
    await h.wait_events(100)
    await h.verify("PostgreSQL restart")


@pytest.mark.timeout(150)
async def test_scale_partitions_and_uploaders_under_load(harness: Harness) -> None:
    h = harness
    h.start_load()
    await h.wait_events(50)
    for partitions, uploaders in ((4, 4), (1, 2)):
        t0 = time.monotonic()
        result = await asyncio.to_thread(scale_stack, h.settings, h.db_url, partitions, uploaders)
        assert len(result["routing"]["actors"]) == partitions
        assert result["uploaders_started"]
        print(f"resize to {partitions} partitions / {uploaders} uploaders took {result['total_s']:.1f}s")
        _report(f"scale to {partitions}p/{uploaders}u", await h.recovery(t0))
        await h.wait_events(50)
        # the old uploaders are gone and the new ones split the budget
        shares = []
        for n in result["routing"]["uploaders"]:
            status = await get_actor(n, h.settings.ray_namespace).status.remote()
            shares.append(tuple(status["share"] or ()))
        shares.sort()
        assert shares == [(i, uploaders) for i in range(uploaders)], shares
        await h.verify(f"scale {partitions}/{uploaders}")
        h.start_load()
    # a resize never refuses an event: the old owner answers "moved" and the gateway resends
    assert all(code in (200, 202) for _, code in h.sync.values())


@pytest.mark.timeout(120)
async def test_emulator_outage_then_back(harness: Harness) -> None:
    h = harness
    h.start_load()
    await h.wait_events(50)
    await h.emu.config(outage=True)
    t_out = time.monotonic()
    await asyncio.sleep(6.0)  # the outage itself: uploads fail, the breaker opens
    failed = await h.pool.fetchval(
        "SELECT count(*) FROM provider_upload_attempts WHERE phase = 'FINISHED' AND http_status = 503"
    )
    assert failed > 0, "the outage was not seen"
    t0 = time.monotonic()
    await h.emu.config(outage=False)
    print(f"outage lasted {t0 - t_out:.1f}s")
    _report("emulator outage", await h.recovery(t0))
    await h.verify("emulator outage")
