"""Table-driven tests of the pure Google error classifier (reference/google-apis.md §1.4-§2.3)."""

from __future__ import annotations

import pytest

from opsmantik_stream.destinations.google.classify import CONVERSION_UPLOAD_ERRORS, TOO_RECENT_DELAY_S, classify
from opsmantik_stream.enums import ErrorCategory, OutcomeKind

pytestmark = pytest.mark.unit

K = OutcomeKind
C = ErrorCategory

# Every ConversionUploadError value -> expected (kind, category) for a row inside a 200
# partial failure.
CONVERSION_UPLOAD_TABLE: dict[str, tuple[OutcomeKind, ErrorCategory | None]] = {
    "UNSPECIFIED": (K.RETRY, C.TRANSIENT),
    "UNKNOWN": (K.RETRY, C.TRANSIENT),
    "TOO_MANY_CONVERSIONS_IN_REQUEST": (K.SPLIT_BATCH, C.CONFIG),
    "UNPARSEABLE_GCLID": (K.FAILED, C.VALIDATION),
    "CONVERSION_PRECEDES_EVENT": (K.FAILED, C.VALIDATION),
    "EXPIRED_EVENT": (K.FAILED, C.VALIDATION),
    "TOO_RECENT_EVENT": (K.RETRY_AFTER_6H, C.TRANSIENT),
    "EVENT_NOT_FOUND": (K.FAILED, C.VALIDATION),
    "UNAUTHORIZED_CUSTOMER": (K.BLOCKED, C.CONFIG),
    "TOO_RECENT_CONVERSION_ACTION": (K.RETRY_AFTER_6H, C.TRANSIENT),
    "CONVERSION_TRACKING_NOT_ENABLED_AT_IMPRESSION_TIME": (K.FAILED, C.VALIDATION),
    "EXTERNAL_ATTRIBUTION_DATA_SET_FOR_NON_EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION": (K.FAILED, C.VALIDATION),
    "EXTERNAL_ATTRIBUTION_DATA_NOT_SET_FOR_EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION": (K.FAILED, C.VALIDATION),
    "ORDER_ID_NOT_PERMITTED_FOR_EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION": (K.FAILED, C.VALIDATION),
    "ORDER_ID_ALREADY_IN_USE": (K.ALREADY_EXISTS, None),
    "DUPLICATE_ORDER_ID": (K.RETRY, C.TRANSIENT),
    "TOO_RECENT_CALL": (K.RETRY_AFTER_6H, C.TRANSIENT),
    "EXPIRED_CALL": (K.FAILED, C.VALIDATION),
    "CALL_NOT_FOUND": (K.FAILED, C.VALIDATION),
    "CONVERSION_PRECEDES_CALL": (K.FAILED, C.VALIDATION),
    "CONVERSION_TRACKING_NOT_ENABLED_AT_CALL_TIME": (K.FAILED, C.VALIDATION),
    "UNPARSEABLE_CALLERS_PHONE_NUMBER": (K.FAILED, C.VALIDATION),
    "CLICK_CONVERSION_ALREADY_EXISTS": (K.ALREADY_EXISTS, None),
    "CALL_CONVERSION_ALREADY_EXISTS": (K.ALREADY_EXISTS, None),
    "DUPLICATE_CLICK_CONVERSION_IN_REQUEST": (K.RETRY, C.TRANSIENT),
    "DUPLICATE_CALL_CONVERSION_IN_REQUEST": (K.RETRY, C.TRANSIENT),
    "CUSTOM_VARIABLE_NOT_ENABLED": (K.BLOCKED, C.CONFIG),
    "CUSTOM_VARIABLE_VALUE_CONTAINS_PII": (K.FAILED, C.VALIDATION),
    "INVALID_CUSTOMER_FOR_CLICK": (K.FAILED, C.VALIDATION),
    "INVALID_CUSTOMER_FOR_CALL": (K.FAILED, C.VALIDATION),
    "CONVERSION_NOT_COMPLIANT_WITH_ATT_POLICY": (K.FAILED, C.VALIDATION),
    "CLICK_NOT_FOUND": (K.FAILED, C.VALIDATION),
    "INVALID_USER_IDENTIFIER": (K.FAILED, C.VALIDATION),
    "EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION_NOT_PERMITTED_WITH_USER_IDENTIFIER": (K.FAILED, C.VALIDATION),
    "UNSUPPORTED_USER_IDENTIFIER": (K.FAILED, C.VALIDATION),
    "GBRAID_WBRAID_BOTH_SET": (K.FAILED, C.VALIDATION),
    "UNPARSEABLE_WBRAID": (K.FAILED, C.VALIDATION),
    "UNPARSEABLE_GBRAID": (K.FAILED, C.VALIDATION),
    "ONE_PER_CLICK_CONVERSION_ACTION_NOT_PERMITTED_WITH_BRAID": (K.FAILED, C.VALIDATION),
    "CUSTOMER_DATA_POLICY_PROHIBITS_ENHANCED_CONVERSIONS": (K.BLOCKED, C.CONFIG),
    "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS": (K.BLOCKED, C.CONFIG),
    "ORDER_ID_CONTAINS_PII": (K.FAILED, C.VALIDATION),
    "CUSTOMER_NOT_ENABLED_ENHANCED_CONVERSIONS_FOR_LEADS": (K.BLOCKED, C.CONFIG),
    "INVALID_JOB_ID": (K.BLOCKED, C.CONFIG),
    "NO_CONVERSION_ACTION_FOUND": (K.BLOCKED, C.CONFIG),
    "INVALID_CONVERSION_ACTION_TYPE": (K.BLOCKED, C.CONFIG),
}


def test_table_covers_the_whole_enum() -> None:
    assert set(CONVERSION_UPLOAD_TABLE) == set(CONVERSION_UPLOAD_ERRORS)
    assert len(CONVERSION_UPLOAD_ERRORS) == 46  # 44 codes + UNSPECIFIED + UNKNOWN


@pytest.mark.parametrize(("name", "expected"), sorted(CONVERSION_UPLOAD_TABLE.items()))
def test_conversion_upload_error_row(name: str, expected: tuple[OutcomeKind, ErrorCategory | None]) -> None:
    got = classify(200, name)
    assert (got.kind, got.category) == expected
    if got.kind is K.RETRY_AFTER_6H:
        assert got.retry_delay_s == TOO_RECENT_DELAY_S


# (status, code, retry delay) -> (kind, category, expected delay or None)
WHOLE_REQUEST_TABLE = [
    # 401 authenticationError
    (401, "OAUTH_TOKEN_INVALID", None, K.BLOCKED, C.AUTH, None),
    (401, "OAUTH_TOKEN_EXPIRED", None, K.BLOCKED, C.AUTH, None),
    (401, "OAUTH_TOKEN_HEADER_INVALID", None, K.BLOCKED, C.AUTH, None),
    (401, "NOT_ADS_USER", None, K.BLOCKED, C.AUTH, None),
    (401, "CUSTOMER_NOT_FOUND", None, K.BLOCKED, C.AUTH, None),
    # 403 authorizationError / allowlist
    (403, "USER_PERMISSION_DENIED", None, K.BLOCKED, C.AUTH, None),
    (403, "CLOUD_PROJECT_NOT_APPROVED_FOR_PRODUCTION", None, K.BLOCKED, C.AUTH, None),
    (403, "CUSTOMER_NOT_ENABLED", None, K.BLOCKED, C.AUTH, None),
    (403, "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE", None, K.BLOCKED, C.CONFIG, None),
    (200, "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE", None, K.BLOCKED, C.CONFIG, None),
    # 400
    (400, "TOO_MANY_CONVERSIONS_IN_REQUEST", None, K.SPLIT_BATCH, C.CONFIG, None),
    (400, "UNSUPPORTED_VERSION", None, K.BLOCKED, C.CONFIG, None),
    (400, "INVALID_CUSTOMER_ID", None, K.BLOCKED, C.CONFIG, None),
    (400, "INVALID_LOGIN_CUSTOMER_ID", None, K.BLOCKED, C.CONFIG, None),
    (400, "INVALID_JOB_ID", None, K.BLOCKED, C.CONFIG, None),
    (400, "INVALID_ARGUMENT", None, K.FAILED, C.VALIDATION, None),
    # 429 quotaError
    (429, "RESOURCE_TEMPORARILY_EXHAUSTED", 7.0, K.RETRY, C.RATE_LIMIT, 7.0),
    (429, "RESOURCE_EXHAUSTED", 40591.0, K.RETRY, C.RATE_LIMIT, 40591.0),
    (429, "RESOURCE_EXHAUSTED", None, K.RETRY, C.RATE_LIMIT, 60.0),
    (429, "RATE_LIMIT_EXCEEDED", 30.0, K.RETRY, C.RATE_LIMIT, 30.0),
    # 5xx internalError
    (500, "INTERNAL_ERROR", None, K.RETRY, C.TRANSIENT, None),
    (500, "TRANSIENT_ERROR", None, K.RETRY, C.TRANSIENT, None),
    (504, "DEADLINE_EXCEEDED", None, K.RETRY, C.TRANSIENT, None),
    (503, "UNAVAILABLE", None, K.RETRY, C.TRANSIENT, None),
    (500, "INTERNAL", None, K.RETRY, C.TRANSIENT, None),
    (409, "ABORTED", None, K.RETRY, C.TRANSIENT, None),
    (200, "CONCURRENT_MODIFICATION", None, K.RETRY, C.TRANSIENT, None),
    (200, "INTERNAL_ERROR", None, K.RETRY, C.TRANSIENT, None),
    (200, "RESOURCE_TEMPORARILY_EXHAUSTED", None, K.RETRY, C.RATE_LIMIT, 60.0),
    # OAuth token endpoint
    (400, "invalid_grant", None, K.BLOCKED, C.AUTH, None),
    (401, "invalid_client", None, K.BLOCKED, C.AUTH, None),
    (400, "unauthorized_client", None, K.BLOCKED, C.AUTH, None),
    # Data Manager
    (400, "INVALID_FORMAT", None, K.FAILED, C.VALIDATION, None),
    (400, "EVENT_TIME_INVALID", None, K.FAILED, C.VALIDATION, None),
    (400, "INVALID_SHA256_FORMAT", None, K.FAILED, C.VALIDATION, None),
    (400, "NO_IDENTIFIERS_PROVIDED", None, K.FAILED, C.VALIDATION, None),
    (400, "INVALID_CONVERSION_ACTION_ID", None, K.BLOCKED, C.CONFIG, None),
    (400, "TOO_MANY_EVENTS", None, K.SPLIT_BATCH, C.CONFIG, None),
    (400, "DUPLICATE_DESTINATION_REFERENCE", None, K.BLOCKED, C.CONFIG, None),
    (403, "NOT_ALLOWLISTED", None, K.BLOCKED, C.CONFIG, None),
    (403, "TERMS_AND_CONDITIONS_NOT_SIGNED", None, K.BLOCKED, C.CONFIG, None),
    (403, "ACCESS_TOKEN_SCOPE_INSUFFICIENT", None, K.BLOCKED, C.AUTH, None),
    (400, "COLLATERAL", 0.0, K.RETRY, C.TRANSIENT, 0.0),
    # Data Manager processing error reasons (requestStatus counts)
    (200, "PROCESSING_ERROR_REASON_DUPLICATE_TRANSACTION_ID", None, K.ALREADY_EXISTS, None, None),
    (200, "PROCESSING_ERROR_REASON_DUPLICATE_GCLID", None, K.ALREADY_EXISTS, None, None),
    (
        200,
        "PROCESSING_ERROR_REASON_TOO_RECENT_CLICK",
        None,
        K.RETRY_AFTER_6H,
        C.TRANSIENT,
        TOO_RECENT_DELAY_S,
    ),
    (200, "PROCESSING_ERROR_REASON_EVENT_TOO_OLD", None, K.FAILED, C.VALIDATION, None),
    (200, "PROCESSING_ERROR_REASON_CONVERSION_PRECEDES_CLICK", None, K.FAILED, C.VALIDATION, None),
    (200, "PROCESSING_ERROR_REASON_INVALID_GCLID", None, K.FAILED, C.VALIDATION, None),
    (200, "PROCESSING_ERROR_REASON_CLICK_NOT_FOUND", None, K.FAILED, C.VALIDATION, None),
    (200, "PROCESSING_ERROR_REASON_DENIED_CONSENT", None, K.FAILED, C.VALIDATION, None),
    (200, "PROCESSING_ERROR_REASON_INVALID_OPERATING_ACCOUNT_FOR_CLICK", None, K.FAILED, C.VALIDATION, None),
    # No response / our own codes
    (0, "TIMEOUT", None, K.RETRY, C.TRANSIENT, None),
    (0, "CONNECT_ERROR", None, K.RETRY, C.TRANSIENT, None),
    (0, "MISSING_CONVERSION_ACTION", None, K.BLOCKED, C.CONFIG, None),
    (200, "MISSING_CLICK_ID", None, K.FAILED, C.VALIDATION, None),
]


@pytest.mark.parametrize(("status", "code", "delay", "kind", "category", "out_delay"), WHOLE_REQUEST_TABLE)
def test_whole_request_and_other_errors(
    status: int,
    code: str,
    delay: float | None,
    kind: OutcomeKind,
    category: ErrorCategory | None,
    out_delay: float | None,
) -> None:
    got = classify(status, code, delay)
    assert (got.kind, got.category, got.retry_delay_s) == (kind, category, out_delay)


STATUS_ONLY_TABLE = [
    (200, K.COMPLETED, None),
    (204, K.COMPLETED, None),
    (0, K.RETRY, C.TRANSIENT),
    (400, K.FAILED, C.VALIDATION),
    (401, K.BLOCKED, C.AUTH),
    (403, K.BLOCKED, C.AUTH),
    (404, K.BLOCKED, C.CONFIG),
    (408, K.RETRY, C.TRANSIENT),
    (409, K.RETRY, C.TRANSIENT),
    (413, K.SPLIT_BATCH, C.CONFIG),
    (418, K.FAILED, C.VALIDATION),
    (429, K.RETRY, C.RATE_LIMIT),
    (500, K.RETRY, C.TRANSIENT),
    (502, K.RETRY, C.TRANSIENT),
    (503, K.RETRY, C.TRANSIENT),
    (504, K.RETRY, C.TRANSIENT),
]


@pytest.mark.parametrize(("status", "kind", "category"), STATUS_ONLY_TABLE)
def test_status_without_code(status: int, kind: OutcomeKind, category: ErrorCategory | None) -> None:
    got = classify(status, None)
    assert (got.kind, got.category) == (kind, category)


def test_unknown_code_falls_back_to_status() -> None:
    assert classify(200, "SOME_FUTURE_ENUM").kind is K.FAILED  # unknown row error: permanent
    assert classify(503, "SOME_FUTURE_ENUM").kind is K.RETRY
    assert classify(403, "SOME_FUTURE_ENUM").kind is K.BLOCKED


def test_too_recent_keeps_a_longer_google_delay() -> None:
    assert classify(200, "TOO_RECENT_EVENT", 30000.0).retry_delay_s == 30000.0
    assert classify(200, "TOO_RECENT_EVENT", 5.0).retry_delay_s == TOO_RECENT_DELAY_S
