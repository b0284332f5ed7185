"""RetryPolicy table tests with a fixed clock and a fixed jitter source (SPEC §6)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opsmantik_stream.destinations.base import ErrorCategory, OutcomeKind, RowOutcome
from opsmantik_stream.enums import QueueStatus
from opsmantik_stream.retry import MAX_ATTEMPTS_CODE, RetryPolicy

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 2, 12, 0, 0, tzinfo=UTC)
K = OutcomeKind
C = ErrorCategory
S = QueueStatus


def row(
    kind: OutcomeKind,
    code: str | None = None,
    category: ErrorCategory | None = None,
    delay: float | None = None,
) -> RowOutcome:
    return RowOutcome("q1", 0, kind, code, category, None, delay)


def policy(jitter: float = 0.5, **kw: object) -> RetryPolicy:
    return RetryPolicy(rng=lambda: jitter, **kw)  # type: ignore[arg-type]


# (outcome, attempt) -> (status, delay seconds or None, error code, category, split)
TABLE = [
    (row(K.COMPLETED), 1, S.COMPLETED, None, None, None, False),
    (row(K.ALREADY_EXISTS, "ORDER_ID_ALREADY_IN_USE"), 3, S.COMPLETED, None, None, None, False),
    (row(K.FAILED, "EXPIRED_EVENT", C.VALIDATION), 1, S.FAILED, None, "EXPIRED_EVENT", C.VALIDATION, False),
    (row(K.BLOCKED, "invalid_grant", C.AUTH), 1, S.BLOCKED, None, "invalid_grant", C.AUTH, False),
    (
        row(K.BLOCKED, "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE", C.CONFIG),
        2,
        S.BLOCKED,
        None,
        "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE",
        C.CONFIG,
        False,
    ),
    # transient: min(300 * 2^(attempt-1), 86400) + jitter (0.5 * 60 = 30 s)
    (row(K.RETRY, "INTERNAL", C.TRANSIENT), 1, S.RETRY, 330.0, "INTERNAL", C.TRANSIENT, False),
    (row(K.RETRY, "INTERNAL", C.TRANSIENT), 2, S.RETRY, 630.0, "INTERNAL", C.TRANSIENT, False),
    (row(K.RETRY, "TIMEOUT", C.TRANSIENT), 3, S.RETRY, 1230.0, "TIMEOUT", C.TRANSIENT, False),
    (row(K.RETRY, "TIMEOUT", C.TRANSIENT), 6, S.RETRY, 9630.0, "TIMEOUT", C.TRANSIENT, False),
    # rate limited: at least Google's delay (+ jitter)
    (
        row(K.RETRY, "RESOURCE_TEMPORARILY_EXHAUSTED", C.RATE_LIMIT, 40.0),
        1,
        S.RETRY,
        70.0,
        "RESOURCE_TEMPORARILY_EXHAUSTED",
        C.RATE_LIMIT,
        False,
    ),
    (
        row(K.RETRY, "RESOURCE_EXHAUSTED", C.RATE_LIMIT, 40591.0),
        2,
        S.RETRY,
        40621.0,
        "RESOURCE_EXHAUSTED",
        C.RATE_LIMIT,
        False,
    ),
    (row(K.RETRY, "HTTP_429", C.RATE_LIMIT, None), 2, S.RETRY, 630.0, "HTTP_429", C.RATE_LIMIT, False),
    # TOO_RECENT_*: 6 h
    (
        row(K.RETRY_AFTER_6H, "TOO_RECENT_EVENT", C.TRANSIENT, 21600.0),
        1,
        S.RETRY,
        21630.0,
        "TOO_RECENT_EVENT",
        C.TRANSIENT,
        False,
    ),
    # split batch and collateral rows go back to QUEUED at once
    (
        row(K.SPLIT_BATCH, "TOO_MANY_CONVERSIONS_IN_REQUEST", C.CONFIG),
        1,
        S.QUEUED,
        0.0,
        "TOO_MANY_CONVERSIONS_IN_REQUEST",
        C.CONFIG,
        True,
    ),
    (row(K.RETRY, "COLLATERAL", C.TRANSIENT, 0.0), 1, S.QUEUED, 0.0, "COLLATERAL", C.TRANSIENT, False),
    # attempt cap
    (row(K.RETRY, "INTERNAL", C.TRANSIENT), 7, S.FAILED, None, MAX_ATTEMPTS_CODE, C.TRANSIENT, False),
    (row(K.RETRY, "INTERNAL", C.TRANSIENT), 9, S.FAILED, None, MAX_ATTEMPTS_CODE, C.TRANSIENT, False),
    (
        row(K.RETRY, "RESOURCE_EXHAUSTED", C.RATE_LIMIT, 10.0),
        7,
        S.FAILED,
        None,
        MAX_ATTEMPTS_CODE,
        C.RATE_LIMIT,
        False,
    ),
    (
        row(K.RETRY_AFTER_6H, "TOO_RECENT_EVENT", C.TRANSIENT),
        7,
        S.FAILED,
        None,
        MAX_ATTEMPTS_CODE,
        C.TRANSIENT,
        False,
    ),
    (row(K.RETRY, "INTERNAL", C.TRANSIENT), 6, S.RETRY, 9630.0, "INTERNAL", C.TRANSIENT, False),
    # terminal outcomes at the cap keep their own meaning
    (row(K.COMPLETED), 7, S.COMPLETED, None, None, None, False),
    (
        row(K.FAILED, "UNPARSEABLE_GCLID", C.VALIDATION),
        7,
        S.FAILED,
        None,
        "UNPARSEABLE_GCLID",
        C.VALIDATION,
        False,
    ),
    (
        row(K.BLOCKED, "USER_PERMISSION_DENIED", C.AUTH),
        7,
        S.BLOCKED,
        None,
        "USER_PERMISSION_DENIED",
        C.AUTH,
        False,
    ),
]


@pytest.mark.parametrize(("outcome", "attempt", "status", "delay", "code", "category", "split"), TABLE)
def test_decision_table(
    outcome: RowOutcome,
    attempt: int,
    status: QueueStatus,
    delay: float | None,
    code: str | None,
    category: ErrorCategory | None,
    split: bool,
) -> None:
    d = policy().decide(outcome, attempt, NOW)
    assert d.status is status
    assert d.error_code == code
    assert d.error_category == category
    assert d.split_batch is split
    if delay is None:
        assert d.next_retry_at is None
    else:
        assert d.delay_s == pytest.approx(delay)
        assert d.next_retry_at == NOW + timedelta(seconds=delay)


def test_backoff_without_jitter_matches_reference() -> None:
    p = policy(jitter=0.0, max_attempts=30)
    assert [p.backoff_s(a) for a in range(1, 11)] == [
        300,
        600,
        1200,
        2400,
        4800,
        9600,
        19200,
        38400,
        76800,
        86400,
    ]
    assert p.backoff_s(1000) == 86400


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.999999])
@pytest.mark.parametrize("attempt", [1, 5, 9, 10, 20])
def test_transient_delay_bounds(jitter: float, attempt: int) -> None:
    p = policy(jitter=jitter, max_attempts=100)
    d = p.decide(row(K.RETRY, "INTERNAL", C.TRANSIENT), attempt, NOW)
    assert d.delay_s is not None
    assert p.backoff_s(attempt) <= d.delay_s <= 86400
    assert d.delay_s <= p.backoff_s(attempt) + 60


def test_rate_limit_never_earlier_than_google_asked() -> None:
    for jitter in (0.0, 0.5, 0.99):
        d = policy(jitter=jitter).decide(row(K.RETRY, "RESOURCE_EXHAUSTED", C.RATE_LIMIT, 123.0), 1, NOW)
        assert d.next_retry_at is not None and d.next_retry_at >= NOW + timedelta(seconds=123)


def test_custom_cap_and_default_categories() -> None:
    p = policy(max_attempts=2)
    assert p.decide(row(K.RETRY), 1, NOW).status is S.RETRY
    capped = p.decide(row(K.RETRY), 2, NOW)
    assert (capped.status, capped.error_code, capped.error_category) == (
        S.FAILED,
        MAX_ATTEMPTS_CODE,
        C.TRANSIENT,
    )
    assert p.decide(row(K.FAILED), 1, NOW).error_category is C.VALIDATION
    assert p.decide(row(K.BLOCKED), 1, NOW).error_category is C.CONFIG
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


# rows Google did not judge give their attempt back, even at the cap (they never creep to it)
REFUNDS = [
    (row(K.SPLIT_BATCH, "TOO_MANY_CONVERSIONS_IN_REQUEST", C.CONFIG), 7, S.QUEUED, 0.0, True),
    (row(K.RETRY, "COLLATERAL", C.TRANSIENT, 0.0), 7, S.QUEUED, 0.0, True),
    (row(K.DEFERRED, "ACCOUNT_PAUSED", C.RATE_LIMIT, 40.0), 7, S.RETRY, 70.0, True),
    (row(K.DEFERRED, "ACCOUNT_PAUSED", C.RATE_LIMIT, None), 1, S.RETRY, 30.0, True),
    (row(K.RETRY, "INTERNAL", C.TRANSIENT), 1, S.RETRY, 330.0, False),
    (row(K.RETRY, "RESOURCE_EXHAUSTED", C.RATE_LIMIT, 40.0), 1, S.RETRY, 70.0, False),
    (row(K.COMPLETED), 1, S.COMPLETED, None, False),
]


@pytest.mark.parametrize(("outcome", "attempt", "status", "delay", "refund"), REFUNDS)
def test_refunded_attempts(
    outcome: RowOutcome, attempt: int, status: QueueStatus, delay: float | None, refund: bool
) -> None:
    d = policy().decide(outcome, attempt, NOW)
    assert (d.status, d.refund_attempt) == (status, refund)
    assert d.delay_s == (pytest.approx(delay) if delay is not None else None)
