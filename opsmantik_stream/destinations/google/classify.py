"""Pure classification of Google errors into outcome kinds.

``classify(http_status, error_code, retry_delay_s)`` maps what Google answered (for one row
of a partial failure, or for a whole request) to an :class:`OutcomeKind` and an
:class:`ErrorCategory`. The enum name is checked first; the HTTP status decides only when the
name is unknown or absent. Sources: reference/google-apis.md §1.4, §1.6, §1.7, §1.9, §2.3.
"""

from __future__ import annotations

from opsmantik_stream.destinations.base import Classification, ErrorCategory, OutcomeKind

__all__ = [
    "ACCOUNT_CONFIG_ERRORS",
    "ALREADY_EXISTS_ERRORS",
    "AUTH_ERRORS",
    "CONVERSION_UPLOAD_ERRORS",
    "PERMANENT_ROW_ERRORS",
    "RATE_LIMIT_ERRORS",
    "SPLIT_BATCH_ERRORS",
    "TOO_RECENT_DELAY_S",
    "TOO_RECENT_ERRORS",
    "TRANSIENT_ERRORS",
    "classify",
]

#: Google asks to wait at least 6 hours after a TOO_RECENT_* error.
TOO_RECENT_DELAY_S = 6 * 3600.0
#: Used for a 429 that carries no retry delay.
DEFAULT_RATE_LIMIT_DELAY_S = 60.0

TOO_RECENT_ERRORS = frozenset(
    {
        "TOO_RECENT_EVENT",
        "TOO_RECENT_CONVERSION_ACTION",
        "TOO_RECENT_CALL",
        # an adjustment of a conversion that happened less than 24 hours ago
        "TOO_RECENT_CONVERSION",
        # Data Manager processing error reason (request status counts).
        "PROCESSING_ERROR_REASON_TOO_RECENT_CLICK",
    }
)

#: Google already holds the conversion. We always send our own deterministic order id, so an
#: existing key is our own earlier (possibly ambiguous) upload: delivered.
ALREADY_EXISTS_ERRORS = frozenset(
    {
        "ORDER_ID_ALREADY_IN_USE",
        "CLICK_CONVERSION_ALREADY_EXISTS",
        "CALL_CONVERSION_ALREADY_EXISTS",
        "PROCESSING_ERROR_REASON_DUPLICATE_TRANSACTION_ID",
        "PROCESSING_ERROR_REASON_DUPLICATE_GCLID",
        # an adjustment resent with its own (stable) adjustment time: already applied
        "RESTATEMENT_ALREADY_EXISTS",
    }
)

#: The request was too large: resend the rows in smaller requests.
SPLIT_BATCH_ERRORS = frozenset(
    {"TOO_MANY_CONVERSIONS_IN_REQUEST", "TOO_MANY_EVENTS", "TOO_MANY_ADJUSTMENTS_IN_REQUEST"}
)

#: Server-side transient faults, per row or per request. In-request duplicates are a client
#: bug but none of the copies was processed, so they are retried (one copy at a time).
TRANSIENT_ERRORS = frozenset(
    {
        # an adjustment whose conversion Google has not processed yet (it was just uploaded)
        "CONVERSION_NOT_FOUND",
        "UNKNOWN",
        "UNSPECIFIED",
        "INTERNAL_ERROR",
        "TRANSIENT_ERROR",
        "DEADLINE_EXCEEDED",
        "CONCURRENT_MODIFICATION",
        "INTERNAL",
        "UNAVAILABLE",
        "ABORTED",
        "BACKEND_ERROR",
        "DUPLICATE_ORDER_ID",
        "DUPLICATE_CLICK_CONVERSION_IN_REQUEST",
        "DUPLICATE_CALL_CONVERSION_IN_REQUEST",
        # Our own codes for network-level failures (no HTTP response).
        "TIMEOUT",
        "CONNECT_ERROR",
        "NETWORK_ERROR",
        "MISSING_RESULT",
        "COLLATERAL",
        # OAuth token endpoint answering 5xx / 429.
        "TOKEN_ENDPOINT_UNAVAILABLE",
    }
)

RATE_LIMIT_ERRORS = frozenset(
    {
        "RESOURCE_TEMPORARILY_EXHAUSTED",
        "RESOURCE_EXHAUSTED",
        "RATE_LIMIT_EXCEEDED",
        "RATE_LIMIT",
    }
)

#: Authentication / authorization failures: the account must be fixed by a human.
AUTH_ERRORS = frozenset(
    {
        # authenticationError
        "OAUTH_TOKEN_INVALID",
        "OAUTH_TOKEN_EXPIRED",
        "OAUTH_TOKEN_HEADER_INVALID",
        "OAUTH_TOKEN_REVOKED",
        "NOT_ADS_USER",
        "CUSTOMER_NOT_FOUND",
        "AUTHENTICATION_ERROR",
        "UNAUTHENTICATED",
        # authorizationError
        "USER_PERMISSION_DENIED",
        "CLOUD_PROJECT_NOT_APPROVED_FOR_PRODUCTION",
        "CUSTOMER_NOT_ENABLED",
        "DEVELOPER_TOKEN_NOT_APPROVED",
        "PERMISSION_DENIED",
        "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        # OAuth token endpoint (RFC 6749)
        "invalid_grant",
        "invalid_client",
        "unauthorized_client",
        "MISSING_CREDENTIALS",
    }
)

#: Account or configuration errors (not auth): stop the account, alert a human.
ACCOUNT_CONFIG_ERRORS = frozenset(
    {
        "UNAUTHORIZED_CUSTOMER",
        "NO_CONVERSION_ACTION_FOUND",
        "INVALID_CONVERSION_ACTION_TYPE",
        "CUSTOM_VARIABLE_NOT_ENABLED",
        "CUSTOMER_DATA_POLICY_PROHIBITS_ENHANCED_CONVERSIONS",
        "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS",
        "CUSTOMER_NOT_ENABLED_ENHANCED_CONVERSIONS_FOR_LEADS",
        "INVALID_JOB_ID",
        "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE",
        # headerError / requestError
        "INVALID_LOGIN_CUSTOMER_ID",
        "INVALID_LINKED_CUSTOMER_ID",
        "UNSUPPORTED_VERSION",
        "INVALID_CUSTOMER_ID",
        # Data Manager
        "INVALID_CONVERSION_ACTION_ID",
        "NOT_ALLOWLISTED",
        "TERMS_AND_CONDITIONS_NOT_SIGNED",
        "DUPLICATE_DESTINATION_REFERENCE",
        "INVALID_OPERATING_ACCOUNT",
        "NOT_FOUND",
        # Ours: credentials lack the conversion action / an account id.
        "MISSING_CONVERSION_ACTION",
        "INVALID_CONVERSION_ACTION",
        "INVALID_CREDENTIALS",
    }
)

#: Permanent problems with one row: never retried.
PERMANENT_ROW_ERRORS = frozenset(
    {
        "UNPARSEABLE_GCLID",
        "UNPARSEABLE_GBRAID",
        "UNPARSEABLE_WBRAID",
        "GBRAID_WBRAID_BOTH_SET",
        "CONVERSION_PRECEDES_EVENT",
        "EXPIRED_EVENT",
        "EVENT_NOT_FOUND",
        "CLICK_NOT_FOUND",
        "INVALID_CUSTOMER_FOR_CLICK",
        "CONVERSION_TRACKING_NOT_ENABLED_AT_IMPRESSION_TIME",
        "CONVERSION_NOT_COMPLIANT_WITH_ATT_POLICY",
        "CUSTOM_VARIABLE_VALUE_CONTAINS_PII",
        "ORDER_ID_CONTAINS_PII",
        "INVALID_USER_IDENTIFIER",
        "UNSUPPORTED_USER_IDENTIFIER",
        "EXTERNAL_ATTRIBUTION_DATA_SET_FOR_NON_EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION",
        "EXTERNAL_ATTRIBUTION_DATA_NOT_SET_FOR_EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION",
        "ORDER_ID_NOT_PERMITTED_FOR_EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION",
        "EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION_NOT_PERMITTED_WITH_USER_IDENTIFIER",
        "ONE_PER_CLICK_CONVERSION_ACTION_NOT_PERMITTED_WITH_BRAID",
        "EXPIRED_CALL",
        "CALL_NOT_FOUND",
        "CONVERSION_PRECEDES_CALL",
        "CONVERSION_TRACKING_NOT_ENABLED_AT_CALL_TIME",
        "UNPARSEABLE_CALLERS_PHONE_NUMBER",
        "INVALID_CUSTOMER_FOR_CALL",
        # dateError / fieldError / currency / collection size
        "INVALID_FIELD_VALUES_IN_DATE",
        "INVALID_FIELD_VALUES_IN_DATE_TIME",
        "INVALID_STRING_DATE",
        "INVALID_STRING_DATE_TIME_MICROS",
        "INVALID_STRING_DATE_TIME_SECONDS",
        "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET",
        "EARLIER_THAN_MINIMUM_DATE",
        "LATER_THAN_MAXIMUM_DATE",
        "REQUIRED",
        "VALUE_MUST_BE_UNSET",
        "TOO_MANY",
        "UNSUPPORTED",
        "INVALID_ARGUMENT",
        # Data Manager field violation reasons and processing errors
        "INVALID_FORMAT",
        "EVENT_TIME_INVALID",
        "INVALID_SHA256_FORMAT",
        "NO_IDENTIFIERS_PROVIDED",
        "INVALID_CURRENCY_CODE",
        "INVALID_TRANSACTION_ID",
        "PROCESSING_ERROR_REASON_EVENT_TOO_OLD",
        "PROCESSING_ERROR_REASON_CONVERSION_PRECEDES_CLICK",
        "PROCESSING_ERROR_REASON_INVALID_GCLID",
        "PROCESSING_ERROR_REASON_CLICK_NOT_FOUND",
        "PROCESSING_ERROR_REASON_DENIED_CONSENT",
        "PROCESSING_ERROR_REASON_INVALID_OPERATING_ACCOUNT_FOR_CLICK",
        # Ours: rejected before sending.
        "MISSING_CLICK_ID",
        "INVALID_CONVERSION_TIME",
        "INVALID_VALUE",
        "INVALID_CURRENCY",
        "MISSING_ORDER_ID",
    }
)

#: Every ``ConversionUploadError`` enum value (v22-v25, byte-identical; 44 codes + 2).
CONVERSION_UPLOAD_ERRORS = (
    "UNSPECIFIED",
    "UNKNOWN",
    "TOO_MANY_CONVERSIONS_IN_REQUEST",
    "UNPARSEABLE_GCLID",
    "CONVERSION_PRECEDES_EVENT",
    "EXPIRED_EVENT",
    "TOO_RECENT_EVENT",
    "EVENT_NOT_FOUND",
    "UNAUTHORIZED_CUSTOMER",
    "TOO_RECENT_CONVERSION_ACTION",
    "CONVERSION_TRACKING_NOT_ENABLED_AT_IMPRESSION_TIME",
    "EXTERNAL_ATTRIBUTION_DATA_SET_FOR_NON_EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION",
    "EXTERNAL_ATTRIBUTION_DATA_NOT_SET_FOR_EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION",
    "ORDER_ID_NOT_PERMITTED_FOR_EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION",
    "ORDER_ID_ALREADY_IN_USE",
    "DUPLICATE_ORDER_ID",
    "TOO_RECENT_CALL",
    "EXPIRED_CALL",
    "CALL_NOT_FOUND",
    "CONVERSION_PRECEDES_CALL",
    "CONVERSION_TRACKING_NOT_ENABLED_AT_CALL_TIME",
    "UNPARSEABLE_CALLERS_PHONE_NUMBER",
    "CLICK_CONVERSION_ALREADY_EXISTS",
    "CALL_CONVERSION_ALREADY_EXISTS",
    "DUPLICATE_CLICK_CONVERSION_IN_REQUEST",
    "DUPLICATE_CALL_CONVERSION_IN_REQUEST",
    "CUSTOM_VARIABLE_NOT_ENABLED",
    "CUSTOM_VARIABLE_VALUE_CONTAINS_PII",
    "INVALID_CUSTOMER_FOR_CLICK",
    "INVALID_CUSTOMER_FOR_CALL",
    "CONVERSION_NOT_COMPLIANT_WITH_ATT_POLICY",
    "CLICK_NOT_FOUND",
    "INVALID_USER_IDENTIFIER",
    "EXTERNALLY_ATTRIBUTED_CONVERSION_ACTION_NOT_PERMITTED_WITH_USER_IDENTIFIER",
    "UNSUPPORTED_USER_IDENTIFIER",
    "GBRAID_WBRAID_BOTH_SET",
    "UNPARSEABLE_WBRAID",
    "UNPARSEABLE_GBRAID",
    "ONE_PER_CLICK_CONVERSION_ACTION_NOT_PERMITTED_WITH_BRAID",
    "CUSTOMER_DATA_POLICY_PROHIBITS_ENHANCED_CONVERSIONS",
    "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS",
    "ORDER_ID_CONTAINS_PII",
    "CUSTOMER_NOT_ENABLED_ENHANCED_CONVERSIONS_FOR_LEADS",
    "INVALID_JOB_ID",
    "NO_CONVERSION_ACTION_FOUND",
    "INVALID_CONVERSION_ACTION_TYPE",
)


def _rate_limit(retry_delay_s: float | None) -> Classification:
    delay = retry_delay_s if retry_delay_s is not None and retry_delay_s > 0 else DEFAULT_RATE_LIMIT_DELAY_S
    return Classification(OutcomeKind.RETRY, ErrorCategory.RATE_LIMIT, delay)


def _by_name(name: str, retry_delay_s: float | None) -> Classification | None:
    if name in TOO_RECENT_ERRORS:
        delay = max(TOO_RECENT_DELAY_S, retry_delay_s or 0.0)
        return Classification(OutcomeKind.RETRY_AFTER_6H, ErrorCategory.TRANSIENT, delay)
    if name in ALREADY_EXISTS_ERRORS:
        return Classification(OutcomeKind.ALREADY_EXISTS)
    if name in SPLIT_BATCH_ERRORS:
        return Classification(OutcomeKind.SPLIT_BATCH, ErrorCategory.CONFIG)
    if name in RATE_LIMIT_ERRORS:
        return _rate_limit(retry_delay_s)
    if name in TRANSIENT_ERRORS:
        return Classification(OutcomeKind.RETRY, ErrorCategory.TRANSIENT, retry_delay_s)
    if name in AUTH_ERRORS:
        return Classification(OutcomeKind.BLOCKED, ErrorCategory.AUTH)
    if name in ACCOUNT_CONFIG_ERRORS:
        return Classification(OutcomeKind.BLOCKED, ErrorCategory.CONFIG)
    if name in PERMANENT_ROW_ERRORS:
        return Classification(OutcomeKind.FAILED, ErrorCategory.VALIDATION)
    return None


def _by_status(http_status: int, retry_delay_s: float | None) -> Classification:
    if 200 <= http_status < 300:
        return Classification(OutcomeKind.COMPLETED)
    if http_status == 0 or http_status in (408, 409) or http_status >= 500:
        # 0 = no response (timeout / connection error): ambiguous, but safe to resend because
        # the order id makes a duplicate come back as ORDER_ID_ALREADY_IN_USE.
        return Classification(OutcomeKind.RETRY, ErrorCategory.TRANSIENT, retry_delay_s)
    if http_status == 429:
        return _rate_limit(retry_delay_s)
    if http_status in (401, 403):
        return Classification(OutcomeKind.BLOCKED, ErrorCategory.AUTH)
    if http_status == 404:
        # Wrong base URL / dead API version: a configuration problem, not the row's fault.
        return Classification(OutcomeKind.BLOCKED, ErrorCategory.CONFIG)
    if http_status == 413:
        return Classification(OutcomeKind.SPLIT_BATCH, ErrorCategory.CONFIG)
    return Classification(OutcomeKind.FAILED, ErrorCategory.VALIDATION)


def classify(
    http_status: int,
    error_code: str | None = None,
    retry_delay_s: float | None = None,
) -> Classification:
    """Classify one Google answer.

    ``http_status`` is the HTTP status of the response (200 for a row inside a partial
    failure; 0 when no response arrived). ``error_code`` is the enum name without its oneof
    key (``TOO_RECENT_EVENT``, ``RESOURCE_TEMPORARILY_EXHAUSTED``, ``invalid_grant``,
    ``INVALID_CONVERSION_ACTION_ID``...) or ``None``. ``retry_delay_s`` is the delay Google gave
    (``quotaErrorDetails.retryDelay`` / ``google.rpc.RetryInfo``), if any.

    A code-less 2xx is ``completed``; an unknown code inside a 2xx partial failure is a
    permanent row failure (as the reference adapter did), otherwise the status decides.
    """
    if error_code:
        found = _by_name(error_code, retry_delay_s)
        if found is not None:
            return found
        if 200 <= http_status < 300:
            return Classification(OutcomeKind.FAILED, ErrorCategory.VALIDATION)
    return _by_status(http_status, retry_delay_s)
