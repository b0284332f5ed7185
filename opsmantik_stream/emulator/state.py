"""State and request handling of the Google emulator (OAuth, Google Ads API, Data Manager API).

All Google-facing logic lives here as synchronous methods that take the parsed request and
return an :class:`EmuReply` (status, JSON payload, headers, latency to apply). The ASGI app in
``app.py`` only decodes requests, sleeps for the latency and encodes replies. Because nothing
here awaits, every handler runs atomically on the event loop: no locks are needed.

Time comes from an injectable ``clock`` (epoch seconds) so rate limits, token expiry and
per-second counters are deterministic in tests. Randomness (failure injection, request ids,
job ids, tokens) comes from one ``random.Random(seed)``.

Row errors chosen by click-id prefix (case-sensitive, on the row's click id). Google Ads
answers them as partial-failure rows; Data Manager accepts the request (200) and reports them
only as ``errorCounts`` in ``requestStatus:retrieve`` (``PROCESSING_ERROR_REASON_...``):

- ``EXPIRED``        -> ``EXPIRED_EVENT``                 / DM ``EVENT_TOO_OLD``
- ``TOORECENT``      -> ``TOO_RECENT_EVENT``              / DM ``TOO_RECENT_CLICK``
- ``UNPARSEABLE``    -> ``UNPARSEABLE_GCLID|GBRAID|WBRAID`` / DM ``INVALID_GCLID``
- ``NOTFOUND``       -> ``EVENT_NOT_FOUND``               / DM ``CLICK_NOT_FOUND``
- ``PRECEDES``       -> ``CONVERSION_PRECEDES_EVENT``     / DM ``CONVERSION_PRECEDES_CLICK``
- ``WRONGCUSTOMER``  -> ``INVALID_CUSTOMER_FOR_CLICK``    / DM ``INVALID_OPERATING_ACCOUNT_FOR_CLICK``
- ``NOTRACKING``     -> ``CONVERSION_TRACKING_NOT_ENABLED_AT_IMPRESSION_TIME`` / DM accepted
- ``ATTPOLICY``      -> ``CONVERSION_NOT_COMPLIANT_WITH_ATT_POLICY``          / DM accepted
- ``NOTALLOWLISTED`` -> ``notAllowlistedError: CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE`` / DM accepted
- ``INTERNAL``       -> ``internalError: INTERNAL_ERROR`` (every time)        / DM accepted
- ``TRANSIENT``      -> ``internalError: TRANSIENT_ERROR`` (every time)       / DM accepted
- ``CONCURRENT``     -> ``databaseError: CONCURRENT_MODIFICATION``            / DM accepted
- ``FLAKY``          -> ``internalError: TRANSIENT_ERROR`` the first time that click id is seen,
  accepted afterwards (exercises a retry that succeeds)                       / DM accepted
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

import msgspec

__all__ = [
    "ROW_ERROR_PREFIXES",
    "AccountRate",
    "EmuReply",
    "EmulatorConfig",
    "EmulatorState",
]

ADS_SCOPE = "https://www.googleapis.com/auth/adwords"
DM_SCOPE = "https://www.googleapis.com/auth/datamanager"
_JSON = "application/json; charset=UTF-8"


class AccountRate(msgspec.Struct, forbid_unknown_fields=True):
    """Per-account rate override: requests per 1 s window, conversions per sliding 60 s."""

    rps: int | None = None
    cpm: int | None = None


class EmulatorConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Every emulator knob. All can be changed at runtime via ``POST /_emulator/config``."""

    seed: int = 0
    #: Added before each API response is sent (after the request was processed, so a client
    #: timeout leaves an accepted-but-unanswered upload, like a real ambiguous timeout).
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    #: Fraction of API requests answered with ``failure_status`` (500, 503 or 504).
    failure_rate: float = 0.0
    failure_status: int = 500
    #: Fraction of Google Ads rows failed with ``internalError: TRANSIENT_ERROR``.
    row_failure_rate: float = 0.0
    #: Every API request answers 503 UNAVAILABLE.
    outage: bool = False
    #: The token endpoint answers 503.
    token_outage: bool = False
    #: Default per-account limits (None = unlimited); ``account_rates`` overrides per account.
    rate_rps: int | None = None
    rate_cpm: int | None = None
    account_rates: dict[str, AccountRate] = {}
    #: account -> seconds: every API request for the account answers 429 with this retry delay.
    throttled_accounts: dict[str, float] = {}
    #: Requests per account per UTC day before 429 RESOURCE_EXHAUSTED (DEVELOPER scope).
    daily_ops_limit: int | None = None
    max_conversions: int = 2000
    api_versions: list[str] = msgspec.field(default_factory=lambda: ["v23", "v24", "v25", "v26"])
    retired_versions: list[str] = msgspec.field(default_factory=lambda: ["v19", "v20", "v21", "v22"])
    token_ttl_s: int = 3599
    #: When set, the token endpoint requires this client id / secret (else invalid_client).
    client_id: str | None = None
    client_secret: str | None = None
    #: When non-empty, only these refresh tokens are valid (others get invalid_grant).
    refresh_tokens: list[str] = []
    #: Refresh tokens that answer invalid_grant (revoked).
    invalid_grant_tokens: list[str] = []
    #: Refresh tokens whose access tokens lack the datamanager scope (Data Manager 403).
    ads_only_refresh_tokens: list[str] = []
    #: Customer ids not allowlisted for Google Ads click-conversion upload.
    not_allowlisted: list[str] = []
    #: ``request`` (403 for the whole request) or ``row`` (every row in partial failure).
    not_allowlisted_mode: str = "request"
    #: When non-empty, the only conversion action ids that exist.
    conversion_actions: list[str] = []
    #: customer id -> manager ids allowed as login-customer-id (unlisted customers: any).
    manager_links: dict[str, list[str]] = {}
    #: Data Manager requestStatus stays PROCESSING this long after ingestion.
    dm_processing_s: float = 0.0


@dataclass(slots=True)
class EmuReply:
    """What the ASGI layer sends back."""

    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    html: bool = False


@dataclass(slots=True)
class _Token:
    expires_at: float
    scopes: tuple[str, ...]


ROW_ERROR_PREFIXES: tuple[tuple[str, str, str, str | None], ...] = (
    # (prefix, Ads error key, Ads enum name, Data Manager processing error reason)
    ("EXPIRED", "conversionUploadError", "EXPIRED_EVENT", "PROCESSING_ERROR_REASON_EVENT_TOO_OLD"),
    ("TOORECENT", "conversionUploadError", "TOO_RECENT_EVENT", "PROCESSING_ERROR_REASON_TOO_RECENT_CLICK"),
    ("UNPARSEABLE", "conversionUploadError", "UNPARSEABLE_", "PROCESSING_ERROR_REASON_INVALID_GCLID"),
    ("NOTFOUND", "conversionUploadError", "EVENT_NOT_FOUND", "PROCESSING_ERROR_REASON_CLICK_NOT_FOUND"),
    (
        "PRECEDES",
        "conversionUploadError",
        "CONVERSION_PRECEDES_EVENT",
        "PROCESSING_ERROR_REASON_CONVERSION_PRECEDES_CLICK",
    ),
    (
        "WRONGCUSTOMER",
        "conversionUploadError",
        "INVALID_CUSTOMER_FOR_CLICK",
        "PROCESSING_ERROR_REASON_INVALID_OPERATING_ACCOUNT_FOR_CLICK",
    ),
    ("NOTRACKING", "conversionUploadError", "CONVERSION_TRACKING_NOT_ENABLED_AT_IMPRESSION_TIME", None),
    ("ATTPOLICY", "conversionUploadError", "CONVERSION_NOT_COMPLIANT_WITH_ATT_POLICY", None),
    ("NOTALLOWLISTED", "notAllowlistedError", "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE", None),
    ("INTERNAL", "internalError", "INTERNAL_ERROR", None),
    ("TRANSIENT", "internalError", "TRANSIENT_ERROR", None),
    ("CONCURRENT", "databaseError", "CONCURRENT_MODIFICATION", None),
    ("FLAKY", "internalError", "TRANSIENT_ERROR", None),
)

_MESSAGES = {
    "EXPIRED_EVENT": "The imported event can't be recorded because its click occurred before this "
    "conversion's click-through window.",
    "TOO_RECENT_EVENT": "The click associated with the given identifier or iOS URL parameter occurred "
    "less than 6 hours ago. Retry after 6 hours have passed.",
    "EVENT_NOT_FOUND": "The imported event could not be matched to a click.",
    "CONVERSION_PRECEDES_EVENT": "The imported event has a conversion_date_time that precedes the click.",
    "INVALID_CUSTOMER_FOR_CLICK": "The click was not made in the account that owns the conversion action.",
    "ORDER_ID_ALREADY_IN_USE": "The imported event includes an order ID that was previously recorded, "
    "so the event was not processed.",
    "CLICK_CONVERSION_ALREADY_EXISTS": "A conversion with the same click and conversion date time "
    "was already recorded.",
    "DUPLICATE_ORDER_ID": "The request contains more than one conversion with the same order ID.",
    "DUPLICATE_CLICK_CONVERSION_IN_REQUEST": "The request contains duplicate click conversions.",
    "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE": "New integrations for uploading click conversions "
    "should use the Data Manager API.",
    "NO_CONVERSION_ACTION_FOUND": "The conversion action specified in the upload request cannot be found.",
    "GBRAID_WBRAID_BOTH_SET": "Only one of gbraid and wbraid may be set.",
    "INVALID_USER_IDENTIFIER": "The user identifier is not a valid SHA-256 hash.",
    "INTERNAL_ERROR": "An internal error has occurred.",
    "TRANSIENT_ERROR": "The operation failed due to a transient error. Retry the request.",
    "CONCURRENT_MODIFICATION": "Multiple requests tried to modify the same resource at once.",
    "TOO_MANY_CONVERSIONS_IN_REQUEST": "Upload fewer than 2001 events in a single request.",
    "INVALID_JOB_ID": "The job ID provided is not in the allowed range [1, 2^31).",
}

_ADS_DT_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?([+-])(\d{2}):(\d{2})$")
_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_ACTION_RE = re.compile(r"^customers/(\d+)/conversionActions/(\d+)$")
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_DM_ACCOUNT_TYPES = frozenset(
    {
        "GOOGLE_ADS",
        "DISPLAY_VIDEO_PARTNER",
        "DISPLAY_VIDEO_ADVERTISER",
        "DATA_PARTNER",
        "GOOGLE_ANALYTICS_PROPERTY",
        "GOOGLE_AD_MANAGER_AUDIENCE_LINK",
        "FLOODLIGHT_CONFIG",
    }
)
_DM_CONSENT = frozenset({"CONSENT_GRANTED", "CONSENT_DENIED", "CONSENT_STATUS_UNSPECIFIED"})
_CLICK_FIELDS = ("gclid", "gbraid", "wbraid")


def _g(d: Mapping[str, Any], camel: str, snake: str) -> Any:
    """Proto-JSON parsing accepts both lowerCamelCase and snake_case field names."""
    v = d.get(camel)
    return d.get(snake) if v is None else v


def _ads_instant(s: str) -> float | None:
    """Epoch seconds of a Google Ads ``yyyy-mm-dd hh:mm:ss±hh:mm`` string, or None if invalid."""
    m = _ADS_DT_RE.match(s)
    if not m:
        return None
    try:
        dt = datetime.fromisoformat(s.replace(" ", "T", 1))
    except ValueError:
        return None
    return dt.timestamp()


def _rfc3339_ok(s: Any) -> bool:
    if not isinstance(s, str) or not _RFC3339_RE.match(s):
        return False
    try:
        datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError:
        return False
    return True


class EmulatorState:
    """In-memory Google. ``clock`` returns epoch seconds (inject a fake one in tests)."""

    def __init__(self, config: EmulatorConfig | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config or EmulatorConfig()
        self.clock = clock
        self.rng = random.Random(self.config.seed)
        self.tokens: dict[str, _Token] = {}
        self.reset(tokens=True)

    # ------------------------------------------------------------------ control

    def reset(self, *, tokens: bool = False) -> None:
        """Forget everything accepted and all counters (issued tokens too when ``tokens``)."""
        if tokens:
            self.tokens = {}
            self.token_requests = 0
            self.token_requests_by_client: Counter[str] = Counter()
        self.rng = random.Random(self.config.seed)
        self.accepted: list[dict[str, Any]] = []
        self.order_id_counts: Counter[str] = Counter()
        self.order_id_attempts: Counter[str] = Counter()
        self.adjustments: Counter[str] = Counter()
        self._ads_orders: set[tuple[str, str, str]] = set()
        self._ads_clicks: set[tuple[str, str, str, float]] = set()
        self._dm_txn: dict[tuple[str, str, str], int] = {}
        self._flaky_seen: set[str] = set()
        # account -> second -> count
        self.received_per_second: dict[str, Counter[int]] = {}
        self.admitted_per_second: dict[str, Counter[int]] = {}
        self._conversions_per_second: dict[str, Counter[int]] = {}
        self._daily_ops: Counter[tuple[str, int]] = Counter()
        self.responses_by_status: Counter[int] = Counter()
        self.api_requests = 0
        self.rows_received = 0
        self.dm_requests: dict[str, dict[str, Any]] = {}

    def update_config(self, patch: Mapping[str, Any]) -> EmulatorConfig:
        """Apply a partial config (validated; unknown keys raise ``msgspec.ValidationError``)."""
        merged = {**msgspec.structs.asdict(self.config), **patch}
        merged["account_rates"] = {
            k: msgspec.structs.asdict(v) if isinstance(v, AccountRate) else v
            for k, v in merged.get("account_rates", {}).items()
        }
        self.config = msgspec.convert(merged, EmulatorConfig)
        if "seed" in patch:
            self.rng = random.Random(self.config.seed)
        return self.config

    def snapshot(self, *, include_conversions: bool = True) -> dict[str, Any]:
        """Everything accepted, with per-order-id counts and per-second request counts."""

        def per_second(d: dict[str, Counter[int]]) -> dict[str, dict[str, int]]:
            return {acct: {str(s): n for s, n in sorted(c.items())} for acct, c in d.items()}

        out: dict[str, Any] = {
            "now": self.clock(),
            "accepted_count": len(self.accepted),
            "order_id_counts": dict(self.order_id_counts),
            "order_id_attempts": dict(self.order_id_attempts),
            "adjustments": dict(self.adjustments),
            "duplicate_order_ids": sorted(k for k, n in self.order_id_counts.items() if n > 1),
            "requests_per_second": per_second(self.received_per_second),
            "admitted_requests_per_second": per_second(self.admitted_per_second),
            "max_admitted_requests_per_second": {
                acct: max(c.values(), default=0) for acct, c in self.admitted_per_second.items()
            },
            "api_requests": self.api_requests,
            "rows_received": self.rows_received,
            "responses_by_status": {str(k): v for k, v in sorted(self.responses_by_status.items())},
            "token_requests": self.token_requests,
            "token_requests_by_client": dict(self.token_requests_by_client),
            "tokens_live": sum(1 for t in self.tokens.values() if t.expires_at > self.clock()),
        }
        if include_conversions:
            out["conversions"] = self.accepted
        return out

    # ------------------------------------------------------------------ helpers

    def _request_id(self) -> str:
        # 22 url-safe characters, like Google's request ids; seeded for reproducibility.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        bits = self.rng.getrandbits(132)
        return "".join(alphabet[(bits >> (6 * i)) & 63] for i in range(22))

    def _latency(self) -> float:
        c = self.config
        ms = c.latency_ms
        if c.latency_jitter_ms > 0:
            ms += self.rng.random() * c.latency_jitter_ms
        return max(0.0, ms / 1000.0)

    def _rates(self, account: str) -> tuple[int | None, int | None]:
        o = self.config.account_rates.get(account)
        rps = o.rps if o is not None and o.rps is not None else self.config.rate_rps
        cpm = o.cpm if o is not None and o.cpm is not None else self.config.rate_cpm
        return rps, cpm

    def _rate_check(self, account: str, n_rows: int) -> tuple[str, float, str] | None:
        """Admit a request or say why not: (quota enum, retry delay s, rate name).

        Requests/s uses fixed 1-second windows (``floor(clock)``), so an admitted-count per
        window never exceeds the limit; conversions/min is a sliding 60 s window of whole
        seconds. Rejected requests do not consume quota.
        """
        now = self.clock()
        sec = int(now // 1)
        self.received_per_second.setdefault(account, Counter())[sec] += 1
        throttle = self.config.throttled_accounts.get(account)
        if throttle is not None:
            return "RESOURCE_TEMPORARILY_EXHAUSTED", throttle, "Throttled account"
        rps, cpm = self._rates(account)
        admitted = self.admitted_per_second.setdefault(account, Counter())
        if rps is not None and admitted[sec] >= rps:
            return (
                "RESOURCE_TEMPORARILY_EXHAUSTED",
                max(1.0, sec + 1 - now),
                "Requests per second per account",
            )
        convs = self._conversions_per_second.setdefault(account, Counter())
        if cpm is not None:
            if len(convs) > 120:
                for s in [s for s in convs if s <= sec - 60]:
                    del convs[s]
            window = [(s, convs[s]) for s in range(sec - 59, sec + 1) if convs.get(s)]
            used = sum(n for _, n in window)
            if used + n_rows > cpm:
                # Earliest moment enough conversions leave the window.
                freed, until = 0, sec + 60
                for s, n in window:
                    freed += n
                    if used - freed + n_rows <= cpm:
                        until = s + 60
                        break
                return (
                    "RESOURCE_TEMPORARILY_EXHAUSTED",
                    max(1.0, until - now),
                    "Conversions per minute per account",
                )
        limit = self.config.daily_ops_limit
        day = int(now // 86400)
        if limit is not None and self._daily_ops[(account, day)] >= limit:
            return "RESOURCE_EXHAUSTED", max(1.0, (day + 1) * 86400 - now), "Number of operations per day"
        admitted[sec] += 1
        convs[sec] += n_rows
        self._daily_ops[(account, day)] += 1
        return None

    def _auth(self, authorization: str | None) -> tuple[str, _Token | None]:
        """('', token) when valid, else (error enum name, None)."""
        if not authorization or not authorization.startswith("Bearer "):
            return "OAUTH_TOKEN_HEADER_INVALID", None
        tok = self.tokens.get(authorization[7:].strip())
        if tok is None:
            return "OAUTH_TOKEN_INVALID", None
        if tok.expires_at <= self.clock():
            return "OAUTH_TOKEN_EXPIRED", None
        return "", tok

    def _reply(self, status: int, payload: Any, request_id: str | None = None, *, api: bool = True) -> EmuReply:
        if api:
            self.responses_by_status[status] += 1
        headers = {"content-type": _JSON}
        if request_id:
            headers["request-id"] = request_id
        return EmuReply(status, payload, headers, self._latency() if api else 0.0)

    # ------------------------------------------------------------------ OAuth

    def handle_token(self, body: bytes) -> EmuReply:
        """``POST /token`` (form-encoded refresh-token grant, RFC 6749 errors)."""
        self.token_requests += 1
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        cfg = self.config
        self.token_requests_by_client[form.get("client_id", "")] += 1
        if cfg.token_outage:
            return self._reply(503, {"error": "temporarily_unavailable"}, api=False)
        if form.get("grant_type") != "refresh_token":
            return self._reply(
                400,
                {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."},
                api=False,
            )
        if (cfg.client_id is not None and form.get("client_id") != cfg.client_id) or (
            cfg.client_secret is not None and form.get("client_secret") != cfg.client_secret
        ):
            return self._reply(
                401,
                {"error": "invalid_client", "error_description": "The OAuth client was not found."},
                api=False,
            )
        rt = form.get("refresh_token", "")
        if not rt:
            return self._reply(
                400,
                {
                    "error": "invalid_request",
                    "error_description": "Missing required parameter: refresh_token",
                },
                api=False,
            )
        if rt in cfg.invalid_grant_tokens or (cfg.refresh_tokens and rt not in cfg.refresh_tokens):
            return self._reply(
                400,
                {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
                api=False,
            )
        scopes = (ADS_SCOPE,) if rt in cfg.ads_only_refresh_tokens else (ADS_SCOPE, DM_SCOPE)
        token = f"ya29.emu{self.rng.getrandbits(128):032x}"
        self.tokens[token] = _Token(self.clock() + cfg.token_ttl_s, scopes)
        return self._reply(
            200,
            {
                "access_token": token,
                "expires_in": cfg.token_ttl_s,
                "scope": " ".join(scopes),
                "token_type": "Bearer",
            },
            api=False,
        )

    # ------------------------------------------------------------------ Google Ads API

    def _ads_failure(self, version: str, errors: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
        return {
            "@type": f"type.googleapis.com/google.ads.googleads.{version}.errors.GoogleAdsFailure",
            "errors": errors,
            "requestId": request_id,
        }

    def _ads_error(
        self,
        version: str,
        status: int,
        status_name: str,
        message: str,
        errors: list[dict[str, Any]],
    ) -> EmuReply:
        rid = self._request_id()
        payload = {
            "error": {
                "code": status,
                "message": message,
                "status": status_name,
                "details": [self._ads_failure(version, errors, rid)],
            }
        }
        return self._reply(status, payload, rid)

    @staticmethod
    def _err(
        key: str,
        name: str,
        message: str | None = None,
        *,
        index: int | None = None,
        field_name: str | None = None,
        trigger: str | None = None,
    ) -> dict[str, Any]:
        e: dict[str, Any] = {"errorCode": {key: name}, "message": message or _MESSAGES.get(name, name)}
        if trigger is not None:
            e["trigger"] = {"stringValue": trigger}
        if index is not None:
            path: list[dict[str, Any]] = [{"fieldName": "conversions", "index": index}]
            if field_name:
                path.append({"fieldName": field_name})
            e["location"] = {"fieldPathElements": path}
        return e

    def _status_error(self, status: int, status_name: str, message: str) -> EmuReply:
        # Canonical errors raised before the Ads layer (outage, injected faults) carry no
        # GoogleAdsFailure, like Google's front end.
        rid = self._request_id()
        return self._reply(status, {"error": {"code": status, "message": message, "status": status_name}}, rid)

    def _injected_failure(self) -> EmuReply | None:
        c = self.config
        if c.outage:
            return self._status_error(503, "UNAVAILABLE", "The service is currently unavailable.")
        if c.failure_rate > 0 and self.rng.random() < c.failure_rate:
            name = {500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(c.failure_status, "INTERNAL")
            return self._status_error(c.failure_status, name, "Injected failure.")
        return None

    def handle_ads_upload(
        self,
        version: str,
        customer_path: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> EmuReply:
        """``POST /{version}/customers/{customerId}:uploadClickConversions``."""
        cfg = self.config
        customer, sep, method = customer_path.partition(":")
        if version not in cfg.api_versions and version not in cfg.retired_versions:
            return EmuReply(404, _HTML_404, {"content-type": "text/html; charset=UTF-8"}, html=True)
        if not sep or method != "uploadClickConversions":
            return EmuReply(404, _HTML_404, {"content-type": "text/html; charset=UTF-8"}, html=True)
        self.api_requests += 1
        if version in cfg.retired_versions:
            return self._ads_error(
                version,
                400,
                "INVALID_ARGUMENT",
                f"Version {version} is deprecated.",
                [self._err("requestError", "UNSUPPORTED_VERSION", f"Version {version} is deprecated.")],
            )
        why, _tok = self._auth(headers.get("authorization"))
        if why:
            return self._ads_error(
                version,
                401,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                [self._err("authenticationError", why, "Authentication of the request failed.")],
            )
        if (fail := self._injected_failure()) is not None:
            return fail
        if not customer.isdigit():
            return self._ads_error(
                version,
                400,
                "INVALID_ARGUMENT",
                "Invalid customer ID.",
                [self._err("requestError", "INVALID_CUSTOMER_ID", f"Invalid customer ID '{customer}'.")],
            )
        login = headers.get("login-customer-id")
        if login is not None and not login.isdigit():
            return self._ads_error(
                version,
                400,
                "INVALID_ARGUMENT",
                "Invalid login-customer-id header.",
                [
                    self._err(
                        "headerError",
                        "INVALID_LOGIN_CUSTOMER_ID",
                        "The login customer ID could not be validated.",
                    )
                ],
            )
        links = cfg.manager_links.get(customer)
        if links is not None and login not in links and login != customer:
            return self._ads_error(
                version,
                403,
                "PERMISSION_DENIED",
                "The caller does not have permission",
                [
                    self._err(
                        "authorizationError",
                        "USER_PERMISSION_DENIED",
                        "User doesn't have permission to access customer. Note: If you're accessing a client "
                        "customer, the manager's customer id must be set in the 'login-customer-id' header.",
                    )
                ],
            )
        not_allowlisted = customer in cfg.not_allowlisted
        if not_allowlisted and cfg.not_allowlisted_mode != "row":
            return self._ads_error(
                version,
                403,
                "PERMISSION_DENIED",
                "The caller does not have permission",
                [self._err("notAllowlistedError", "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE")],
            )
        try:
            req = msgspec.json.decode(body) if body else {}
        except msgspec.DecodeError:
            return self._status_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not isinstance(req, dict):
            return self._status_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        convs = req.get("conversions") or []
        if not isinstance(convs, list):
            return self._status_error(400, "INVALID_ARGUMENT", "Invalid value at 'conversions'.")
        self.rows_received += len(convs)
        limited = self._rate_check(customer, len(convs))
        if limited is not None:
            enum, delay, rate_name = limited
            err = self._err("quotaError", enum, f"Too many requests. Retry in {int(delay + 0.999)} seconds.")
            err["details"] = {
                "quotaErrorDetails": {
                    "rateScope": "DEVELOPER" if enum == "RESOURCE_EXHAUSTED" else "ACCOUNT",
                    "rateName": rate_name,
                    "retryDelay": f"{int(delay + 0.999)}s",
                }
            }
            return self._ads_error(
                version, 429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", [err]
            )
        if _g(req, "partialFailure", "partial_failure") is not True:
            return self._ads_error(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                [self._err("fieldError", "REQUIRED", "partial_failure must be true for this service.")],
            )
        if len(convs) > cfg.max_conversions:
            return self._ads_error(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                [self._err("conversionUploadError", "TOO_MANY_CONVERSIONS_IN_REQUEST")],
            )
        job_id = _g(req, "jobId", "job_id")
        if job_id is not None:
            try:
                jid = int(job_id)
            except (TypeError, ValueError):
                jid = 0
            if not 1 <= jid < 2**31:
                return self._ads_error(
                    version,
                    400,
                    "INVALID_ARGUMENT",
                    "Request contains an invalid argument.",
                    [self._err("conversionUploadError", "INVALID_JOB_ID")],
                )
        else:
            jid = self.rng.randint(2**31, 2**63 - 1)
        # Proto-JSON type errors reject the whole request before any row logic.
        for i, c in enumerate(convs):
            v = _g(c, "conversionValue", "conversion_value") if isinstance(c, dict) else None
            if not isinstance(c, dict) or (v is not None and (isinstance(v, bool) or not isinstance(v, int | float))):
                rid = self._request_id()
                return self._reply(
                    400,
                    {
                        "error": {
                            "code": 400,
                            "message": f"Invalid value at 'conversions[{i}].conversion_value' (TYPE_DOUBLE)",
                            "status": "INVALID_ARGUMENT",
                            "details": [
                                {
                                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                                    "fieldViolations": [
                                        {
                                            "field": f"conversions[{i}].conversion_value",
                                            "description": "Invalid value (TYPE_DOUBLE)",
                                        }
                                    ],
                                }
                            ],
                        }
                    },
                    rid,
                )
        validate_only = _g(req, "validateOnly", "validate_only") is True
        return self._ads_rows(version, customer, convs, not_allowlisted, validate_only, jid)

    def _ads_rows(
        self,
        version: str,
        customer: str,
        convs: list[dict[str, Any]],
        not_allowlisted: bool,
        validate_only: bool,
        job_id: int,
    ) -> EmuReply:
        cfg = self.config
        rid = self._request_id()
        now = self.clock()
        n = len(convs)
        errors: list[dict[str, Any] | None] = [None] * n
        # Parsed facts for rows that pass validation: (action_id, order_id, click_field, click, instant)
        parsed: list[tuple[str, str, str | None, str | None, float] | None] = [None] * n
        known_actions = cfg.conversion_actions
        row_fail_rate = cfg.row_failure_rate
        err = self._err
        for i, c in enumerate(convs):
            action = _g(c, "conversionAction", "conversion_action")
            if not action:
                errors[i] = err(
                    "fieldError",
                    "REQUIRED",
                    "The required field was not present.",
                    index=i,
                    field_name="conversion_action",
                )
                continue
            m = _ACTION_RE.match(action) if isinstance(action, str) else None
            if m is None:
                errors[i] = err(
                    "requestError",
                    "RESOURCE_NAME_MALFORMED",
                    "Resource name is malformed.",
                    index=i,
                    field_name="conversion_action",
                    trigger=str(action),
                )
                continue
            aid = m.group(2)
            if known_actions and aid not in known_actions:
                errors[i] = err(
                    "conversionUploadError",
                    "NO_CONVERSION_ACTION_FOUND",
                    index=i,
                    field_name="conversion_action",
                    trigger=action,
                )
                continue
            present = [f for f in _CLICK_FIELDS if c.get(f)]
            uids = _g(c, "userIdentifiers", "user_identifiers") or []
            if "gbraid" in present and "wbraid" in present:
                errors[i] = err("conversionUploadError", "GBRAID_WBRAID_BOTH_SET", index=i, field_name="wbraid")
                continue
            if len(present) > 1:
                errors[i] = err(
                    "fieldError",
                    "VALUE_MUST_BE_UNSET",
                    "The field's value must be unset.",
                    index=i,
                    field_name=present[1],
                )
                continue
            if not present and not uids:
                errors[i] = err(
                    "fieldError",
                    "REQUIRED",
                    "The required field was not present.",
                    index=i,
                    field_name="gclid",
                )
                continue
            dt = _g(c, "conversionDateTime", "conversion_date_time")
            if not dt:
                errors[i] = err(
                    "fieldError",
                    "REQUIRED",
                    "The required field was not present.",
                    index=i,
                    field_name="conversion_date_time",
                )
                continue
            instant = _ads_instant(dt) if isinstance(dt, str) else None
            if instant is None:
                name = (
                    "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET"
                    if not (isinstance(dt, str) and _ADS_DT_RE.match(dt))
                    else "INVALID_FIELD_VALUES_IN_DATE_TIME"
                )
                errors[i] = err(
                    "dateError",
                    name,
                    "The string date time's format should be yyyy-mm-dd hh:mm:ss+|-hh:mm.",
                    index=i,
                    field_name="conversion_date_time",
                    trigger=str(dt),
                )
                continue
            value = _g(c, "conversionValue", "conversion_value")
            currency = _g(c, "currencyCode", "currency_code")
            if value is not None and not currency:
                errors[i] = err(
                    "fieldError",
                    "REQUIRED",
                    "A currency code is required with a conversion value.",
                    index=i,
                    field_name="currency_code",
                )
                continue
            if currency is not None and not (isinstance(currency, str) and _CURRENCY_RE.match(currency)):
                errors[i] = err(
                    "currencyCodeError",
                    "UNSUPPORTED",
                    "The currency code is not supported.",
                    index=i,
                    field_name="currency_code",
                    trigger=str(currency),
                )
                continue
            if isinstance(uids, list) and len(uids) > 5:
                errors[i] = err(
                    "collectionSizeError",
                    "TOO_MANY",
                    "Too many elements.",
                    index=i,
                    field_name="user_identifiers",
                )
                continue
            bad_uid = False
            for u in uids if isinstance(uids, list) else [None]:
                vals: list[Any] = []
                if isinstance(u, dict):
                    vals = [
                        _g(u, "hashedEmail", "hashed_email"),
                        _g(u, "hashedPhoneNumber", "hashed_phone_number"),
                    ]
                    vals = [v for v in vals if v]
                if len(vals) != 1 or not (isinstance(vals[0], str) and _HEX64_RE.match(vals[0])):
                    bad_uid = True
                    break
            if bad_uid:
                errors[i] = err(
                    "conversionUploadError", "INVALID_USER_IDENTIFIER", index=i, field_name="user_identifiers"
                )
                continue
            click_field = present[0] if present else None
            click = str(c[click_field]) if click_field else None
            if not_allowlisted:
                errors[i] = err("notAllowlistedError", "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE", index=i)
                continue
            if click is not None and click_field is not None:
                rule = _prefix_rule(click)
                if rule is not None:
                    prefix, key, name, _dm = rule
                    if prefix == "UNPARSEABLE":
                        name = "UNPARSEABLE_" + click_field.upper()
                    if prefix != "FLAKY" or click not in self._flaky_seen:
                        if prefix == "FLAKY" and not validate_only:
                            self._flaky_seen.add(click)
                        errors[i] = err(key, name, index=i, field_name=click_field, trigger=click)
                        continue
            if row_fail_rate > 0 and self.rng.random() < row_fail_rate:
                errors[i] = err("internalError", "TRANSIENT_ERROR", index=i)
                continue
            order_id = _g(c, "orderId", "order_id")
            parsed[i] = (aid, str(order_id) if order_id else "", click_field, click, instant)

        # Duplicates inside this request fail every copy (none is stored).
        order_seen: Counter[tuple[str, str]] = Counter()
        click_seen: Counter[tuple[str, str, float]] = Counter()
        for p in parsed:
            if p is None:
                continue
            if p[1]:
                order_seen[(p[0], p[1])] += 1
            elif p[3] is not None:
                click_seen[(p[3], p[0], p[4])] += 1
        results: list[dict[str, Any]] = []
        for i, p in enumerate(parsed):
            c = convs[i]
            order_id_raw = _g(c, "orderId", "order_id") if isinstance(c, dict) else None
            if order_id_raw:
                self.order_id_attempts[str(order_id_raw)] += 1
            if p is None:
                results.append({})
                continue
            aid, order_id, click_field, click, instant = p
            if order_id and order_seen[(aid, order_id)] > 1:
                errors[i] = err(
                    "conversionUploadError",
                    "DUPLICATE_ORDER_ID",
                    index=i,
                    field_name="order_id",
                    trigger=order_id,
                )
            elif not order_id and click is not None and click_seen[(click, aid, instant)] > 1:
                errors[i] = err("conversionUploadError", "DUPLICATE_CLICK_CONVERSION_IN_REQUEST", index=i)
            elif order_id and (customer, aid, order_id) in self._ads_orders:
                errors[i] = err(
                    "conversionUploadError",
                    "ORDER_ID_ALREADY_IN_USE",
                    index=i,
                    field_name="order_id",
                    trigger=order_id,
                )
            elif not order_id and click is not None and (customer, click, aid, instant) in self._ads_clicks:
                # Click + time dedupe applies to conversions without an order id (reference §1.8).
                errors[i] = err("conversionUploadError", "CLICK_CONVERSION_ALREADY_EXISTS", index=i)
            if errors[i] is not None:
                results.append({})
                continue
            action = _g(c, "conversionAction", "conversion_action")
            dt = _g(c, "conversionDateTime", "conversion_date_time")
            res: dict[str, Any] = {"conversionAction": action, "conversionDateTime": dt}
            if click_field:
                res[click_field] = click
            uids = _g(c, "userIdentifiers", "user_identifiers")
            if uids:
                res["userIdentifiers"] = uids
            results.append(res)
            if validate_only:
                continue
            if order_id:
                self._ads_orders.add((customer, aid, order_id))
                self.order_id_counts[order_id] += 1
            if click is not None:
                self._ads_clicks.add((customer, click, aid, instant))
            self.accepted.append(
                {
                    "api": "google_ads",
                    "account": customer,
                    "conversion_action": aid,
                    "order_id": order_id or None,
                    "click_id_type": click_field,
                    "click_id": click,
                    "conversion_date_time": dt,
                    "value": _g(c, "conversionValue", "conversion_value"),
                    "currency": _g(c, "currencyCode", "currency_code"),
                    "user_identifiers": len(uids) if isinstance(uids, list) else 0,
                    "consent": c.get("consent"),
                    "request_id": rid,
                    "received_at": now,
                }
            )

        payload: dict[str, Any] = {"jobId": str(job_id)}
        if not validate_only:
            payload["results"] = results
        failed = [e for e in errors if e is not None]
        if failed:
            first = failed[0]
            path = first.get("location", {}).get("fieldPathElements", [])
            where = ".".join(f"{p['fieldName']}[{p['index']}]" if "index" in p else p["fieldName"] for p in path)
            summary = f"{first['message']}, at {where}" if where else first["message"]
            if len(failed) > 1:
                summary = f"Multiple errors in \u2018details\u2019. First error: {summary}"
            payload["partialFailureError"] = {
                "code": 3,
                "message": summary,
                "details": [self._ads_failure(version, failed, rid)],
            }
        return self._reply(200, payload, rid)

    # ------------------------------------------------------------------ Data Manager API

    def _dm_error(
        self,
        status: int,
        status_name: str,
        message: str,
        reason: str,
        *,
        violations: list[dict[str, str]] | None = None,
        retry_delay_s: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> EmuReply:
        rid = self._request_id()
        details: list[dict[str, Any]] = []
        if violations:
            details.append({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations})
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "datamanager.googleapis.com",
                "metadata": metadata or {},
            }
        )
        if retry_delay_s is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{int(retry_delay_s + 0.999)}s",
                }
            )
        details.append({"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": rid})
        payload = {"error": {"code": status, "message": message, "status": status_name, "details": details}}
        return self._reply(status, payload, rid)

    def handle_dm_ingest(self, headers: Mapping[str, str], body: bytes) -> EmuReply:
        """``POST /v1/events:ingest`` (all-or-nothing validation)."""
        cfg = self.config
        self.api_requests += 1
        why, tok = self._auth(headers.get("authorization"))
        if why or tok is None:
            reason = "ACCESS_TOKEN_EXPIRED" if why == "OAUTH_TOKEN_EXPIRED" else "ACCESS_TOKEN_TYPE_UNSUPPORTED"
            if why == "OAUTH_TOKEN_HEADER_INVALID":
                reason = "CREDENTIALS_MISSING"
            return self._dm_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                reason,
            )
        if DM_SCOPE not in tok.scopes:
            return self._dm_error(
                403,
                "PERMISSION_DENIED",
                "Request had insufficient authentication scopes.",
                "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                metadata={"method": "IngestEvents"},
            )
        if (fail := self._injected_failure()) is not None:
            return fail
        try:
            req = msgspec.json.decode(body) if body else {}
        except msgspec.DecodeError:
            return self._dm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.", "INVALID_ARGUMENT")
        if not isinstance(req, dict):
            return self._dm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.", "INVALID_ARGUMENT")
        dests = req.get("destinations") or []
        events = req.get("events") or []
        if not isinstance(dests, list) or not isinstance(events, list):
            return self._dm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.", "INVALID_ARGUMENT")
        self.rows_received += len(events)
        first_dest = dests[0] if dests and isinstance(dests[0], dict) else {}
        op = _g(first_dest, "operatingAccount", "operating_account") or {}
        account = str(_g(op, "accountId", "account_id") or "") if isinstance(op, dict) else ""
        limited = self._rate_check(account, len(events))
        if limited is not None:
            enum, delay, rate_name = limited
            return self._dm_error(
                429,
                "RESOURCE_EXHAUSTED",
                f"Quota exceeded: {rate_name}.",
                "RATE_LIMIT_EXCEEDED",
                retry_delay_s=delay,
                metadata={"quota_limit": rate_name, "quota_enum": enum},
            )

        violations: list[dict[str, str]] = []

        def bad(field_path: str, reason: str, description: str) -> None:
            violations.append({"field": field_path, "description": description, "reason": reason})

        refs: dict[str, tuple[str, str]] = {}
        dest_keys: list[tuple[str, str]] = []
        if not dests:
            bad("destinations", "INVALID_ARGUMENT", "At least one destination is required.")
        if len(dests) > 10:
            bad("destinations", "TOO_MANY_DESTINATIONS", "At most 10 destinations per request.")
        for di, d in enumerate(dests[:10]):
            if not isinstance(d, dict):
                bad(f"destinations[{di}]", "INVALID_ARGUMENT", "Invalid destination.")
                continue
            op = _g(d, "operatingAccount", "operating_account") or {}
            acct = str(_g(op, "accountId", "account_id") or "") if isinstance(op, dict) else ""
            atype = _g(op, "accountType", "account_type") if isinstance(op, dict) else None
            if not acct.isdigit():
                bad(
                    f"destinations[{di}].operating_account.account_id",
                    "INVALID_ACCOUNT_ID",
                    "Invalid account id.",
                )
            if atype not in _DM_ACCOUNT_TYPES:
                bad(
                    f"destinations[{di}].operating_account.account_type",
                    "INVALID_ACCOUNT_TYPE",
                    "Invalid account type.",
                )
            pid = str(_g(d, "productDestinationId", "product_destination_id") or "")
            if not pid.isdigit():
                bad(
                    f"destinations[{di}].product_destination_id",
                    "INVALID_CONVERSION_ACTION_ID",
                    "The conversion action id is missing or invalid.",
                )
            elif cfg.conversion_actions and pid not in cfg.conversion_actions:
                bad(
                    f"destinations[{di}].product_destination_id",
                    "INVALID_CONVERSION_ACTION_ID",
                    "The conversion action was not found.",
                )
            login = _g(d, "loginAccount", "login_account")
            login_id = str(_g(login, "accountId", "account_id") or "") if isinstance(login, dict) else None
            links = cfg.manager_links.get(acct)
            if links is not None and login_id not in links and login_id != acct:
                return self._dm_error(
                    403, "PERMISSION_DENIED", "The caller does not have permission.", "PERMISSION_DENIED"
                )
            ref = str(d.get("reference") or "")
            if ref in refs:
                bad(
                    f"destinations[{di}].reference",
                    "DUPLICATE_DESTINATION_REFERENCE",
                    "Destination references must be unique.",
                )
            refs[ref] = (acct, pid)
            dest_keys.append((acct, pid))
        if not events:
            bad("events", "INVALID_ARGUMENT", "At least one event is required.")
        if len(events) > cfg.max_conversions:
            bad("events", "TOO_MANY_EVENTS", f"At most {cfg.max_conversions} events per request.")
            events = []  # do not spend time validating a request that is rejected anyway
        has_user_data = False
        encoding = req.get("encoding")
        for i, ev in enumerate(events):
            if not isinstance(ev, dict):
                bad(f"events[{i}]", "INVALID_ARGUMENT", "Invalid event.")
                continue
            if not _rfc3339_ok(_g(ev, "eventTimestamp", "event_timestamp")):
                bad(f"events[{i}].event_timestamp", "EVENT_TIME_INVALID", "Event timestamp must be RFC 3339.")
                continue
            ads = _g(ev, "adIdentifiers", "ad_identifiers")
            ud = _g(ev, "userData", "user_data")
            clicks = [f for f in _CLICK_FIELDS if isinstance(ads, dict) and ads.get(f)]
            if not clicks and not ud:
                bad(f"events[{i}]", "NO_IDENTIFIERS_PROVIDED", "The event has no identifiers.")
                continue
            if len(clicks) > 1:
                bad(
                    f"events[{i}].ad_identifiers",
                    "INVALID_FORMAT",
                    "Set only one of gclid, gbraid and wbraid.",
                )
                continue
            value = _g(ev, "conversionValue", "conversion_value")
            currency = ev.get("currency")
            if value is not None and not currency:
                bad(f"events[{i}].currency", "INVALID_CURRENCY_CODE", "A currency is required with a value.")
                continue
            if currency is not None and not (isinstance(currency, str) and _CURRENCY_RE.match(currency)):
                bad(f"events[{i}].currency", "INVALID_CURRENCY_CODE", "Invalid currency code.")
                continue
            consent = ev.get("consent")
            if isinstance(consent, dict) and any(v not in _DM_CONSENT for v in consent.values()):
                bad(
                    f"events[{i}].consent",
                    "INVALID_FORMAT",
                    "Consent must be CONSENT_GRANTED or CONSENT_DENIED.",
                )
                continue
            if ud:
                has_user_data = True
                uids = _g(ud, "userIdentifiers", "user_identifiers") if isinstance(ud, dict) else None
                if not isinstance(uids, list) or len(uids) > 10:
                    bad(f"events[{i}].user_data.user_identifiers", "INVALID_FORMAT", "1 to 10 identifiers.")
                    continue
                for u in uids:
                    v = (
                        (_g(u, "phoneNumber", "phone_number") or _g(u, "emailAddress", "email_address"))
                        if isinstance(u, dict)
                        else None
                    )
                    if encoding == "HEX" and not (isinstance(v, str) and _HEX64_RE.match(v)):
                        bad(
                            f"events[{i}].user_data.user_identifiers",
                            "INVALID_SHA256_FORMAT",
                            "Identifier is not a hex SHA-256 hash.",
                        )
                        break
            drefs = _g(ev, "destinationReferences", "destination_references")
            if drefs and any(r not in refs for r in drefs):
                bad(
                    f"events[{i}].destination_references",
                    "DESTINATION_REFERENCE_NOT_FOUND",
                    "Unknown destination reference.",
                )
        if has_user_data and encoding not in ("HEX", "BASE64"):
            bad("encoding", "INVALID_ENCODING", "encoding is required when user data is present.")
        if violations:
            first = violations[0]
            return self._dm_error(
                400,
                "INVALID_ARGUMENT",
                f"Request contains an invalid argument: {first['field']}.",
                first["reason"],
                violations=violations,
            )

        validate_only = _g(req, "validateOnly", "validate_only") is True
        rid = self._request_id()
        now = self.clock()
        per_dest_errors: list[Counter[str]] = [Counter() for _ in dest_keys]
        per_dest_ok = [0] * len(dest_keys)
        ref_list = list(refs)
        for ev in events:
            drefs = _g(ev, "destinationReferences", "destination_references")
            targets = [ref_list.index(r) for r in drefs] if drefs else range(len(dest_keys))
            ads = _g(ev, "adIdentifiers", "ad_identifiers") or {}
            click_field = next((f for f in _CLICK_FIELDS if ads.get(f)), None)
            click = str(ads[click_field]) if click_field else None
            txn = _g(ev, "transactionId", "transaction_id")
            txn = str(txn) if txn else None
            if txn and not validate_only:
                self.order_id_attempts[txn] += 1
            rule = _prefix_rule(click) if click else None
            for di in targets:
                acct, pid = dest_keys[di]
                if rule is not None and rule[3] is not None:
                    per_dest_errors[di][rule[3]] += 1
                    continue
                per_dest_ok[di] += 1
                if validate_only:
                    continue
                value = _g(ev, "conversionValue", "conversion_value")
                key = (acct, pid, txn) if txn else None
                if key is not None and key in self._dm_txn:
                    # Same transaction id and destination: an adjustment, not an error.
                    rec = self.accepted[self._dm_txn[key]]
                    rec["value"] = value
                    rec["currency"] = ev.get("currency")
                    rec["adjusted_at"] = now
                    self.adjustments[txn or ""] += 1
                    continue
                if key is not None:
                    self._dm_txn[key] = len(self.accepted)
                    self.order_id_counts[txn or ""] += 1
                self.accepted.append(
                    {
                        "api": "data_manager",
                        "account": acct,
                        "conversion_action": pid,
                        "order_id": txn,
                        "click_id_type": click_field,
                        "click_id": click,
                        "conversion_date_time": _g(ev, "eventTimestamp", "event_timestamp"),
                        "value": value,
                        "currency": ev.get("currency"),
                        "user_identifiers": len(
                            _g(_g(ev, "userData", "user_data") or {}, "userIdentifiers", "user_identifiers") or []
                        ),
                        "consent": ev.get("consent"),
                        "request_id": rid,
                        "received_at": now,
                    }
                )
        if not validate_only:
            self.dm_requests[rid] = {
                "created_at": now,
                "destinations": dests,
                "ok": per_dest_ok,
                "errors": per_dest_errors,
            }
        return self._reply(200, {"requestId": rid}, rid)

    def handle_dm_request_status(self, headers: Mapping[str, str], request_id: str | None) -> EmuReply:
        """``GET /v1/requestStatus:retrieve?requestId=...``."""
        why, _tok = self._auth(headers.get("authorization"))
        if why:
            return self._dm_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
                "CREDENTIALS_MISSING",
            )
        rec = self.dm_requests.get(request_id or "")
        if rec is None:
            return self._dm_error(
                400,
                "INVALID_ARGUMENT",
                "The request id is invalid.",
                "INVALID_REQUEST_ID",
                violations=[
                    {
                        "field": "request_id",
                        "description": "Unknown request id.",
                        "reason": "INVALID_REQUEST_ID",
                    }
                ],
            )
        processing = self.clock() - rec["created_at"] < self.config.dm_processing_s
        out = []
        for di, dest in enumerate(rec["destinations"]):
            errs: Counter[str] = rec["errors"][di]
            ok: int = rec["ok"][di]
            if processing:
                status = "PROCESSING"
            elif not errs:
                status = "SUCCESS"
            elif ok:
                status = "PARTIAL_SUCCESS"
            else:
                status = "FAILED"
            entry: dict[str, Any] = {
                "destination": dest,
                "requestStatus": status,
                "eventsIngestionStatus": {"recordCount": str(ok + sum(errs.values()))},
            }
            if errs and not processing:
                entry["errorInfo"] = {
                    "errorCounts": [{"recordCount": str(n), "reason": r} for r, n in sorted(errs.items())]
                }
            out.append(entry)
        return self._reply(200, {"requestStatusPerDestination": out}, None)


def _prefix_rule(click: str) -> tuple[str, str, str, str | None] | None:
    # Cheap pre-check: every prefix is upper-case letters, real click ids rarely are.
    if not click[:1].isupper():
        return None
    for rule in ROW_ERROR_PREFIXES:
        if click.startswith(rule[0]):
            return rule
    return None


_HTML_404 = (
    "<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>Error 404 (Not Found)!!1</title>"
    "<p><b>404.</b> <ins>That\u2019s an error.</ins><p>The requested URL was not found on this server. "
    "<ins>That\u2019s all we know.</ins></html>"
)
