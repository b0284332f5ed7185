"""Plan the end of one upload attempt: a pure step between the request and the database.

:func:`plan_finish` turns the claimed rows and what the destination answered (one
:class:`RowOutcome` per row) into everything the uploader then writes in one transaction:
each row's next state (:class:`RowUpdate`, through the retry policy), the counts for the
ledger, the breaker signal, the error summary, and the account-wide consequences (a pause
Google asked for, a smaller batch size). No I/O: ``now`` and the policy (with its jitter
source) are passed in, so it is tested with tables (``tests/unit/test_uploads_plan.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from opsmantik_stream.destinations.base import RowOutcome
from opsmantik_stream.enums import ErrorCategory, OutcomeKind, QueueStatus
from opsmantik_stream.retry import RetryPolicy
from opsmantik_stream.uploads.breaker import Signal
from opsmantik_stream.uploads.hints import blocked_hint

__all__ = [
    "ClaimedRow",
    "FinishCounts",
    "FinishPlan",
    "GroupFacts",
    "RowUpdate",
    "outcome_signal",
    "plan_finish",
]

_DELIVERED = (OutcomeKind.COMPLETED, OutcomeKind.ALREADY_EXISTS)


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """What the plan needs of a claimed row: its id and the attempt number the claim gave it."""

    id: Any
    attempt: int


@dataclass(frozen=True, slots=True)
class GroupFacts:
    """The group's site, for the hints on BLOCKED rows: its public id, where the rows were
    queued, the site's current destination, another destination it could switch to, and the
    destination's own fixes for its own error codes."""

    public_id: str
    row_destination: str
    site_destination: str
    other_destination: str | None = None
    destination_hint: Callable[[str | None], str | None] | None = None


@dataclass(frozen=True, slots=True)
class RowUpdate:
    """The next state of one claimed row; ``refund`` gives the claim's attempt back."""

    id: Any
    attempt: int
    status: str
    next_retry_at: datetime | None = None
    error_code: str | None = None
    error_category: str | None = None
    last_error: str | None = None
    request_id: str | None = None
    refund: bool = False


@dataclass(slots=True)
class FinishCounts:
    completed: int = 0
    failed: int = 0
    retry: int = 0
    blocked: int = 0

    @classmethod
    def of(cls, statuses: Sequence[str]) -> FinishCounts:
        c = cls()
        for s in statuses:
            if s == QueueStatus.COMPLETED:
                c.completed += 1
            elif s == QueueStatus.FAILED:
                c.failed += 1
            elif s == QueueStatus.BLOCKED:
                c.blocked += 1
            else:  # RETRY, QUEUED (split batch / collateral / not sent)
                c.retry += 1
        return c


@dataclass(frozen=True, slots=True)
class FinishPlan:
    """Everything the uploader writes after an attempt.

    ``pause_s``: pause the destination account for the whole pool this long (a 429 with a
    retry delay). ``max_batch``: lower the account's batch size to this (Google found the
    request too large). ``breaker_error`` is the text kept on the breaker.
    """

    updates: tuple[RowUpdate, ...]
    counts: FinishCounts
    signal: Signal
    error_code: str | None
    error_category: ErrorCategory | None
    breaker_error: str | None
    pause_s: float | None
    max_batch: int | None

    @property
    def refunded(self) -> int:
        return sum(1 for u in self.updates if u.refund)


def outcome_signal(outcomes: Sequence[RowOutcome]) -> Signal:
    """What an attempt says about the destination (see ``breaker.py``).

    An account/config problem wins (the account must stop); otherwise any delivered row is a
    success; otherwise a transient failure counts; permanent row errors, rate limits, split
    batches, collateral re-sends and rows never sent are neutral.
    """
    if any(o.kind is OutcomeKind.BLOCKED for o in outcomes):
        return Signal.BLOCK
    if any(o.kind in _DELIVERED for o in outcomes):
        return Signal.SUCCESS
    if any(
        o.kind is OutcomeKind.RETRY and o.error_category is ErrorCategory.TRANSIENT and o.error_code != "COLLATERAL"
        for o in outcomes
    ):
        return Signal.TRANSIENT
    return Signal.NEUTRAL


def plan_finish(
    rows: Sequence[ClaimedRow],
    outcomes: Sequence[RowOutcome],
    *,
    policy: RetryPolicy,
    now: datetime,
    facts: GroupFacts,
    request_error: tuple[str | None, ErrorCategory | None] = (None, None),
) -> FinishPlan:
    """Plan the finish of one attempt (``outcomes[i]`` answers ``rows[i]``).

    ``request_error`` is the whole-request failure the client reported, if any; it wins over
    the first row error in the ledger summary.
    """
    if len(rows) != len(outcomes):
        raise ValueError("one outcome per claimed row")
    # A single row cannot be split further: Google's "too many" for one row is treated as a
    # transient failure (the attempt counts), so it can never loop without end.
    if len(rows) == 1 and outcomes[0].kind is OutcomeKind.SPLIT_BATCH:
        outcomes = [replace(outcomes[0], kind=OutcomeKind.RETRY, error_category=ErrorCategory.TRANSIENT)]
    updates: list[RowUpdate] = []
    split = False
    for row, o in zip(rows, outcomes, strict=True):
        d = policy.decide(o, row.attempt, now)
        split = split or d.split_batch
        done = d.status is QueueStatus.COMPLETED
        if done:
            last_error = None
        elif d.status is QueueStatus.BLOCKED:
            last_error = blocked_hint(
                d.error_code,
                row_destination=facts.row_destination,
                site_destination=facts.site_destination,
                public_id=facts.public_id,
                other_destination=facts.other_destination,
                destination_hint=facts.destination_hint(d.error_code) if facts.destination_hint else None,
                # the destination's own words only when its (configured) endpoint answered
                provider_message=o.message if o.http_status else None,
            )
        else:
            last_error = o.message or d.error_code
        updates.append(
            RowUpdate(
                id=row.id,
                attempt=row.attempt,
                status=d.status.value,
                next_retry_at=d.next_retry_at,
                error_code=None if done else d.error_code,
                error_category=None if done or d.error_category is None else d.error_category.value,
                last_error=last_error,
                request_id=o.request_id,
                refund=d.refund_attempt,
            )
        )
    delays = [
        o.retry_delay_s
        for o in outcomes
        if o.kind is OutcomeKind.RETRY and o.error_category is ErrorCategory.RATE_LIMIT and o.retry_delay_s
    ]
    first_err = next((o for o in outcomes if o.kind not in _DELIVERED), None)
    code = request_error[0] or (first_err.error_code if first_err else None)
    category = request_error[1] or (first_err.error_category if first_err else None)
    breaker_error = code
    if first_err is not None and code and first_err.message:
        breaker_error = f"{code}: {first_err.message}"
    return FinishPlan(
        updates=tuple(updates),
        counts=FinishCounts.of([u.status for u in updates]),
        signal=outcome_signal(outcomes),
        error_code=code,
        error_category=category,
        breaker_error=breaker_error,
        pause_s=max(d for d in delays if d is not None) if delays else None,
        max_batch=max(1, len(rows) // 2) if split else None,
    )
