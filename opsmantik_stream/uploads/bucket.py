"""Token buckets per destination account whose budget holds for the whole uploader pool.

An account's budget (requests/s and conversions/min, from the site's credentials) is split
into integer shares, one per uploader (``Registry.uploader_share(name) -> (index, size)``), so
the shares never add up to more than the budget. Each uploader enforces its share with two
aiolimiter leaky buckets:

- requests: one send per ``(1 + margin) / share`` seconds on a fixed grid (``Pacer``). Sends
  that reach Google within ``margin`` seconds of their slot put at most ``share`` of them in
  any 1 s window, so the pool never exceeds the budget in any 1 s window (sustained rate:
  ``budget / (1 + margin)``). A send that wakes a few milliseconds late keeps its slot, so
  scheduling jitter does not push every later send back, and there are no bursts; one later
  than the margin (an uploader starved of CPU) restarts the grid rather than catching up.
  The grid slot is taken before the attempt's STARTED row is committed (waiting is never an
  attempt), so a slow commit could still make a send late and let the next one catch up; the
  last gate (``SendWindow``, at the moment the request leaves) holds a send until at most
  ``share`` sends fall in any ``1 + margin`` seconds, so the bound holds at the wire.
- conversions: capacity ``c`` (at least one request's worth) and a leak of
  ``(share - c) / (60 + margin)`` per second, so any 60 s window holds at most ``share``.

A 429 with retry info pauses the account for the whole pool in PostgreSQL
(``provider_account_state``, see ``engine.py``), not here: a local pause would not stop the
other uploaders.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

__all__ = ["AccountBucket", "BucketSet", "Pacer", "SendWindow", "split_share"]


class Pacer:
    """One send per ``interval_s`` on a fixed grid.

    A send that wakes a little late (at most ``max_late_s``) keeps its grid slot, so the next
    one may follow sooner and the rate does not drift down (a capacity-1 leaky bucket restarts
    its period from the late send and loses every wake-up delay for good). It never bursts: at
    most one send per slot, and a send later than ``max_late_s`` (after an idle spell, or an
    uploader starved of CPU) restarts the grid at that send instead of catching up, so two sends
    are never closer than ``interval_s - max_late_s``. aiolimiter offers either bursts
    (capacity > 1: up to twice the budget in one window) or the drifting capacity-1 shape, hence
    this small limiter.
    """

    def __init__(
        self, interval_s: float, clock: Callable[[], float] = time.monotonic, *, max_late_s: float | None = None
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s > 0")
        self.interval_s = interval_s
        self.max_late_s = interval_s if max_late_s is None else min(max(0.0, max_late_s), interval_s)
        self._clock = clock
        self._next: float | None = None
        self._lock = asyncio.Lock()

    def _idle(self, now: float) -> bool:
        return self._next is None or now - self._next > self.max_late_s

    def delay(self, now: float | None = None) -> float:
        """Seconds until the next send may leave (0 when it may leave now)."""
        now = self._clock() if now is None else now
        if self._idle(now):
            return 0.0
        assert self._next is not None
        return max(0.0, self._next - now)

    def record(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        if self._idle(now):
            self._next = now + self.interval_s
        else:
            assert self._next is not None
            self._next += self.interval_s

    async def acquire(self) -> None:
        async with self._lock:
            while (wait := self.delay()) > 0:
                await asyncio.sleep(wait)
            self.record()


class SendWindow:
    """At most ``limit`` sends in any ``window_s`` seconds, measured when a send leaves.

    The last gate of an account bucket, taken right before the request goes on the wire (after
    the STARTED commit and the token fetch). It keeps the times of the last ``limit`` sends; a
    send waits until the oldest of them is ``window_s`` old. On the pacer's grid it never waits;
    it only holds back a send that would catch up on one delayed between its slot and the wire.
    aiolimiter's leaky bucket admits ``capacity + rate * T`` in a window ``T`` (more than
    ``limit`` per window for any capacity >= 1), hence this sliding log of ``limit`` times.
    """

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._sent: deque[float] = deque(maxlen=limit)
        self._lock = asyncio.Lock()

    def delay(self, now: float | None = None) -> float:
        """Seconds until one more send may leave (0 when it may leave now)."""
        now = self._clock() if now is None else now
        if len(self._sent) < self.limit:
            return 0.0
        return max(0.0, self._sent[0] + self.window_s - now)

    def record(self, now: float | None = None) -> None:
        self._sent.append(self._clock() if now is None else now)

    async def admit(self) -> None:
        async with self._lock:
            while (wait := self.delay()) > 0:
                await asyncio.sleep(wait)
            self.record()


def split_share(total: float, index: int, size: int) -> float:
    """This uploader's part of ``total``: integer parts that sum to at most ``total``.

    A budget below one per uploader goes whole to uploader 0 (the others get 0 and leave the
    account alone), so the sum still never exceeds the budget. Index -1 (not in the current
    routing table: an old generation draining) gets 0.
    """
    if size <= 0 or index < 0 or index >= size:
        return 0.0
    whole = math.floor(total)
    if whole < size:
        # fewer whole units than uploaders: the first `whole` uploaders get one each, and a
        # budget below 1 goes to uploader 0 alone
        if whole == 0:
            return float(total) if index == 0 else 0.0
        return 1.0 if index < whole else 0.0
    base, extra = divmod(whole, size)
    return float(base + (1 if index < extra else 0))


@dataclass(frozen=True)
class BucketKey:
    destination: str
    account_id: str
    requests_per_s: float
    conversions_per_min: float
    index: int
    size: int


class AccountBucket:
    """One uploader's share of one account's budget."""

    def __init__(self, requests_per_s: float, conversions_per_min: float, *, max_batch: int, margin_s: float) -> None:
        self.requests_per_s = requests_per_s
        self.conversions_per_min = conversions_per_min
        self._turn: object | None = None  # the worker between ``wait_ready`` and its slot
        self._turn_free = asyncio.Event()
        self._turn_free.set()
        if requests_per_s <= 0 or conversions_per_min < 1:
            self._requests: Pacer | None = None
            self._window: SendWindow | None = None
            self._conversions: AsyncLimiter | None = None
            self.max_batch = 0
            return
        # one send per slot; the slot stretched by the margin, and a send may be late by at most
        # the margin (later: the grid restarts), so any 1 s window holds at most the share
        self._requests = Pacer((1.0 + margin_s) / requests_per_s, max_late_s=margin_s)
        # the same bound checked when the request leaves: ``limit`` sends per ``limit`` slots
        # (a share below one per second: one send per slot)
        limit = max(1, math.floor(requests_per_s))
        self._window = SendWindow(limit, limit * (1.0 + margin_s) / requests_per_s)
        capacity = float(min(max_batch, max(1, math.floor(conversions_per_min / 2))))
        leak_per_s = (conversions_per_min - capacity) / (60.0 + margin_s)
        if leak_per_s <= 0:
            # tiny budget: one full bucket per minute (plus margin)
            leak_per_s = capacity / (60.0 + margin_s) / 2
        self._conversions = AsyncLimiter(capacity, capacity / leak_per_s)
        self.max_batch = int(capacity)

    @property
    def usable(self) -> bool:
        return self._requests is not None and self.max_batch >= 1

    async def wait_ready(self) -> object:
        """Wait (without taking anything) until a request could leave now and no other worker
        of this uploader is on its way to that slot; return the turn to give to ``end_turn``.

        The uploader then holds a lease only while it can actually send. A slot lets one
        worker through: when all of an uploader's workers went on together, the ones behind
        held site leases for later slots, and with several uploaders on one account they took
        every lease a site allows while the uploader whose slot had come found none and idled.
        """
        assert self._requests is not None
        while True:
            if self._turn is not None:
                await self._turn_free.wait()
            elif (wait := self._requests.delay()) > 0:
                await asyncio.sleep(min(wait, 0.02))
            else:
                turn = self._turn = object()
                self._turn_free.clear()
                return turn

    def end_turn(self, turn: object) -> None:
        """The worker that had ``turn`` took its slot or gave up: the next may go on."""
        if self._turn is turn:
            self._free_turn()

    def _free_turn(self) -> None:
        self._turn = None
        self._turn_free.set()

    async def acquire(self, conversions: int) -> None:
        """Wait until one request with ``conversions`` rows may go out (never an attempt)."""
        assert self._requests is not None and self._conversions is not None
        await self._conversions.acquire(min(float(conversions), self._conversions.max_rate))
        await self._requests.acquire()
        self._free_turn()  # the slot is taken: the next worker may wait for the next one

    async def at_send(self) -> None:
        """The last gate, right before the request leaves: wait (rarely) until the send keeps
        at most the share in any ``1 + margin`` seconds, whatever delayed it since its slot."""
        assert self._window is not None
        await self._window.admit()


class BucketSet:
    """This uploader's buckets, rebuilt when an account's budget or the pool size changes."""

    def __init__(self, *, margin_s: float, max_batch: int) -> None:
        self.margin_s = margin_s
        self.max_batch = max_batch
        self._buckets: dict[tuple[str, str], tuple[BucketKey, AccountBucket]] = {}

    def get(
        self,
        destination: str,
        account_id: str,
        requests_per_s: float,
        conversions_per_min: float,
        share: tuple[int, int],
    ) -> AccountBucket:
        index, size = share
        key = BucketKey(destination, account_id, requests_per_s, conversions_per_min, index, size)
        held = self._buckets.get((destination, account_id))
        if held is not None and held[0] == key:
            return held[1]
        bucket = AccountBucket(
            split_share(requests_per_s, index, size),
            split_share(conversions_per_min, index, size),
            max_batch=self.max_batch,
            margin_s=self.margin_s,
        )
        self._buckets[(destination, account_id)] = (key, bucket)
        return bucket
