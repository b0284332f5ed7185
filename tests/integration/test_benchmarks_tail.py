"""The tail diagnosis (benchmarks/tail.py): stall windows, the flush probe, and the open-loop
generator's per-request series it reads. No speed is asserted here."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.openloop import run_open_loop, window_p99s
from benchmarks.payloads import SiteRef
from benchmarks.tail import FlushProbe, stall_windows

pytestmark = pytest.mark.integration


def test_stall_windows_hold_the_requests_over_p99_and_the_slow_flushes_before_them() -> None:
    # 1,000 requests of 5 ms over 10 s, except 5 (under 1 %) of 90 ms sent at 4.00-4.04 s
    series = [(1000.0 + k * 0.01, 5.0) for k in range(1000)]
    for k in range(400, 405):
        series[k] = (series[k][0], 90.0)
    flushes = [
        (1003.8, 40.0),  # slow, 200 ms before the window: explains it
        (1004.05, 2.0),  # fast: never counted
        (1002.0, 60.0),  # slow but 2 s earlier: not this window's
    ]
    p99, windows = stall_windows(series, flushes)
    assert p99 == 5.0
    assert len(windows) == 1
    [w] = windows
    assert w["start"] == pytest.approx(1004.0)
    assert w["over_p99"] == 5 and w["worst_ms"] == 90.0
    assert w["slow_flushes_ms"] == [40.0]
    # no stall at all: no window; no requests: p99 0 and no window
    assert stall_windows([(1000.0 + k * 0.01, 5.0) for k in range(1000)], flushes)[1] == []
    assert stall_windows([], flushes) == (0.0, [])


def test_the_flush_probe_times_real_flushes(tmp_path: Path) -> None:
    before = time.time()
    with FlushProbe(tmp_path / "probe.dat", 0.01) as probe:
        # a flush can take tens of ms on a busy disk: wait for three, up to 30 s
        deadline = time.monotonic() + 30
        while len(probe.flushes) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(probe.flushes) >= 3
    assert all(before <= t <= time.time() and ms >= 0 for t, ms in probe.flushes)
    assert (tmp_path / "probe.dat").stat().st_size >= 8192


@pytest.fixture
def accepting_server() -> Iterator[int]:
    """A minimal HTTP/1.1 keep-alive server on 127.0.0.1 that answers 202 to every request."""
    yield from _server(0.0)


@pytest.fixture
def slow_server() -> Iterator[int]:
    """The same server, answering each request 0.3 s after it came."""
    yield from _server(0.3)


def _server(delay_s: float) -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if delay_s:
                    await asyncio.sleep(delay_s)
                writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = asyncio.run_coroutine_threadsafe(asyncio.start_server(handle, "127.0.0.1", 0), loop).result(10)
    yield int(server.sockets[0].getsockname()[1])

    async def close() -> None:
        server.close()
        await server.wait_closed()

    asyncio.run_coroutine_threadsafe(close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_the_open_loop_series_has_every_answered_request_in_unix_time(accepting_server: int) -> None:
    sites = [SiteRef(public_id="pub-1", origin="https://a.example.com")]
    before = time.time()
    res = run_open_loop("127.0.0.1", accepting_server, sites, rate=100, seconds=0.5, run="t", series=True)
    assert res.statuses.get("202") == res.completed == 50
    assert res.series is not None and len(res.series) == res.completed
    assert [t for t, _ in res.series] == sorted(t for t, _ in res.series)
    assert all(before <= t <= time.time() and ms >= 0 for t, ms in res.series)
    assert "series" not in res.to_dict()
    # one (sub-second) window, whose p99 is the whole point's
    assert res.window_p99_ms is not None and res.to_dict()["window_p99_ms"] == res.window_p99_ms
    plain = run_open_loop("127.0.0.1", accepting_server, sites, rate=100, seconds=0.2, run="u")
    assert plain.series is None and plain.window_p99_ms is None


def test_a_server_that_holds_every_connection_is_not_the_generators_lateness(slow_server: int) -> None:
    # 20 requests in 0.5 s over 2 connections that each take 0.3 s per answer: most requests
    # wait for a free connection (send lag), while the generator came to each on time
    sites = [SiteRef(public_id="pub-1", origin="https://a.example.com")]
    res = run_open_loop("127.0.0.1", slow_server, sites, rate=40, seconds=0.5, run="s", max_conns=2, drain_s=10)
    assert res.statuses.get("202") == res.completed == 20
    assert res.send_lag_p99_ms > 1000
    assert res.schedule_lag_p99_ms < 50
    assert res.p99_ms >= res.send_lag_p99_ms  # the wait is in the latency too
    assert res.to_dict()["schedule_lag_p99_ms"] == res.schedule_lag_p99_ms


def test_window_p99s_give_each_10_s_window_its_own_p99() -> None:
    # 35 s at 100 requests/s of 5 ms; the second window holds a 2 s stall of 300 ms answers
    series = [(1000.0 + k * 0.01, 300.0 if 1200 <= k < 1400 else 5.0) for k in range(3500)]
    assert window_p99s(series) == [5.0, 300.0, 5.0]  # the last 5 s: under half a window, left out
    assert window_p99s(series, width_s=20.0) == [300.0, 5.0]  # a 15 s tail: kept
    assert window_p99s([]) == []
