"""Every state list the schema CHECKs, as Python enums.

The schema is the source of truth: ``tests/integration/test_schema.py`` reads each CHECK
constraint from PostgreSQL and compares it with the enum registered in ``CHECKED_COLUMNS``.
"""

from __future__ import annotations

from enum import StrEnum

from opsmantik_stream.destinations.shipped import SHIPPED as _SHIPPED_DESTINATIONS

__all__ = [
    "CHECKED_COLUMNS",
    "ActorType",
    "AlertEvent",
    "AlertKind",
    "BillingState",
    "CallAction",
    "CallSource",
    "CallStatus",
    "CircuitState",
    "ClickIdType",
    "ConsentScope",
    "ConsentSource",
    "ConsoleSignIn",
    "ConversationStatus",
    "DeadLetterStatus",
    "Destination",
    "ErrorCategory",
    "GateDecision",
    "IntentAction",
    "LedgerPhase",
    "LinkEntity",
    "NotificationStatus",
    "OutcomeKind",
    "PlatformRole",
    "PrivacyIdentifier",
    "QueueKind",
    "QueueStatus",
    "SaleStatus",
    "SiteRole",
    "SourceKind",
    "VoidReason",
]


class PlatformRole(StrEnum):
    USER = "user"
    ADMIN = "admin"


class SiteRole(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    OPERATOR = "operator"
    ANALYST = "analyst"
    BILLING = "billing"


class ActorType(StrEnum):
    USER = "user"
    SYSTEM = "system"
    CRON = "cron"
    CLI = "cli"


class BillingState(StrEnum):
    ACCEPTED = "ACCEPTED"
    OVERAGE = "OVERAGE"
    NOT_BILLABLE = "NOT_BILLABLE"
    REJECTED_QUOTA = "REJECTED_QUOTA"


class DeadLetterStatus(StrEnum):
    PENDING = "PENDING"
    REPLAYED = "REPLAYED"
    DISCARDED = "DISCARDED"


class CallStatus(StrEnum):
    INTENT = "intent"
    CONFIRMED = "confirmed"
    JUNK = "junk"
    CANCELLED = "cancelled"
    SUSPICIOUS = "suspicious"


class CallSource(StrEnum):
    CLICK = "click"
    CALL_EVENT = "call_event"
    MANUAL = "manual"


class IntentAction(StrEnum):
    PHONE = "phone"
    WHATSAPP = "whatsapp"
    FORM = "form"


class CallAction(StrEnum):
    SEAL = "seal"
    JUNK = "junk"
    CANCEL = "cancel"
    RESTORE = "restore"
    UNDO = "undo"
    AUTO_APPROVE = "auto_approve"


class ConversationStatus(StrEnum):
    OPEN = "OPEN"
    WON = "WON"
    LOST = "LOST"
    JUNK = "JUNK"


class LinkEntity(StrEnum):
    SESSION = "session"
    CALL = "call"
    EVENT = "event"
    SALE = "sale"


class SaleStatus(StrEnum):
    DRAFT = "DRAFT"
    CONFIRMED = "CONFIRMED"
    CANCELED = "CANCELED"


class ClickIdType(StrEnum):
    # precedence order when a session has several: gclid, then wbraid, then gbraid
    GCLID = "gclid"
    WBRAID = "wbraid"
    GBRAID = "gbraid"


# The shipped destinations, mirrored from the registry (destinations/registry.py) so that adding
# one is one module + one registry line + one migration (`SELECT allow_destination('name')`),
# and the schema test still compares every destination CHECK list with this enum.
Destination = StrEnum(  # type: ignore[misc]
    "Destination", {name.upper(): name for name in _SHIPPED_DESTINATIONS}
)


class SourceKind(StrEnum):
    SALE = "sale"
    CALL = "call"


class QueueStatus(StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    RETRY = "RETRY"
    FAILED = "FAILED"
    BLOCKED = "BLOCKED"


class QueueKind(StrEnum):
    """What a queue row delivers: a conversion, or an adjustment of an uploaded one (issue 13)."""

    CONVERSION = "conversion"
    #: the conversion's value changed (Google Ads RESTATEMENT; Data Manager re-sends the event)
    RESTATEMENT = "restatement"
    #: the conversion is withdrawn (Google Ads RETRACTION; Data Manager cannot)
    RETRACTION = "retraction"


class ErrorCategory(StrEnum):
    """Error categories stored on queue rows and in the ledger."""

    VALIDATION = "VALIDATION"
    AUTH = "AUTH"
    TRANSIENT = "TRANSIENT"
    RATE_LIMIT = "RATE_LIMIT"
    CONFIG = "CONFIG"


class OutcomeKind(StrEnum):
    """What happened to one row (or to a whole request) at a destination (not stored)."""

    COMPLETED = "completed"
    #: The destination already holds this conversion (our own order id): delivered.
    ALREADY_EXISTS = "already_exists"
    #: Transient or rate limited; retry later (see the outcome's delay and category).
    RETRY = "retry"
    #: Google's ``TOO_RECENT_*``: wait at least 6 hours.
    RETRY_AFTER_6H = "retry_after_6h"
    #: The request was too big; resend the rows in smaller requests.
    SPLIT_BATCH = "split_batch"
    #: Permanent problem with this row.
    FAILED = "failed"
    #: Account or configuration problem: hold the rows until an operator fixes it.
    BLOCKED = "blocked"
    #: Not sent at all (the account is paused pool-wide): back to the queue, no attempt spent.
    DEFERRED = "deferred"


class CircuitState(StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


class LedgerPhase(StrEnum):
    STARTED = "STARTED"
    FINISHED = "FINISHED"


class GateDecision(StrEnum):
    """What ``provider_breaker_gate()`` (SQL) says about a group, plus the account pause the
    uploader adds; the gated ones are ledgered with this as their error code."""

    SEND = "SEND"
    PROBE = "PROBE"
    BREAKER_OPEN = "BREAKER_OPEN"
    PROBE_IN_PROGRESS = "PROBE_IN_PROGRESS"
    ACCOUNT_PAUSED = "ACCOUNT_PAUSED"


class ConsentScope(StrEnum):
    # analytics: required to store anything; marketing: required to upload a conversion
    ANALYTICS = "analytics"
    MARKETING = "marketing"


class ConsentSource(StrEnum):
    # who changed a session's consent (consent_changes.source)
    INGEST = "ingest"  # a tracker event through /api/sync
    API = "api"  # the signed POST /api/consent


class PrivacyIdentifier(StrEnum):
    """What a data-subject request names the subject by (erase, export; consent takes the
    first two only)."""

    SESSION_ID = "session_id"
    FINGERPRINT = "fingerprint"
    PHONE = "phone"
    EMAIL = "email"


class VoidReason(StrEnum):
    """``offline_conversion_queue.error_code`` of a row ended by a privacy rule (final:
    the schema never lets such a row change status again)."""

    CONSENT_WITHDRAWN = "consent_withdrawn"  # marketing consent withdrawn
    ERASED = "erased"  # a data-subject erase request
    RETENTION = "retention"  # the retention job (a session without consent)


class AlertKind(StrEnum):
    """Watchtower conditions (SPEC §9); each raises one alert per (site, subject)."""

    NO_SESSIONS = "no_sessions"
    NO_CLICK_IDS = "no_click_ids"
    DEAD_LETTERS = "dead_letters"
    BILLING_DRIFT = "billing_drift"
    STUCK_UPLOADS = "stuck_uploads"
    BREAKER_OPEN = "breaker_open"
    BLOCKED_ROWS = "blocked_rows"
    QUEUE_AGE = "queue_age"


class AlertEvent(StrEnum):
    RAISED = "raised"
    RESOLVED = "resolved"


class NotificationStatus(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    ABANDONED = "ABANDONED"


class ConsoleSignIn(StrEnum):
    """How a console session began: a one-time link or a bearer token typed in."""

    LINK = "link"
    TOKEN = "token"


# (table, column) -> enum.  Every CHECK ... IN (...) list in the schema must be listed here.
CHECKED_COLUMNS: dict[tuple[str, str], type[StrEnum]] = {
    ("users", "platform_role"): PlatformRole,
    ("site_members", "role"): SiteRole,
    ("role_capabilities", "role"): SiteRole,
    ("audit_log", "actor_type"): ActorType,
    ("ingest_idempotency", "billing_state"): BillingState,
    ("dead_letters", "status"): DeadLetterStatus,
    ("calls", "status"): CallStatus,
    ("calls", "source"): CallSource,
    ("calls", "intent_action"): IntentAction,
    ("calls", "click_id_type"): ClickIdType,
    ("sites", "default_destination"): Destination,
    ("call_actions", "action_type"): CallAction,
    ("call_actions", "actor_type"): ActorType,
    ("conversations", "status"): ConversationStatus,
    ("conversation_links", "entity_type"): LinkEntity,
    ("sales", "status"): SaleStatus,
    ("provider_credentials", "destination"): Destination,
    ("offline_conversion_queue", "status"): QueueStatus,
    ("offline_conversion_queue", "destination"): Destination,
    ("offline_conversion_queue", "source_kind"): SourceKind,
    ("offline_conversion_queue", "kind"): QueueKind,
    ("offline_conversion_queue", "error_category"): ErrorCategory,
    ("provider_health_state", "state"): CircuitState,
    ("provider_health_state", "destination"): Destination,
    ("provider_leases", "destination"): Destination,
    ("provider_account_state", "destination"): Destination,
    ("provider_upload_attempts", "phase"): LedgerPhase,
    ("provider_upload_attempts", "destination"): Destination,
    ("provider_upload_attempts", "error_category"): ErrorCategory,
    ("provider_upload_attempts", "breaker_state"): CircuitState,
    ("provider_upload_metrics", "destination"): Destination,
    ("consent_changes", "source"): ConsentSource,
    ("watchtower_alerts", "kind"): AlertKind,
    ("watchtower_notifications", "event"): AlertEvent,
    ("watchtower_notifications", "status"): NotificationStatus,
    ("console_sessions", "via"): ConsoleSignIn,
}
