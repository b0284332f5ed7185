"""Pure parts of the uploader: breaker state machine (pybreaker over our storage), budget
shares, bucket shapes, and how an attempt's outcomes become a breaker signal."""

from __future__ import annotations

import asyncio
import itertools
import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from opsmantik_stream.destinations.base import ErrorCategory, OutcomeKind, RowOutcome
from opsmantik_stream.enums import CircuitState
from opsmantik_stream.uploads import (
    AccountBucket,
    BreakerConfig,
    PgBreakerStorage,
    Signal,
    record_outcome,
    split_share,
)
from opsmantik_stream.uploads.bucket import Pacer, SendWindow
from opsmantik_stream.uploads.engine import outcome_signal

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def storage(**row: object) -> PgBreakerStorage:
    cfg = BreakerConfig(fail_max=5, open_s=300, jitter_s=60, rng=lambda: 0.5, clock=lambda: T0)
    base = {
        "state": "CLOSED",
        "failure_count": 0,
        "success_count": 0,
        "opened_at": None,
        "next_probe_at": None,
        "probe_holder": None,
        "last_error": None,
    }
    base.update(row)
    return PgBreakerStorage(uuid.uuid4(), "google_ads", cfg, base)


def test_five_transient_failures_open_with_jitter() -> None:
    s = storage()
    for i in range(4):
        assert record_outcome(s, Signal.TRANSIENT, holder="u") is CircuitState.CLOSED
        assert s.counter == i + 1
    assert record_outcome(s, Signal.TRANSIENT, holder="u", error="UNAVAILABLE") is CircuitState.OPEN
    assert s.next_probe_at == T0 + timedelta(seconds=330)  # 300 s + 0.5 * 60 s jitter
    assert s.last_error == "UNAVAILABLE"


def test_success_resets_count_and_permanent_errors_never_count() -> None:
    s = storage(failure_count=4)
    for _ in range(10):
        assert record_outcome(s, Signal.NEUTRAL, holder="u") is CircuitState.CLOSED
    assert s.counter == 4
    record_outcome(s, Signal.SUCCESS, holder="u")
    assert s.counter == 0


def test_half_open_probe_success_closes_and_failure_reopens() -> None:
    s = storage(state="HALF_OPEN", failure_count=5, probe_holder="u")
    assert record_outcome(s, Signal.SUCCESS, holder="u") is CircuitState.CLOSED
    assert s.counter == 0 and s.probe_holder is None and s.next_probe_at is None
    s = storage(state="HALF_OPEN", failure_count=5, probe_holder="u")
    assert record_outcome(s, Signal.TRANSIENT, holder="u") is CircuitState.OPEN
    assert s.probe_holder is None and s.next_probe_at == T0 + timedelta(seconds=330)
    s = storage(state="HALF_OPEN", failure_count=5, probe_holder="u")
    assert record_outcome(s, Signal.NEUTRAL, holder="u") is CircuitState.HALF_OPEN
    assert s.probe_holder is None  # the next uploader may probe


def test_open_ignores_in_flight_outcomes_but_block_reopens() -> None:
    probe = T0 + timedelta(seconds=100)
    s = storage(state="OPEN", failure_count=5, next_probe_at=probe)
    assert record_outcome(s, Signal.TRANSIENT, holder="u") is CircuitState.OPEN
    assert record_outcome(s, Signal.SUCCESS, holder="u") is CircuitState.OPEN
    assert s.next_probe_at == probe  # not re-armed (the reference's defect)
    s = storage()
    assert record_outcome(s, Signal.BLOCK, holder="u", error="MISSING_CREDENTIALS") is CircuitState.OPEN
    assert s.last_error == "MISSING_CREDENTIALS"


def row(kind: OutcomeKind, code: str | None = None, cat: ErrorCategory | None = None) -> RowOutcome:
    return RowOutcome("q", 0, kind, code, cat)


def test_outcome_signal() -> None:
    K, C = OutcomeKind, ErrorCategory
    assert outcome_signal([row(K.COMPLETED), row(K.RETRY, "UNAVAILABLE", C.TRANSIENT)]) is Signal.SUCCESS
    assert outcome_signal([row(K.ALREADY_EXISTS)]) is Signal.SUCCESS
    assert outcome_signal([row(K.RETRY, "UNAVAILABLE", C.TRANSIENT)]) is Signal.TRANSIENT
    assert outcome_signal([row(K.FAILED, "UNPARSEABLE_GCLID", C.VALIDATION)]) is Signal.NEUTRAL
    assert outcome_signal([row(K.RETRY, "RESOURCE_EXHAUSTED", C.RATE_LIMIT)]) is Signal.NEUTRAL
    assert outcome_signal([row(K.RETRY, "COLLATERAL", C.TRANSIENT)]) is Signal.NEUTRAL
    assert outcome_signal([row(K.RETRY_AFTER_6H, "TOO_RECENT_EVENT", C.TRANSIENT)]) is Signal.NEUTRAL
    assert outcome_signal([row(K.COMPLETED), row(K.BLOCKED, "invalid_grant", C.AUTH)]) is Signal.BLOCK


@pytest.mark.parametrize("total", [0.5, 1, 3, 7, 10, 12.7, 100, 12000])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_shares_never_sum_above_the_budget(total: float, size: int) -> None:
    shares = [split_share(total, i, size) for i in range(size)]
    assert sum(shares) <= total
    assert all(s == int(s) for s in shares) or size == 1 or total < 1
    assert sum(shares) >= min(total, math.floor(total)) - 1e-9 if total >= 1 else shares[0] == total
    assert split_share(total, -1, size) == 0  # an old generation draining gets nothing


def test_bucket_shapes_hold_the_window_limits() -> None:
    # requests: one per (1 + margin) / share seconds -> at most `share` per 1 s at Google
    b = AccountBucket(5, 600, max_batch=200, margin_s=0.05)
    assert b._requests is not None and b._requests.interval_s == pytest.approx(1.05 / 5)
    half = AccountBucket(0.5, 600, max_batch=200, margin_s=0.05)
    assert half._requests is not None and half._requests.interval_s == pytest.approx(2.1)
    # conversions: capacity + leak * (60 + margin) <= share, and a batch fits the capacity
    assert b._conversions is not None
    cap, leak = b._conversions.max_rate, b._conversions.max_rate / b._conversions.time_period
    assert cap + leak * 60.05 <= 600 + 1e-6 and b.max_batch == 200
    tiny = AccountBucket(5, 10, max_batch=200, margin_s=0.05)
    assert tiny.max_batch == 5  # claims shrink to what the conversion budget allows
    assert not AccountBucket(0, 600, max_batch=200, margin_s=0.05).usable


def test_pacer_keeps_its_grid_never_bursts_and_restarts_after_idle() -> None:
    now = [0.0]
    p = Pacer(1.05 / 5, clock=lambda: now[0])
    sends: list[float] = []
    # a sender that always wakes 7 ms late still gets the full rate: lateness does not add up
    while now[0] < 60:
        wait = p.delay()
        if wait > 0:
            now[0] += wait + 0.007
            continue
        p.record()
        sends.append(now[0])
    assert len(sends) / 60 >= 0.99 * 5 / 1.05
    # sends stay on the grid, one per slot: at most 5 in any 1 s window
    j = 0
    for i, t in enumerate(sends):
        while sends[j] <= t - 1.0:
            j += 1
        assert i - j + 1 <= 5
    # after an idle spell the grid restarts: no catch-up burst
    now[0] += 10
    assert p.delay() == 0
    p.record()
    assert p.delay() == pytest.approx(1.05 / 5)


def test_pacer_never_catches_up_after_a_stall_longer_than_its_margin() -> None:
    # an uploader starved of CPU for a moment must not send its missed slots in a burst: the
    # share (3 per s, margin 50 ms) holds in every 1 s window, stalls or not
    now = [0.0]
    p = Pacer(1.05 / 3, clock=lambda: now[0], max_late_s=0.05)
    sends: list[float] = []
    stalls = iter([0.0, 0.3, 0.0, 0.04, 0.33, 0.0, 0.2, 0.0, 0.06, 0.5] * 40)
    while now[0] < 60:
        wait = p.delay()
        if wait > 0:
            now[0] += wait + next(stalls, 0.0)
            continue
        p.record()
        sends.append(now[0])
    j = 0
    for i, t in enumerate(sends):
        while sends[j] <= t - 1.0:
            j += 1
        assert i - j + 1 <= 3, sends[j : i + 1]
    assert all(b - a >= 1.05 / 3 - 0.05 - 1e-9 for a, b in itertools.pairwise(sends))
    # a few milliseconds late keeps the slot (the rate does not drift down)
    p2 = Pacer(1.05 / 3, clock=lambda: now[0], max_late_s=0.05)
    start, count = now[0], 0
    while now[0] < start + 60:
        wait = p2.delay()
        if wait > 0:
            now[0] += wait + 0.007
            continue
        p2.record()
        count += 1
    assert count / 60 >= 0.99 * 3 / 1.05


def _most_in_one_second(times: list[float]) -> int:
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    return most


def test_send_window_keeps_the_share_at_the_wire_whatever_delays_a_send_after_its_slot() -> None:
    # Slots come from the pacer's grid; between a slot and the wire there is a commit (and,
    # in production, anything the machine's load adds). A send delayed past the margin lets
    # the next one catch up: 4 sends in one second for a share of 3. The window, taken at the
    # wire, holds the catching-up send back.
    share, margin = 3, 0.05
    delays = [0.0, 0.2, 0.0, 0.01, 0.3, 0.0, 0.12, 0.0, 0.0, 0.4] * 30

    def run(gate: bool) -> list[float]:
        now = [0.0]
        pacer = Pacer((1 + margin) / share, clock=lambda: now[0], max_late_s=margin)
        window = SendWindow(share, 1 + margin, clock=lambda: now[0])
        wire: list[float] = []
        for delay in delays:
            now[0] += pacer.delay()
            pacer.record()
            now[0] += delay  # the commit between the slot and the send
            if gate:
                now[0] += window.delay()
                window.record()
            wire.append(now[0])
        return wire

    assert _most_in_one_second(run(gate=False)) > share  # what the window exists for
    held = run(gate=True)
    assert _most_in_one_second(held) <= share
    # a window of 1 + margin: even sends that reach Google up to the margin later stay inside
    assert all(b - a >= 1 + margin - 1e-9 for a, b in zip(held, held[share:], strict=False))
    # on the grid (no delay) the window never waits, so the rate is the pacer's
    now = [0.0]
    window = SendWindow(share, 1 + margin, clock=lambda: now[0])
    for _ in range(30):
        assert window.delay() < 1e-9
        window.record()
        now[0] += (1 + margin) / share


def test_send_window_admits_and_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError):
        SendWindow(0, 1.0)
    with pytest.raises(ValueError):
        SendWindow(1, 0.0)


async def test_a_ready_slot_lets_one_worker_on_at_a_time() -> None:
    # Workers of one uploader go on to take a lease only for a slot they can use: while one is
    # on its way to the ready slot the others wait, and they go on when it takes the slot (for
    # the next one) or gives up (for this one).
    bucket = AccountBucket(20, 6000, max_batch=200, margin_s=0.05)
    first = await bucket.wait_ready()
    second = asyncio.ensure_future(bucket.wait_ready())
    await asyncio.sleep(0.05)
    assert not second.done()  # the slot is ready, but the first worker is on its way to it
    bucket.end_turn(first)  # it gave up (no lease): the slot is the next worker's
    turn = await asyncio.wait_for(second, 1.0)
    third = asyncio.ensure_future(bucket.wait_ready())
    await asyncio.sleep(0.01)
    assert not third.done()
    await bucket.acquire(1)  # the second worker took the slot
    bucket.end_turn(turn)  # its attempt ended later: no effect on the third's turn
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(third, 1.0)
    # the third waited for the next slot of the grid, one per (1 + margin) / 20 s
    assert loop.time() - t0 >= 1.05 / 20 - 0.03
