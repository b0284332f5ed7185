"""The pure "plan the finish" step of an upload attempt, the BLOCKED hints and the consent
mapping, with tables, a fixed clock and a fixed jitter source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opsmantik_stream.destinations.base import ErrorCategory, OutcomeKind, RowOutcome
from opsmantik_stream.destinations.google.consent import google_consent
from opsmantik_stream.destinations.google_ads import GoogleAdsDestination
from opsmantik_stream.enums import GateDecision
from opsmantik_stream.retry import RetryPolicy
from opsmantik_stream.uploads.breaker import Signal
from opsmantik_stream.uploads.engine import gate_of
from opsmantik_stream.uploads.hints import blocked_hint
from opsmantik_stream.uploads.plan import ClaimedRow, GroupFacts, plan_finish

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 2, 12, 0, 0, tzinfo=UTC)
K = OutcomeKind
C = ErrorCategory
PID = "0123456789abcdef0123456789abcdef"
FACTS = GroupFacts(
    public_id=PID,
    row_destination="google_ads",
    site_destination="google_ads",
    other_destination="data_manager",
    destination_hint=lambda code: GoogleAdsDestination.blocked_hint(
        code, public_id=PID, site_destination="google_ads", site_has_credentials=True
    ),
)


def out(kind: OutcomeKind, code: str | None = None, category: ErrorCategory | None = None, **kw: object) -> RowOutcome:
    return RowOutcome("q", 0, kind, code, category, **kw)  # type: ignore[arg-type]


def plan(outcomes: list[RowOutcome], attempt: int = 1, facts: GroupFacts = FACTS, **kw: object):  # type: ignore[no-untyped-def]
    rows = [ClaimedRow(f"r{i}", attempt) for i in range(len(outcomes))]
    return plan_finish(rows, outcomes, policy=RetryPolicy(rng=lambda: 0.0), now=NOW, facts=facts, **kw)  # type: ignore[arg-type]


DELIVERED = out(K.COMPLETED, request_id="req-1")
TRANSIENT = out(K.RETRY, "INTERNAL_ERROR", C.TRANSIENT, message="An internal error has occurred.")
RATE = out(K.RETRY, "RESOURCE_TEMPORARILY_EXHAUSTED", C.RATE_LIMIT, retry_delay_s=40.0, http_status=429)
BAD = out(K.FAILED, "UNPARSEABLE_GCLID", C.VALIDATION, message="bad click", http_status=200)
SPLIT = out(K.SPLIT_BATCH, "TOO_MANY_CONVERSIONS_IN_REQUEST", C.CONFIG, http_status=400)
PAUSED = out(K.DEFERRED, "ACCOUNT_PAUSED", C.RATE_LIMIT, retry_delay_s=12.0)
COLLATERAL = out(K.RETRY, "COLLATERAL", C.TRANSIENT, retry_delay_s=0.0)
ALLOWLIST = out(
    K.BLOCKED, "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE", C.CONFIG, message="use Data Manager", http_status=403
)

# outcomes -> (statuses, refunds, signal, (completed, failed, retry, blocked), pause_s, max_batch, error code)
TABLE = [
    ([DELIVERED, DELIVERED], ["COMPLETED"] * 2, [False] * 2, Signal.SUCCESS, (2, 0, 0, 0), None, None, None),
    (
        [DELIVERED, BAD],
        ["COMPLETED", "FAILED"],
        [False] * 2,
        Signal.SUCCESS,
        (1, 1, 0, 0),
        None,
        None,
        "UNPARSEABLE_GCLID",
    ),
    ([TRANSIENT, TRANSIENT], ["RETRY"] * 2, [False] * 2, Signal.TRANSIENT, (0, 0, 2, 0), None, None, "INTERNAL_ERROR"),
    (
        [RATE, RATE],
        ["RETRY"] * 2,
        [False] * 2,
        Signal.NEUTRAL,
        (0, 0, 2, 0),
        40.0,
        None,
        "RESOURCE_TEMPORARILY_EXHAUSTED",
    ),
    ([SPLIT] * 5, ["QUEUED"] * 5, [True] * 5, Signal.NEUTRAL, (0, 0, 5, 0), None, 2, "TOO_MANY_CONVERSIONS_IN_REQUEST"),
    ([SPLIT], ["RETRY"], [False], Signal.TRANSIENT, (0, 0, 1, 0), None, None, "TOO_MANY_CONVERSIONS_IN_REQUEST"),
    ([PAUSED, PAUSED], ["RETRY"] * 2, [True] * 2, Signal.NEUTRAL, (0, 0, 2, 0), None, None, "ACCOUNT_PAUSED"),
    (
        [BAD, COLLATERAL],
        ["FAILED", "QUEUED"],
        [False, True],
        Signal.NEUTRAL,
        (0, 1, 1, 0),
        None,
        None,
        "UNPARSEABLE_GCLID",
    ),
    (
        [ALLOWLIST, ALLOWLIST],
        ["BLOCKED"] * 2,
        [False] * 2,
        Signal.BLOCK,
        (0, 0, 0, 2),
        None,
        None,
        ALLOWLIST.error_code,
    ),
    (
        [DELIVERED, ALLOWLIST],
        ["COMPLETED", "BLOCKED"],
        [False] * 2,
        Signal.BLOCK,
        (1, 0, 0, 1),
        None,
        None,
        ALLOWLIST.error_code,
    ),
]


@pytest.mark.parametrize(("outcomes", "statuses", "refunds", "signal", "counts", "pause", "max_batch", "code"), TABLE)
def test_plan_table(outcomes, statuses, refunds, signal, counts, pause, max_batch, code) -> None:  # type: ignore[no-untyped-def]
    p = plan(outcomes)
    assert [u.status for u in p.updates] == statuses
    assert [u.refund for u in p.updates] == refunds
    assert p.signal is signal
    assert (p.counts.completed, p.counts.failed, p.counts.retry, p.counts.blocked) == counts
    assert (p.pause_s, p.max_batch, p.error_code) == (pause, max_batch, code)
    assert p.refunded == sum(refunds)


def test_plan_row_fields() -> None:
    p = plan([DELIVERED, RATE, PAUSED], attempt=3)
    done, rate, paused = p.updates
    assert (done.error_code, done.last_error, done.request_id, done.attempt) == (None, None, "req-1", 3)
    assert rate.next_retry_at == NOW + timedelta(seconds=40) and rate.error_category == "RATE_LIMIT"
    assert paused.next_retry_at == NOW + timedelta(seconds=12) and paused.refund
    assert p.breaker_error == "RESOURCE_TEMPORARILY_EXHAUSTED"
    assert plan([TRANSIENT]).breaker_error == "INTERNAL_ERROR: An internal error has occurred."


def test_plan_request_error_wins_and_lengths_must_match() -> None:
    assert plan([BAD], request_error=("HTTP_503", C.TRANSIENT)).error_code == "HTTP_503"
    with pytest.raises(ValueError):
        plan_finish([ClaimedRow("a", 1)], [], policy=RetryPolicy(), now=NOW, facts=FACTS)


def test_blocked_rows_carry_our_hint_and_googles_words_only_from_its_answer() -> None:
    [u] = plan([ALLOWLIST]).updates
    assert u.last_error is not None
    assert f"`opsmantik site destination set {PID} data_manager`" in u.last_error
    assert u.last_error.endswith("The destination said: use Data Manager")
    ours = out(K.BLOCKED, "MISSING_CREDENTIALS", C.CONFIG, message="no google_ads credentials for this site")
    [m] = plan([ours]).updates
    assert m.last_error is not None and "said" not in m.last_error


def _google_hint(code: str | None, site_destination: str) -> str | None:
    return GoogleAdsDestination.blocked_hint(
        code, public_id=PID, site_destination=site_destination, site_has_credentials=True
    )


HINTS = [
    # code, row destination, site destination -> fragments expected
    (
        "MISSING_CREDENTIALS",
        "data_manager",
        "data_manager",
        [
            "no data_manager credentials for this site",
            f"`opsmantik site credentials set {PID} --destination data_manager ...`",
            f"`opsmantik site destination set {PID} google_ads`",
            f"`opsmantik oci requeue --site {PID} --status BLOCKED`",
        ],
    ),
    (
        "MISSING_CREDENTIALS",
        "data_manager",
        "google_ads",
        ["queued for data_manager", "the site now sends to google_ads", "moves these rows there"],
    ),
    (
        "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE",
        "google_ads",
        "google_ads",
        ["Data Manager API", f"site destination set {PID} data_manager", "--destination data_manager", "requeue"],
    ),
    (
        "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE",
        "google_ads",
        "data_manager",
        ["the site now sends to data_manager", "moves these rows there"],
    ),
    ("invalid_grant", "google_ads", "google_ads", ["expired or revoked", "--destination google_ads"]),
    ("CREDENTIALS_UNDECRYPTABLE", "google_ads", "google_ads", ["cannot be opened", "set them again"]),
    ("VAULT_KEY_MISSING", "google_ads", "google_ads", ["OPSMANTIK_VAULT_KEY"]),
    ("USER_PERMISSION_DENIED", "google_ads", "google_ads", ["USER_PERMISSION_DENIED", "requeue"]),
]


@pytest.mark.parametrize(("code", "row_dest", "site_dest", "fragments"), HINTS)
def test_blocked_hints(code: str, row_dest: str, site_dest: str, fragments: list[str]) -> None:
    text = blocked_hint(
        code,
        row_destination=row_dest,
        site_destination=site_dest,
        public_id=PID,
        other_destination="google_ads" if row_dest == "data_manager" else "data_manager",
        destination_hint=_google_hint(code, site_dest) if row_dest == "google_ads" else None,
    )
    for fragment in fragments:
        assert fragment in text, (fragment, text)


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        (None, (None, None)),
        ([], (False, False)),
        (["analytics"], (False, False)),
        (["analytics", "marketing"], (True, True)),
        (["marketing"], (True, True)),
    ],
)
def test_google_consent_from_recorded_scopes(scopes: list[str] | None, expected: tuple[bool | None, ...]) -> None:
    assert google_consent(scopes) == expected


@pytest.mark.parametrize(
    ("gate", "paused", "expected"),
    [
        ("SEND", False, GateDecision.SEND),
        ("PROBE", False, GateDecision.PROBE),
        ("SEND", True, GateDecision.ACCOUNT_PAUSED),
        ("PROBE", True, GateDecision.ACCOUNT_PAUSED),
        ("BREAKER_OPEN", True, GateDecision.BREAKER_OPEN),
        ("PROBE_IN_PROGRESS", False, GateDecision.PROBE_IN_PROGRESS),
    ],
)
def test_gate_of_a_group(gate: str, paused: bool, expected: GateDecision) -> None:
    assert gate_of({"gate": gate, "paused": paused}) is expected
