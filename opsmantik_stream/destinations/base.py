"""The contract every destination implements, and the data it exchanges with the uploader.

The uploader (``uploads/engine.py``) knows destinations only through this module:

- :class:`Destination` subclasses declare their ``name`` (as stored in the database), their
  credential schema (a msgspec Struct, validated by :meth:`Destination.parse_credentials`,
  sealed in the vault, opened by :meth:`Destination.open_credentials`), the account id that
  shares a rate budget (:meth:`Destination.account_id`), how their errors classify
  (:meth:`Destination.classify`), and optional hints for BLOCKED rows
  (:meth:`Destination.blocked_hint`);
- an instance, built by the uploader with a :class:`DestinationContext` (settings, HTTP client,
  timeouts, chunk size, shared helpers), sends :class:`Conversion` rows with
  :meth:`Destination.upload` and answers one :class:`RowOutcome` per row in an
  :class:`UploadResult`; it never raises for a destination or network error.

Shaped to grow without reshaping (issue 13): :class:`Operation` lists what a destination can do
(``upload`` today; ``adjust`` for restated or cancelled sales later, with its own method), and
:class:`Conversion` carries :class:`UserIdentifier` values of any :class:`IdentifierKind`
(hashed phone today; hashed email for enhanced conversions later).

Endpoints are never credentials: a destination reads them from the deployment's settings.
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

import httpx
import msgspec

from opsmantik_stream.config import Settings
from opsmantik_stream.enums import ErrorCategory, OutcomeKind
from opsmantik_stream.telemetry import UPLOADER_METRICS, Stats

__all__ = [
    "BeforeRequest",
    "CheckStep",
    "Classification",
    "Conversion",
    "CredentialsError",
    "Destination",
    "DestinationContext",
    "ErrorCategory",
    "IdentifierKind",
    "Operation",
    "OutcomeKind",
    "RowOutcome",
    "UnsupportedOperation",
    "UploadResult",
    "UserIdentifier",
    "credentials_command",
    "destination_command",
    "email_sha256",
    "normalize_e164",
    "normalize_email",
    "phone_sha256",
    "requeue_command",
]

T = TypeVar("T")
_E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")


def normalize_e164(phone: str) -> str | None:
    """Strip formatting from a phone number already in international form; ``None`` if the
    result is not E.164 (we never guess a country code)."""
    p = re.sub(r"[\s\-().]", "", phone)
    if p.startswith("00"):
        p = "+" + p[2:]
    return p if _E164_RE.match(p) else None


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: Google removes the dots of the local part for these domains before matching (its rule).
_DOTLESS_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


def normalize_email(email: str) -> str | None:
    """Google's normalisation of an email address before hashing: trimmed, lower-cased, and
    for gmail.com / googlemail.com without the dots before the ``@``; ``None`` if it is not
    an address."""
    e = email.strip().lower()
    if len(e) > 254 or not _EMAIL_RE.match(e):
        return None
    local, _, domain = e.rpartition("@")
    if domain in _DOTLESS_DOMAINS:
        local = local.replace(".", "")
        if not local:
            return None
    return f"{local}@{domain}"


def email_sha256(email: str) -> str | None:
    """Lower-case hex SHA-256 of the normalised email (``None`` if it is not an address)."""
    e = normalize_email(email)
    return None if e is None else hashlib.sha256(e.encode("utf-8")).hexdigest()


def phone_sha256(phone: str) -> str | None:
    """Lower-case hex SHA-256 of the E.164 phone number (``None`` if it is not E.164)."""
    p = normalize_e164(phone)
    return None if p is None else hashlib.sha256(p.encode("ascii")).hexdigest()


class Operation(StrEnum):
    """What a destination can be asked to do."""

    UPLOAD = "upload"
    #: check credentials without storing anything at the destination (:meth:`Destination.test_connection`)
    TEST = "test"
    #: deliver adjustments (restatements, retractions) of uploaded conversions through ``upload``
    #: (rows with :attr:`Conversion.adjustment` set); a destination that cannot do one kind
    #: answers those rows FAILED with a code and words saying so
    ADJUST = "adjust"


class IdentifierKind(StrEnum):
    """Kinds of user identifier a conversion may carry (values are SHA-256 hex digests)."""

    PHONE_SHA256 = "phone_sha256"
    EMAIL_SHA256 = "email_sha256"


@dataclass(frozen=True, slots=True)
class UserIdentifier:
    """A hashed identifier of the converting user: lower-case hex SHA-256 of the normalised
    value (E.164 for phones)."""

    kind: IdentifierKind
    value: str

    @classmethod
    def phone(cls, number: str) -> UserIdentifier:
        """The hashed identifier of a phone number in international form (``ValueError`` if it
        is not E.164 once formatting is stripped)."""
        digest = phone_sha256(number)
        if digest is None:
            raise ValueError("not an E.164 phone number")
        return cls(IdentifierKind.PHONE_SHA256, digest)

    @classmethod
    def email(cls, address: str) -> UserIdentifier:
        """The hashed identifier of an email address (``ValueError`` if it is not one)."""
        digest = email_sha256(address)
        if digest is None:
            raise ValueError("not an email address")
        return cls(IdentifierKind.EMAIL_SHA256, digest)


@dataclass(frozen=True, slots=True)
class Conversion:
    """One queue row to deliver.

    ``order_id`` must be stable across retries (destinations deduplicate on it);
    ``conversion_time`` must be timezone-aware; ``value_minor`` is in the currency's minor
    units. ``consent_scopes`` is the visitor's consent as recorded when the conversion was
    enqueued (``None``: nothing recorded); each destination maps it to its own consent fields.
    ``target`` overrides the credentials' conversion target (e.g. a Google conversion action)
    for this row when set.
    """

    queue_id: str
    order_id: str
    conversion_time: datetime
    value_minor: int
    currency: str
    gclid: str | None = None
    wbraid: str | None = None
    gbraid: str | None = None
    user_identifiers: tuple[UserIdentifier, ...] = ()
    consent_scopes: tuple[str, ...] | None = None
    target: str | None = None
    #: set for an adjustment of an uploaded conversion (``restatement`` / ``retraction``, the
    #: queue's kind): ``order_id`` names the conversion, ``value_minor`` is the new value, and
    #: ``adjusted_at`` (timezone-aware) is when the adjustment happened
    adjustment: str | None = None
    adjusted_at: datetime | None = None

    def identifier(self, kind: IdentifierKind) -> str | None:
        return next((u.value for u in self.user_identifiers if u.kind is kind), None)


@dataclass(frozen=True, slots=True)
class Classification:
    """How one destination answer is handled: the outcome kind, its category and a delay."""

    kind: OutcomeKind
    category: ErrorCategory | None = None
    retry_delay_s: float | None = None


@dataclass(frozen=True, slots=True)
class RowOutcome:
    """Outcome of one input row, in input order.

    ``error_code`` is the destination's error name (``TOO_RECENT_EVENT``), an OAuth error
    (``invalid_grant``) or one of ours (``MISSING_CLICK_ID``, ``TIMEOUT``, ``COLLATERAL``...);
    ``message`` is text from the destination's configured endpoint or ours; ``http_status`` is
    set when the destination answered (``None``/0 when the row never reached it).
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
    """Result of one ``upload`` call (one or more requests).

    ``rows`` has exactly one outcome per input conversion, in input order. ``request_id`` and
    ``http_status`` describe the last request sent (``http_status`` 0: nothing was sent or no
    answer arrived); ``error_code`` / ``error_category`` / ``message`` the first whole-request
    failure, if any. ``requests_sent`` counts requests to the destination's API.
    """

    destination: str
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


#: Awaited before each request with the number of conversions in it, e.g. to wait for a token
#: bucket (waiting there is not an attempt). Returns ``None`` to send, or a number of seconds to
#: hold back this request and the rest of the upload (those rows come back ``DEFERRED``).
BeforeRequest = Callable[[int], Awaitable[float | None]]


@dataclass(frozen=True, slots=True)
class CheckStep:
    """One step of a connection test: what was tried (``token``, ``upload``...), whether it
    worked, the destination's or our code when not, and what it means in words (with the fix)."""

    step: str
    ok: bool
    detail: str
    code: str | None = None


class CredentialsError(Exception):
    """Credentials missing, invalid or not openable; ``code`` goes on blocked rows or answers."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnsupportedOperation(Exception):
    """The destination does not offer this :class:`Operation`."""


@dataclass
class DestinationContext:
    """What the uploader gives a destination: the deployment's settings (endpoints live there),
    a shared HTTP client, the request timeout and the chunk size. :meth:`shared` keeps one
    helper per key for every destination of one uploader (e.g. one OAuth token cache).
    ``stats`` is the uploader's figures (``telemetry.UPLOADER_METRICS``): a destination records
    each request's duration and answer there."""

    settings: Settings
    http: httpx.AsyncClient
    timeout: httpx.Timeout
    chunk_size: int
    _shared: dict[str, Any] = field(default_factory=dict)
    stats: Stats = field(default_factory=lambda: Stats(UPLOADER_METRICS))

    def shared(self, key: str, factory: Callable[[], T]) -> T:
        if key not in self._shared:
            self._shared[key] = factory()
        return self._shared[key]  # type: ignore[no-any-return]


# The commands an operator runs to fix a BLOCKED row, spelled once (hints of the uploader and
# of destinations, answers of the destination and credentials commands).
def credentials_command(public_id: str, destination: str) -> str:
    return f"`opsmantik site credentials set {public_id} --destination {destination} ...`"


def destination_command(public_id: str, destination: str) -> str:
    return f"`opsmantik site destination set {public_id} {destination}`"


def requeue_command(public_id: str) -> str:
    return f"`opsmantik oci requeue --site {public_id} --status BLOCKED`"


class Destination(abc.ABC):
    """One destination. Subclasses set the class attributes and implement the abstract methods."""

    #: The name stored in the database (``offline_conversion_queue.destination`` ...).
    name: ClassVar[str]
    #: A line for people (CLI help, docs).
    label: ClassVar[str]
    #: The credential schema: a msgspec Struct (``kw_only=True, forbid_unknown_fields=True``).
    credentials_schema: ClassVar[type[msgspec.Struct]]
    #: Help text per credential field (the CLI makes ``--field-name`` flags from the schema).
    credential_help: ClassVar[Mapping[str, str]] = {}
    #: Secret fields: never shown, and the CLI also reads them from OPSMANTIK_CRED_<FIELD>.
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    #: What it can do.
    operations: ClassVar[frozenset[Operation]] = frozenset({Operation.UPLOAD})
    #: Most conversions one request may carry.
    max_batch: ClassVar[int] = 2000

    def __init__(self, ctx: DestinationContext) -> None:
        self.ctx = ctx

    # -- credentials (class level: the API and the CLI use them without an uploader) --------

    @classmethod
    def parse_credentials(cls, fields: Mapping[str, Any]) -> msgspec.Struct:
        """Validated, normalised credentials from input fields; :class:`CredentialsError`
        (``invalid_body`` or a field-specific code) otherwise."""
        try:
            creds = msgspec.convert(dict(fields), cls.credentials_schema)
        except msgspec.ValidationError as exc:
            raise CredentialsError("invalid_body", str(exc)) from None
        return cls.normalize_credentials(creds)

    @classmethod
    def normalize_credentials(cls, creds: Any) -> msgspec.Struct:
        """Check what the schema cannot express and return the normalised credentials."""
        return creds  # type: ignore[no-any-return]

    @classmethod
    @abc.abstractmethod
    def account_id(cls, creds: Any) -> str:
        """The account whose rate budget and pauses these credentials share (stored in clear)."""

    @classmethod
    def open_credentials(cls, sealed: Mapping[str, Any]) -> msgspec.Struct:
        """Credentials from their sealed form. Keys the schema does not know (e.g. endpoint URLs
        stored by older versions) are ignored, never used."""
        known = set(cls.credentials_schema.__struct_fields__)
        try:
            return msgspec.convert({k: v for k, v in sealed.items() if k in known}, cls.credentials_schema)
        except msgspec.ValidationError:
            raise CredentialsError("INVALID_CREDENTIALS", "sealed credentials lack a required field") from None

    # -- work --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def upload(
        self, creds: Any, conversions: Sequence[Conversion], *, before_request: BeforeRequest | None = None
    ) -> UploadResult:
        """Deliver ``conversions``: one outcome per row; never raises for destination errors."""

    @classmethod
    @abc.abstractmethod
    def classify(cls, http_status: int, error_code: str | None, retry_delay_s: float | None = None) -> Classification:
        """How an answer (a row's, or a whole request's) is handled."""

    @classmethod
    def blocked_hint(
        cls, code: str | None, *, public_id: str, site_destination: str, site_has_credentials: bool
    ) -> str | None:
        """The fix for a destination-specific account/config error, or ``None`` (the uploader
        then uses the generic hints of ``uploads/hints.py``)."""
        return None

    async def test_connection(self, creds: Any, *, public_id: str) -> list[CheckStep]:
        """Try the credentials without storing anything at the destination (refresh the token,
        a validate-only upload...); one :class:`CheckStep` per step tried, stopping at the
        first that fails. Never raises for a destination or network error."""
        raise UnsupportedOperation(f"{self.name} cannot test a connection")

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the destination owns (the shared HTTP client is the uploader's)."""
