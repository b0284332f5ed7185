"""The emulator's shared core: its knobs, its state, and what every Google API shares
(clock, seeded randomness, request ids, latency, per-account rate limits, bearer tokens,
injected faults, the click-id prefixes that choose row errors).

The three APIs are mixins over this core, one module each: ``oauth.py`` (token endpoint),
``ads.py`` (Google Ads API), ``data_manager.py`` (Data Manager API); ``state.py`` puts them
together. Handlers are synchronous methods that take the parsed request and return an
:class:`EmuReply`; the ASGI app only decodes, sleeps the latency and encodes, so every handler
runs atomically on the event loop (no locks).

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
from typing import Any

import msgspec

__all__ = [
    "ADS_SCOPE",
    "CLICK_FIELDS",
    "CURRENCY_RE",
    "DM_SCOPE",
    "HEX64_RE",
    "HTML_404",
    "ROW_ERROR_PREFIXES",
    "AccountRate",
    "EmuReply",
    "EmulatorConfig",
    "EmulatorCore",
    "Token",
    "get_either",
    "prefix_rule",
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
    #: Customer ids that have not turned on enhanced conversions for leads: a conversion with user
    #: identifiers and no click id fails CUSTOMER_NOT_ENABLED_ENHANCED_CONVERSIONS_FOR_LEADS.
    ec_leads_disabled: list[str] = []
    #: Customer ids that have not accepted the customer data terms: any conversion with user
    #: identifiers fails CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS.
    data_terms_not_accepted: list[str] = []
    #: An adjustment of a conversion that happened less recently than this fails
    #: TOO_RECENT_CONVERSION (Google: at least 24 hours).
    adjustment_min_age_s: float = 24 * 3600.0
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
class Token:
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

HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
CLICK_FIELDS = ("gclid", "gbraid", "wbraid")


def get_either(d: Mapping[str, Any], camel: str, snake: str) -> Any:
    """Proto-JSON parsing accepts both lowerCamelCase and snake_case field names."""
    v = d.get(camel)
    return d.get(snake) if v is None else v


def prefix_rule(click: str) -> tuple[str, str, str, str | None] | None:
    """The row error a click id's prefix asks for, if any (see the module docstring)."""
    # Cheap pre-check: every prefix is upper-case letters, real click ids rarely are.
    if not click[:1].isupper():
        return None
    for rule in ROW_ERROR_PREFIXES:
        if click.startswith(rule[0]):
            return rule
    return None


HTML_404 = (
    "<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>Error 404 (Not Found)!!1</title>"
    "<p><b>404.</b> <ins>That\u2019s an error.</ins><p>The requested URL was not found on this server. "
    "<ins>That\u2019s all we know.</ins></html>"
)


class EmulatorCore:
    """In-memory Google: knobs, state and shared helpers. ``clock`` returns epoch seconds."""

    def __init__(self, config: EmulatorConfig | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config or EmulatorConfig()
        self.clock = clock
        self.rng = random.Random(self.config.seed)
        self.tokens: dict[str, Token] = {}
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
        #: (customer, action, order id) -> index in ``accepted`` and the conversion's instant
        self._ads_order_rows: dict[tuple[str, str, str], tuple[int, float]] = {}
        #: (customer, action, order id) -> adjustment instants applied, and whether retracted
        self._ads_adjusted: dict[tuple[str, str, str], list[float]] = {}
        self._ads_retracted: set[tuple[str, str, str]] = set()
        #: every adjustment applied, in order, for inspection (``/_emulator/state``)
        self.adjustment_log: list[dict[str, Any]] = []
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
            "adjustment_log": list(self.adjustment_log),
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

    def _auth(self, authorization: str | None) -> tuple[str, Token | None]:
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
