"""Per-(site, destination) circuit breaker: pybreaker's state machine over PostgreSQL state.

``provider_health_state`` is the single source of truth, so every uploader process and every
restart sees the same breaker. pybreaker is synchronous and keeps its state in a
:class:`pybreaker.CircuitBreakerStorage`; :class:`PgBreakerStorage` is such a storage loaded
from (and saved back to) the row inside the transaction that finishes an attempt, with the row
locked ``FOR UPDATE`` so concurrent finishes of one group serialise.

Rules (SPEC §6):
- ``fail_max`` (5) transient failures in a row open the breaker for ``open_s`` (300 s) plus up
  to ``jitter_s`` (60 s); the probe time is stored as ``next_probe_at``;
- when the probe time has come, exactly one uploader takes the probe (``take_probe``: OPEN ->
  HALF_OPEN with ``probe_holder``) and sends one small batch; one success closes the breaker,
  a transient failure opens it again;
- permanent row errors and rate limits never count (they say nothing about Google's health;
  429s pause the token bucket instead); account/config errors open it at once.
- Gating happens before any row is claimed, so rows of an open group wait without spending
  attempts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg
import pybreaker

from opsmantik_stream.enums import CircuitState
from opsmantik_stream.queries import Q

__all__ = ["BreakerConfig", "PgBreakerStorage", "Signal", "TransientFailure", "record_outcome"]

_TO_PYBREAKER = {
    CircuitState.CLOSED: pybreaker.STATE_CLOSED,
    CircuitState.OPEN: pybreaker.STATE_OPEN,
    CircuitState.HALF_OPEN: pybreaker.STATE_HALF_OPEN,
}
_FROM_PYBREAKER = {v: k for k, v in _TO_PYBREAKER.items()}


class Signal(StrEnum):
    """What one finished attempt says about the destination's health."""

    SUCCESS = "success"  # at least one row delivered
    TRANSIENT = "transient"  # no row delivered and some failed transiently (5xx, timeout, ...)
    NEUTRAL = "neutral"  # only permanent row errors / rate limits: does not count
    BLOCK = "block"  # account or configuration error: open now


class TransientFailure(Exception):
    """Raised inside the breaker call to make pybreaker count a failure."""


class BreakerConfig:
    """Knobs; ``rng`` (0..1) scales the jitter, ``clock`` gives aware UTC datetimes."""

    def __init__(
        self,
        *,
        fail_max: int = 5,
        open_s: float = 300.0,
        jitter_s: float = 60.0,
        probe_rows: int = 5,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.fail_max = fail_max
        self.open_s = open_s
        self.jitter_s = jitter_s
        self.probe_rows = probe_rows
        self.rng = rng
        self.clock = clock


class PgBreakerStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker storage holding one ``provider_health_state`` row in memory.

    Load it with :meth:`load` (row locked by the caller's transaction), let pybreaker mutate
    it, then :meth:`save`. Opening computes ``next_probe_at`` from the injected clock with
    jitter; ``opened_at`` as read by pybreaker is ``next_probe_at - open_s`` so pybreaker's own
    reset check agrees with the stored probe time.
    """

    def __init__(self, site_id: Any, destination: str, cfg: BreakerConfig, row: Any | None = None) -> None:
        super().__init__(f"{site_id}:{destination}")
        self.site_id = site_id
        self.destination = destination
        self.cfg = cfg
        self._state = pybreaker.STATE_CLOSED
        self._counter = 0
        self._success = 0
        self._opened: datetime | None = None
        self.next_probe_at: datetime | None = None
        self.probe_holder: str | None = None
        self.last_error: str | None = None
        if row is not None:
            self._state = _TO_PYBREAKER[CircuitState(row["state"])]
            self._counter = int(row["failure_count"])
            self._success = int(row["success_count"])
            self._opened = row["opened_at"]
            self.next_probe_at = row["next_probe_at"]
            self.probe_holder = row["probe_holder"]
            self.last_error = row["last_error"]

    # -- pybreaker storage interface -------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = state
        if state != pybreaker.STATE_HALF_OPEN:
            # the probe (if any) is over once the breaker leaves half-open
            self.probe_holder = None
        if state == pybreaker.STATE_CLOSED:
            self._opened = None
            self.next_probe_at = None

    def increment_counter(self) -> None:
        self._counter += 1

    def reset_counter(self) -> None:
        self._counter = 0

    def increment_success_counter(self) -> None:
        self._success += 1

    def reset_success_counter(self) -> None:
        self._success = 0

    @property
    def counter(self) -> int:
        return self._counter

    @property
    def success_counter(self) -> int:
        return self._success

    @property
    def opened_at(self) -> datetime | None:
        if self.next_probe_at is None:
            return self._opened
        return self.next_probe_at - timedelta(seconds=self.cfg.open_s)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        # pybreaker passes its own datetime.now(); the injected clock decides instead.
        now = self.cfg.clock()
        self._opened = now
        self.next_probe_at = now + timedelta(seconds=self.cfg.open_s + self.cfg.rng() * self.cfg.jitter_s)

    # -- ours ------------------------------------------------------------------------------
    @property
    def circuit_state(self) -> CircuitState:
        return _FROM_PYBREAKER[self._state]

    @classmethod
    async def load(
        cls, conn: asyncpg.Connection, site_id: Any, destination: str, cfg: BreakerConfig
    ) -> PgBreakerStorage:
        """Load (creating if needed) and lock the group's row; call inside a transaction."""
        await conn.execute(Q.uploads.ensure_health, site_id, destination)
        row = await conn.fetchrow(Q.uploads.lock_health, site_id, destination)
        return cls(site_id, destination, cfg, row)

    async def save(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            Q.uploads.save_health,
            self.site_id,
            self.destination,
            self.circuit_state.value,
            self._counter,
            self._success,
            self._opened,
            self.next_probe_at,
            self.probe_holder,
            self.last_error,
        )


def _breaker(storage: PgBreakerStorage) -> pybreaker.CircuitBreaker:
    # A fresh pybreaker per decision: its cached state is built from the storage without a
    # "state change" notification, so nothing is reset by merely loading the row.
    return pybreaker.CircuitBreaker(
        fail_max=storage.cfg.fail_max,
        reset_timeout=storage.cfg.open_s,
        success_threshold=1,
        state_storage=storage,
        throw_new_error_on_trip=False,
        name=storage.name,
    )


def _fail() -> None:
    raise TransientFailure()


def record_outcome(storage: PgBreakerStorage, signal: Signal, *, holder: str, error: str | None = None) -> CircuitState:
    """Apply one attempt's signal to the breaker (in memory); returns the new state.

    An OPEN breaker ignores outcomes of attempts that were already in flight when another
    uploader opened it (only the probe decides); a BLOCK re-opens it in any state.
    """
    cb = _breaker(storage)
    state = storage.circuit_state
    if signal is Signal.BLOCK:
        storage.last_error = error
        cb.open()
        return storage.circuit_state
    if state is CircuitState.OPEN:
        return state
    if signal is Signal.NEUTRAL:
        if state is CircuitState.HALF_OPEN and storage.probe_holder == holder:
            # Google answered, but the probe proved nothing either way: let the next one try.
            storage.probe_holder = None
        return storage.circuit_state
    if signal is Signal.SUCCESS:
        cb.call(lambda: None)
        storage.last_error = None if storage.circuit_state is CircuitState.CLOSED else storage.last_error
        return storage.circuit_state
    storage.last_error = error
    try:
        cb.call(_fail)
    except TransientFailure:
        pass
    return storage.circuit_state
