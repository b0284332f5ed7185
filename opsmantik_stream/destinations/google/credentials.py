"""Data types shared by the Google destination clients, the classifier and the retry policy.

The uploader builds :class:`GoogleCredentials` (decrypted site credentials) and a list of
:class:`Conversion` rows, calls ``client.upload(creds, conversions)`` on either destination
client and reads one :class:`RowOutcome` per input row from the returned :class:`UploadResult`.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

__all__ = [
    "BeforeRequest",
    "Classification",
    "Conversion",
    "ErrorCategory",
    "GoogleCredentials",
    "OutcomeKind",
    "RowOutcome",
    "UploadClient",
    "UploadResult",
]


class OutcomeKind(StrEnum):
    """What happened to one row (or to a whole request) at the destination."""

    COMPLETED = "completed"
    #: Google already holds this conversion (our own order id / click+time): delivered.
    ALREADY_EXISTS = "already_exists"
    #: Transient or rate limited; retry later (see ``retry_delay_s`` and the category).
    RETRY = "retry"
    #: ``TOO_RECENT_*``: Google asks to wait at least 6 hours.
    RETRY_AFTER_6H = "retry_after_6h"
    #: The request was too big; resend the rows in smaller requests.
    SPLIT_BATCH = "split_batch"
    #: Permanent problem with this row.
    FAILED = "failed"
    #: Account or configuration problem: hold the rows until an operator fixes it.
    BLOCKED = "blocked"
    #: Not sent at all (the account is paused pool-wide): back to the queue, no attempt spent.
    DEFERRED = "deferred"


class ErrorCategory(StrEnum):
    """Error categories stored on queue rows and in the ledger."""

    VALIDATION = "VALIDATION"
    AUTH = "AUTH"
    TRANSIENT = "TRANSIENT"
    RATE_LIMIT = "RATE_LIMIT"
    CONFIG = "CONFIG"


Destination = Literal["google_ads", "data_manager"]


@dataclass(frozen=True, slots=True)
class GoogleCredentials:
    """Decrypted per-site destination credentials.

    ``customer_id`` is the Google Ads account that owns the conversion action (the Data
    Manager "operating account"); ``login_customer_id`` is the manager (MCC) account when
    acting through one. Dashes in account ids are accepted and stripped. ``conversion_action``
    is a resource name ``customers/{cid}/conversionActions/{id}`` or just the numeric id.
    Endpoints are not part of the credentials: they are deployment settings given to the
    clients and the token provider, so a tenant can never choose where its secrets are sent.
    ``repr`` hides the secrets so credentials never leak into logs or tracebacks.
    """

    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)
    customer_id: str
    conversion_action: str
    destination: Destination = "data_manager"
    developer_token: str | None = field(default=None, repr=False)
    login_customer_id: str | None = None


@dataclass(frozen=True, slots=True)
class Conversion:
    """One queue row to upload.

    ``order_id`` must be stable across retries (it is Google's dedupe key); ``conversion_time``
    must be timezone-aware; ``value_minor`` is in the currency's minor units (cents).
    Exactly one click id is sent, with precedence gclid > wbraid > gbraid.
    ``conversion_action`` overrides the credentials' action for this row when set.
    ``phone_e164`` is hashed (SHA-256 of the E.164 form) before sending; ``phone_sha256`` may
    carry an already-hashed 64-hex value instead. Consent ``None`` means unknown (not sent).
    """

    queue_id: str
    order_id: str
    conversion_time: datetime
    value_minor: int
    currency: str
    gclid: str | None = None
    wbraid: str | None = None
    gbraid: str | None = None
    conversion_action: str | None = None
    phone_e164: str | None = None
    phone_sha256: str | None = None
    ad_user_data_consent: bool | None = None
    ad_personalization_consent: bool | None = None


@dataclass(frozen=True, slots=True)
class Classification:
    """Result of :func:`opsmantik_stream.google.classify.classify`."""

    kind: OutcomeKind
    category: ErrorCategory | None = None
    retry_delay_s: float | None = None


@dataclass(frozen=True, slots=True)
class RowOutcome:
    """Outcome of one input row, in input order.

    ``error_code`` is Google's enum name (``TOO_RECENT_EVENT``), an OAuth error
    (``invalid_grant``) or one of ours (``MISSING_CLICK_ID``, ``TIMEOUT``, ``COLLATERAL``...).
    ``retry_delay_s`` is the delay Google asked for (rate limits, TOO_RECENT), if any.
    """

    queue_id: str
    index: int
    kind: OutcomeKind
    error_code: str | None = None
    error_category: ErrorCategory | None = None
    message: str | None = None
    retry_delay_s: float | None = None
    request_id: str | None = None
    http_status: int | None = None


@dataclass(slots=True)
class UploadResult:
    """Result of one ``upload`` call (one or more HTTP requests, one per chunk).

    ``rows`` has exactly one outcome per input conversion, in input order. ``request_id`` and
    ``http_status`` describe the last request sent (``http_status`` is 0 when nothing was sent
    or no response arrived); ``request_ids`` lists every request id. ``error_code`` /
    ``error_category`` / ``message`` describe the first whole-request failure, if any.
    ``requests_sent`` counts HTTP requests to the API (token calls excluded).
    """

    destination: Destination
    rows: list[RowOutcome]
    request_id: str | None = None
    request_ids: list[str] = field(default_factory=list)
    http_status: int = 0
    error_code: str | None = None
    error_category: ErrorCategory | None = None
    message: str | None = None
    retry_delay_s: float | None = None
    requests_sent: int = 0

    def counts(self) -> dict[str, int]:
        """Number of rows per outcome kind."""
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.kind.value] = out.get(r.kind.value, 0) + 1
        return out


#: Called before each HTTP request with the number of conversions in it, e.g. to wait for a
#: token bucket (waiting there is not an attempt). It returns ``None`` to send, or a number of
#: seconds to hold back this request and the rest of the upload (rows ``DEFERRED``, not sent).
BeforeRequest = Callable[[int], Awaitable[float | None]]


class UploadClient(abc.ABC):
    """Interface both destination clients implement."""

    destination: Destination

    @abc.abstractmethod
    async def upload(
        self,
        creds: GoogleCredentials,
        conversions: Sequence[Conversion],
        *,
        before_request: BeforeRequest | None = None,
    ) -> UploadResult:
        """Upload ``conversions``; never raises for destination or network errors."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the HTTP client if this object owns it."""
