"""Pure retry policy for offline conversion queue rows (SPEC §6 "Retry policy").

``RetryPolicy.decide(outcome, attempt, now)`` turns one row's destination outcome into the
row's next queue state. It does no I/O: the clock (``now``) and the jitter source (``rng``) are
injected, so every decision is reproducible in tests.

Rules:
- completed / already-exists for our own order id -> COMPLETED;
- bad row -> FAILED; account/config error -> BLOCKED (the uploader also opens the breaker);
- transient -> RETRY after ``min(300 * 2**(attempt-1), 86400)`` s plus jitter (capped);
- rate limited -> RETRY after at least the delay Google gave (plus jitter);
- TOO_RECENT_* -> RETRY after 6 h;
- TOO_MANY_CONVERSIONS_IN_REQUEST -> QUEUED at once with ``split_batch`` set;
- Data Manager collateral rows (rejected only because another event was bad) -> QUEUED at once;
- not sent at all (the account is paused pool-wide) -> RETRY when the pause ends;
- a retry decision at or beyond the attempt cap (7) -> FAILED ``MAX_ATTEMPTS``.

A split, collateral or unsent row gives its attempt back (``refund_attempt``): the row did
nothing wrong and Google did not judge it, so it must not creep towards the cap.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from opsmantik_stream.enums import ErrorCategory, OutcomeKind, QueueStatus

__all__ = ["MAX_ATTEMPTS_CODE", "OutcomeLike", "RetryDecision", "RetryPolicy"]

MAX_ATTEMPTS_CODE = "MAX_ATTEMPTS"


class OutcomeLike(Protocol):
    """What the policy reads: a ``RowOutcome`` (or anything shaped like one)."""

    @property
    def kind(self) -> OutcomeKind: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def error_category(self) -> ErrorCategory | None: ...
    @property
    def retry_delay_s(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """The row's next state. ``next_retry_at`` is set for RETRY and QUEUED; ``delay_s`` is
    the delay it was computed from. ``split_batch`` asks the uploader to resend smaller;
    ``refund_attempt`` gives the claim's attempt back."""

    status: QueueStatus
    next_retry_at: datetime | None = None
    error_code: str | None = None
    error_category: ErrorCategory | None = None
    delay_s: float | None = None
    split_batch: bool = False
    refund_attempt: bool = False


class RetryPolicy:
    """Decides what happens to a row after an attempt. Pure apart from ``rng``.

    ``attempt`` is the 1-based number of the attempt that just finished (the claim bumps it).
    ``rng`` returns a float in [0, 1) and scales the jitter (``random.random`` by default).
    """

    def __init__(
        self,
        *,
        base_delay_s: float = 300.0,
        max_delay_s: float = 86400.0,
        max_attempts: int = 7,
        jitter_max_s: float = 60.0,
        too_recent_delay_s: float = 6 * 3600.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_attempts = max_attempts
        self.jitter_max_s = jitter_max_s
        self.too_recent_delay_s = too_recent_delay_s
        self._rng = rng

    def backoff_s(self, attempt: int) -> float:
        """Transient delay without jitter: ``min(base * 2**(attempt-1), max)``."""
        exp = max(0, attempt - 1)
        # Cap the exponent so huge attempt numbers cannot overflow.
        return float(min(self.base_delay_s * (2 ** min(exp, 32)), self.max_delay_s))

    def _jitter(self) -> float:
        return self._rng() * self.jitter_max_s

    def transient_delay_s(self, attempt: int) -> float:
        """Backoff plus jitter, never above ``max_delay_s``."""
        return min(self.backoff_s(attempt) + self._jitter(), self.max_delay_s)

    def decide(self, outcome: OutcomeLike, attempt: int, now: datetime) -> RetryDecision:
        """Next queue state for one row after attempt number ``attempt`` at ``now``."""
        kind = outcome.kind
        code = outcome.error_code
        category = outcome.error_category

        if kind in (OutcomeKind.COMPLETED, OutcomeKind.ALREADY_EXISTS):
            return RetryDecision(QueueStatus.COMPLETED)
        if kind is OutcomeKind.FAILED:
            return RetryDecision(QueueStatus.FAILED, None, code or "FAILED", category or ErrorCategory.VALIDATION)
        if kind is OutcomeKind.BLOCKED:
            return RetryDecision(QueueStatus.BLOCKED, None, code or "BLOCKED", category or ErrorCategory.CONFIG)

        # Attempts given back: these rows were not judged by Google, so the cap does not apply.
        if kind is OutcomeKind.SPLIT_BATCH:
            return RetryDecision(
                QueueStatus.QUEUED,
                now,
                code,
                category or ErrorCategory.CONFIG,
                0.0,
                split_batch=True,
                refund_attempt=True,
            )
        if kind is OutcomeKind.DEFERRED:
            # at least the pause Google asked for; jitter spreads the restart
            delay = max(0.0, outcome.retry_delay_s or 0.0) + self._jitter()
            d = self._retry(now, delay, code, category or ErrorCategory.RATE_LIMIT)
            return RetryDecision(
                d.status, d.next_retry_at, d.error_code, d.error_category, d.delay_s, refund_attempt=True
            )
        if kind is OutcomeKind.RETRY and code == "COLLATERAL":
            # Not this row's fault (Data Manager rejected the request for another event).
            return RetryDecision(
                QueueStatus.QUEUED, now, code, category or ErrorCategory.TRANSIENT, 0.0, refund_attempt=True
            )

        # Everything below would send the row again: enforce the attempt cap first.
        if attempt >= self.max_attempts:
            return RetryDecision(QueueStatus.FAILED, None, MAX_ATTEMPTS_CODE, category or ErrorCategory.TRANSIENT)

        if kind is OutcomeKind.RETRY_AFTER_6H:
            delay = max(self.too_recent_delay_s, outcome.retry_delay_s or 0.0) + self._jitter()
            return self._retry(now, delay, code, category or ErrorCategory.TRANSIENT)
        # OutcomeKind.RETRY
        if category is ErrorCategory.RATE_LIMIT:
            given = outcome.retry_delay_s
            if given is not None and given > 0:
                # At least what Google asked for; jitter only spreads the herd later.
                delay = given + self._jitter()
            else:
                delay = self.transient_delay_s(attempt)
            return self._retry(now, delay, code, category)
        delay = self.transient_delay_s(attempt)
        if outcome.retry_delay_s is not None and outcome.retry_delay_s > delay:
            delay = outcome.retry_delay_s
        return self._retry(now, delay, code, category or ErrorCategory.TRANSIENT)

    @staticmethod
    def _retry(now: datetime, delay: float, code: str | None, category: ErrorCategory) -> RetryDecision:
        return RetryDecision(QueueStatus.RETRY, now + timedelta(seconds=delay), code, category, delay)
