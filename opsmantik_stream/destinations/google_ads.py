"""Google Ads API ``ConversionUploadService.UploadClickConversions`` REST client.

Also holds the mapping helpers and the chunking/authorization base shared with the Data
Manager client (``data_manager.py``), so both destinations validate rows the same way.
Wire details: reference/google-apis.md §1.
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

from .classify import classify
from .oauth import OAuthConfigError, OAuthError, TokenProvider
from .types import (
    BeforeRequest,
    Classification,
    Conversion,
    Destination,
    ErrorCategory,
    GoogleCredentials,
    OutcomeKind,
    RowOutcome,
    UploadClient,
    UploadResult,
)

__all__ = [
    "DEFAULT_ADS_API_VERSION",
    "DEFAULT_ADS_BASE_URL",
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "GoogleAdsClient",
    "action_id",
    "build_ads_conversion",
    "currency_exponent",
    "format_ads_datetime",
    "format_rfc3339",
    "hash_phone_e164",
    "minor_to_major",
    "normalize_e164",
    "parse_duration",
    "pick_click_id",
]

DEFAULT_ADS_BASE_URL = "https://googleads.googleapis.com"
DEFAULT_ADS_API_VERSION = "v26"
DEFAULT_CHUNK_SIZE = 200
#: Google rejects more than 2,000 conversions (or events) in one request.
MAX_CHUNK_SIZE = 2000
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)

# ISO 4217 minor-unit exponents that differ from the default of 2.
_CURRENCY_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        (
            "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG",
            "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
        ),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4,
    "UYW": 4,
}  # fmt: skip

_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
_SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_ACTION_RE = re.compile(r"^customers/(\d+)/conversionActions/(\d+)$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


# --------------------------------------------------------------------------- mapping helpers


def currency_exponent(currency: str) -> int:
    """ISO 4217 minor-unit exponent: JPY 0, KWD/BHD 3, most currencies 2."""
    return _CURRENCY_EXPONENTS.get(currency.upper(), 2)


def minor_to_major(value_minor: int, currency: str) -> float:
    """Convert minor units (cents) to the major-unit double Google expects."""
    exp = currency_exponent(currency)
    return round(value_minor / (10**exp), exp)


def format_ads_datetime(dt: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS+00:00`` in UTC, as Google Ads requires (no ``T``, no ``Z``).

    Raises ``ValueError`` for a naive datetime: guessing a timezone would shift conversions.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("conversion_time must be timezone-aware")
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00:00")


def format_rfc3339(dt: datetime) -> str:
    """RFC 3339 UTC timestamp with second precision (``2026-11-02T13:05:09Z``)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("conversion_time must be timezone-aware")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pick_click_id(conv: Conversion) -> tuple[str, str] | None:
    """The single click id to send as ``(field, value)``: gclid > wbraid > gbraid."""
    for name, value in (("gclid", conv.gclid), ("wbraid", conv.wbraid), ("gbraid", conv.gbraid)):
        if value is not None and value.strip():
            return name, value.strip()
    return None


def normalize_e164(phone: str) -> str | None:
    """Strip formatting from a phone number already in international form; ``None`` if the
    result is not E.164 (we never guess a country code)."""
    p = re.sub(r"[\s\-().]", "", phone)
    if p.startswith("00"):
        p = "+" + p[2:]
    return p if _E164_RE.match(p) else None


def hash_phone_e164(phone: str) -> str | None:
    """Lowercase hex SHA-256 of the E.164 phone number, or ``None`` if it is not E.164."""
    normalized = normalize_e164(phone)
    if normalized is None:
        return None
    return hashlib.sha256(normalized.encode("ascii")).hexdigest()


def _phone_hash(conv: Conversion) -> str | None:
    if conv.phone_sha256:
        h = conv.phone_sha256.strip().lower()
        return h if _SHA256_HEX_RE.match(h) else None
    if conv.phone_e164:
        return hash_phone_e164(conv.phone_e164)
    return None


def action_id(action: str) -> str | None:
    """Numeric conversion action id from a resource name or a bare id."""
    action = action.strip()
    if action.isdigit():
        return action
    m = _ACTION_RE.match(action)
    return m.group(2) if m else None


def _digits(account: str | None) -> str | None:
    if account is None:
        return None
    a = account.replace("-", "").strip()
    return a if a.isdigit() else None


def parse_duration(value: Any) -> float | None:
    """Parse a protobuf Duration JSON string (``"40591s"``, ``"1.5s"``) to seconds."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1))
    if isinstance(value, Mapping):
        # Some clients render Duration as {"seconds": "40", "nanos": 0}.
        try:
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            return None
    return None


def _get(d: Mapping[str, Any], camel: str, snake: str) -> Any:
    """Read a key in either proto-JSON casing (Google emits camelCase; mocks often snake)."""
    v = d.get(camel)
    return d.get(snake) if v is None else v


def build_ads_conversion(conv: Conversion, customer_id: str, default_action: str) -> dict[str, Any]:
    """Map one validated row to a lowerCamelCase ``ClickConversion`` dict."""
    click = pick_click_id(conv)
    assert click is not None  # validated by the caller
    action = (conv.conversion_action or default_action).strip()
    aid = action_id(action)
    out: dict[str, Any] = {
        click[0]: click[1],
        "conversionAction": f"customers/{customer_id}/conversionActions/{aid}",
        "conversionDateTime": format_ads_datetime(conv.conversion_time),
        "conversionValue": minor_to_major(conv.value_minor, conv.currency),
        "currencyCode": conv.currency.upper(),
        "orderId": conv.order_id,
    }
    phone = _phone_hash(conv)
    if phone is not None:
        out["userIdentifiers"] = [{"hashedPhoneNumber": phone}]
    if conv.ad_user_data_consent is not None:
        # Ads upload honours only adUserData (adPersonalization is for the user-data services).
        out["consent"] = {"adUserData": "GRANTED" if conv.ad_user_data_consent else "DENIED"}
    return out


# --------------------------------------------------------------------------- shared base

_SEVERITY = {
    OutcomeKind.COMPLETED: 0,
    OutcomeKind.ALREADY_EXISTS: 1,
    OutcomeKind.RETRY: 2,
    OutcomeKind.RETRY_AFTER_6H: 3,
    OutcomeKind.SPLIT_BATCH: 4,
    OutcomeKind.FAILED: 5,
    OutcomeKind.BLOCKED: 6,
    OutcomeKind.DEFERRED: 7,
}


@dataclass(slots=True)
class _Verdict:
    """Classification of one row plus the Google code and message that produced it."""

    cls: Classification
    code: str | None = None
    message: str | None = None

    def worse_than(self, other: _Verdict) -> bool:
        return _SEVERITY[self.cls.kind] > _SEVERITY[other.cls.kind]


_OK = _Verdict(Classification(OutcomeKind.COMPLETED))


@dataclass(slots=True)
class _Reply:
    status: int
    body: Any
    request_id: str | None
    retry_after_s: float | None


@dataclass(slots=True)
class _ChunkResult:
    """Per-row verdicts of one request, plus the whole-request failure if there was one."""

    verdicts: list[_Verdict]
    http_status: int
    request_id: str | None
    whole: _Verdict | None = None


def _verdict(status: int, code: str | None, message: str | None, delay: float | None = None) -> _Verdict:
    return _Verdict(classify(status, code, delay), code, message)


def _deferred(hold_s: float) -> _Verdict:
    return _Verdict(
        Classification(OutcomeKind.DEFERRED, ErrorCategory.RATE_LIMIT, max(0.0, hold_s)),
        "ACCOUNT_PAUSED",
        "not sent: Google asked to pause this account; no attempt spent",
    )


def _request_id_from_headers(headers: httpx.Headers) -> str | None:
    for name in ("request-id", "x-request-id", "x-goog-request-id"):
        v = headers.get(name)
        if v:
            return v
    return None


class _GoogleClientBase(UploadClient):
    """Row validation, chunking, OAuth and transport errors shared by both destinations."""

    destination: Destination
    default_base_url: str

    def __init__(
        self,
        http: httpx.AsyncClient | None = None,
        *,
        tokens: TokenProvider | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: httpx.Timeout | None = None,
        base_url: str | None = None,
    ) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in [1, {MAX_CHUNK_SIZE}]")
        self._timeout = timeout or DEFAULT_TIMEOUT
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=self._timeout)
        self.tokens = tokens or TokenProvider(self._http, timeout=self._timeout)
        self.chunk_size = chunk_size
        self._base_url = base_url

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> _GoogleClientBase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def base_url(self) -> str:
        """The API root this client sends to: the deployment's setting (never tenant data)."""
        return (self._base_url or self.default_base_url).rstrip("/")

    # -- validation ---------------------------------------------------------------------

    def _check_credentials(self, creds: GoogleCredentials) -> _Verdict | None:
        if _digits(creds.customer_id) is None:
            return _verdict(0, "INVALID_CUSTOMER_ID", "customer_id must be digits (dashes allowed)")
        if creds.login_customer_id and _digits(creds.login_customer_id) is None:
            return _verdict(0, "INVALID_LOGIN_CUSTOMER_ID", "login_customer_id must be digits")
        return None

    @staticmethod
    def _check_row(conv: Conversion, default_action: str) -> _Verdict | None:
        """Reject rows Google would reject anyway, without spending a request on them."""
        action = (conv.conversion_action or default_action or "").strip()
        if not action:
            return _verdict(0, "MISSING_CONVERSION_ACTION", "no conversion action in credentials or row")
        if action_id(action) is None:
            return _verdict(0, "INVALID_CONVERSION_ACTION", "conversion action is not an id or resource name")
        if pick_click_id(conv) is None:
            return _verdict(200, "MISSING_CLICK_ID", "row has no gclid, wbraid or gbraid")
        if not conv.order_id or not conv.order_id.strip():
            return _verdict(200, "MISSING_ORDER_ID", "order id is required for idempotent uploads")
        t = conv.conversion_time
        if not isinstance(t, datetime) or t.tzinfo is None or t.utcoffset() is None:
            return _verdict(200, "INVALID_CONVERSION_TIME", "conversion_time must be a timezone-aware datetime")
        if not conv.currency or not _CURRENCY_RE.match(conv.currency.upper()):
            return _verdict(200, "INVALID_CURRENCY", "currency must be an ISO 4217 code")
        if conv.value_minor < 0:
            return _verdict(200, "INVALID_VALUE", "value_minor must not be negative")
        return None

    # -- upload loop --------------------------------------------------------------------

    async def upload(
        self,
        creds: GoogleCredentials,
        conversions: Sequence[Conversion],
        *,
        before_request: BeforeRequest | None = None,
    ) -> UploadResult:
        """Upload ``conversions`` in requests of at most ``chunk_size`` rows, one after another.

        Every chunk gets its own outcome (a failed chunk does not touch the others). Rows
        that cannot be valid are answered without a request; if no row is valid, neither the
        API nor the token endpoint is called. ``before_request(n)`` is awaited before each API
        request (e.g. a token bucket). Never raises for Google or network errors.
        """
        result = UploadResult(destination=self.destination, rows=[])
        verdicts: list[_Verdict | None] = [None] * len(conversions)
        meta: list[tuple[str | None, int | None]] = [(None, None)] * len(conversions)

        cred_problem = self._check_credentials(creds)
        if cred_problem is not None:
            verdicts = [cred_problem] * len(conversions)
            self._note_whole(result, cred_problem)
        else:
            valid: list[int] = []
            for i, conv in enumerate(conversions):
                problem = self._check_row(conv, creds.conversion_action)
                if problem is None:
                    valid.append(i)
                else:
                    verdicts[i] = problem
            # Rows are grouped by chunk key (one destination per request for Data Manager)
            # while keeping input order inside each group.
            groups: dict[str, list[int]] = {}
            for i in valid:
                groups.setdefault(self._chunk_key(conversions[i], creds), []).append(i)
            chunks = [
                g[start : start + self.chunk_size]
                for g in groups.values()
                for start in range(0, len(g), self.chunk_size)
            ]
            blocked: _Verdict | None = None
            for idx in chunks:
                if blocked is not None:
                    # The account is blocked (auth/config) or paused: do not send its other chunks.
                    for i in idx:
                        verdicts[i] = blocked
                    continue
                chunk = [conversions[i] for i in idx]
                if before_request is not None:
                    hold_s = await before_request(len(chunk))
                    if hold_s is not None:
                        blocked = _deferred(hold_s)
                        for i in idx:
                            verdicts[i] = blocked
                        continue
                cr = await self._send_chunk(creds, chunk, result)
                if cr.whole is not None and cr.whole.cls.kind is OutcomeKind.BLOCKED:
                    blocked = cr.whole
                for pos, i in enumerate(idx):
                    verdicts[i] = cr.verdicts[pos]
                    meta[i] = (cr.request_id, cr.http_status)
                if cr.whole is not None:
                    self._note_whole(result, cr.whole)

        for i, conv in enumerate(conversions):
            v = verdicts[i] or _OK
            rid, status = meta[i]
            result.rows.append(
                RowOutcome(
                    queue_id=conv.queue_id,
                    index=i,
                    kind=v.cls.kind,
                    error_code=v.code,
                    error_category=v.cls.category,
                    message=v.message,
                    retry_delay_s=v.cls.retry_delay_s,
                    request_id=rid,
                    http_status=status,
                )
            )
        return result

    @staticmethod
    def _note_whole(result: UploadResult, v: _Verdict) -> None:
        if result.error_code is None and result.error_category is None:
            result.error_code = v.code
            result.error_category = v.cls.category
            result.message = v.message
            result.retry_delay_s = v.cls.retry_delay_s

    async def _send_chunk(
        self, creds: GoogleCredentials, chunk: Sequence[Conversion], result: UploadResult
    ) -> _ChunkResult:
        url, content, headers = self._build_request(creds, chunk)
        reply = await self._post(creds, url, content, headers, result)
        if isinstance(reply, _Verdict):
            return _ChunkResult([reply] * len(chunk), 0, None, reply)
        cr = self._parse_reply(reply, len(chunk))
        result.http_status = reply.status
        result.request_id = cr.request_id
        if cr.request_id:
            result.request_ids.append(cr.request_id)
        return cr

    async def _post(
        self,
        creds: GoogleCredentials,
        url: str,
        content: bytes,
        headers: dict[str, str],
        result: UploadResult,
    ) -> _Reply | _Verdict:
        """POST with a Bearer token; on 401 refresh the token once and resend (a 401 means
        nothing was processed, so resending is safe)."""
        for attempt in range(2):
            try:
                token = await self.tokens.get_token(creds)
            except OAuthConfigError as exc:
                # Always an account problem (revoked grant, wrong client): never retried.
                return _Verdict(Classification(OutcomeKind.BLOCKED, ErrorCategory.AUTH), exc.code, exc.message)
            except OAuthError as exc:
                return _Verdict(
                    Classification(OutcomeKind.RETRY, ErrorCategory.TRANSIENT),
                    "TOKEN_ENDPOINT_UNAVAILABLE" if exc.code != "TIMEOUT" else "TIMEOUT",
                    exc.message,
                )
            h = {**headers, "authorization": f"Bearer {token}", "content-type": "application/json"}
            result.requests_sent += 1
            try:
                resp = await self._http.post(url, content=content, headers=h, timeout=self._timeout)
            except httpx.TimeoutException as exc:
                return _verdict(0, "TIMEOUT", f"no response within the timeout ({type(exc).__name__})")
            except httpx.ConnectError as exc:
                return _verdict(0, "CONNECT_ERROR", f"connection failed ({type(exc).__name__})")
            except httpx.HTTPError as exc:
                return _verdict(0, "NETWORK_ERROR", f"transport error ({type(exc).__name__})")
            if resp.status_code == 401 and attempt == 0:
                self.tokens.invalidate(creds)
                continue
            try:
                body: Any = msgspec.json.decode(resp.content) if resp.content else {}
            except msgspec.DecodeError:
                body = None  # e.g. Google's HTML 404 for an unknown path
            retry_after = parse_duration((resp.headers.get("retry-after") or "") + "s")
            return _Reply(resp.status_code, body, _request_id_from_headers(resp.headers), retry_after)
        raise AssertionError("unreachable")

    def _chunk_key(self, conv: Conversion, creds: GoogleCredentials) -> str:
        """Rows with different keys never share a request."""
        return ""

    @abc.abstractmethod
    def _build_request(
        self, creds: GoogleCredentials, chunk: Sequence[Conversion]
    ) -> tuple[str, bytes, dict[str, str]]:
        """URL, encoded JSON body and extra headers for one chunk."""

    @abc.abstractmethod
    def _parse_reply(self, reply: _Reply, n: int) -> _ChunkResult:
        """Per-row verdicts from one HTTP reply."""


def _error_envelope(body: Any) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
    """The ``error`` object and its ``details`` list of a Google REST error, or empties."""
    err = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(err, Mapping):
        return {}, []
    details = err.get("details")
    return err, [d for d in details if isinstance(d, Mapping)] if isinstance(details, list) else []


def _type_is(detail: Mapping[str, Any], suffix: str) -> bool:
    t = detail.get("@type")
    return isinstance(t, str) and t.endswith(suffix)


def _error_code_name(error: Mapping[str, Any]) -> str | None:
    """The enum name inside a GoogleAdsError ``errorCode`` one-key oneof."""
    ec = _get(error, "errorCode", "error_code")
    if isinstance(ec, Mapping):
        for v in ec.values():
            if isinstance(v, str):
                return v
    return None


def _quota_delay(error: Mapping[str, Any]) -> float | None:
    det = error.get("details")
    if not isinstance(det, Mapping):
        return None
    q = _get(det, "quotaErrorDetails", "quota_error_details")
    if isinstance(q, Mapping):
        return parse_duration(_get(q, "retryDelay", "retry_delay"))
    return None


def _ads_failure(details: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for d in details:
        if "errors" in d or _type_is(d, "GoogleAdsFailure"):
            return d
    return None


def _row_index(error: Mapping[str, Any]) -> int | None:
    loc = error.get("location")
    if not isinstance(loc, Mapping):
        return None
    elems = _get(loc, "fieldPathElements", "field_path_elements")
    if not isinstance(elems, list):
        return None
    for el in elems:
        if not isinstance(el, Mapping):
            continue
        if _get(el, "fieldName", "field_name") == "conversions":
            idx = el.get("index")
            try:
                return int(idx) if idx is not None else None
            except (TypeError, ValueError):
                return None
    return None


class GoogleAdsClient(_GoogleClientBase):
    """Async client for ``POST /{version}/customers/{customer_id}:uploadClickConversions``.

    Sends ``partialFailure: true``, one click id per row, a deterministic ``orderId``, and
    reads per-row outcomes from ``partialFailureError`` (camelCase or snake_case bodies).
    """

    destination: Destination = "google_ads"
    default_base_url = DEFAULT_ADS_BASE_URL

    def __init__(
        self,
        http: httpx.AsyncClient | None = None,
        *,
        tokens: TokenProvider | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: httpx.Timeout | None = None,
        base_url: str | None = None,
        api_version: str = DEFAULT_ADS_API_VERSION,
    ) -> None:
        super().__init__(http, tokens=tokens, chunk_size=chunk_size, timeout=timeout, base_url=base_url)
        self.api_version = api_version

    def _build_request(
        self, creds: GoogleCredentials, chunk: Sequence[Conversion]
    ) -> tuple[str, bytes, dict[str, str]]:
        cid = _digits(creds.customer_id)
        assert cid is not None
        url = f"{self.base_url}/{self.api_version}/customers/{cid}:uploadClickConversions"
        headers: dict[str, str] = {}
        if creds.developer_token:
            # Ignored by Google since 2026-09-09 but still accepted; sent when configured.
            headers["developer-token"] = creds.developer_token
        login = _digits(creds.login_customer_id)
        if login:
            headers["login-customer-id"] = login
        body = {
            "conversions": [build_ads_conversion(c, cid, creds.conversion_action) for c in chunk],
            "partialFailure": True,
        }
        return url, msgspec.json.encode(body), headers

    def _parse_reply(self, reply: _Reply, n: int) -> _ChunkResult:
        body = reply.body if isinstance(reply.body, Mapping) else {}
        if reply.status != 200:
            err, details = _error_envelope(reply.body)
            failure = _ads_failure(details)
            code: str | None = None
            message = err.get("message") if isinstance(err.get("message"), str) else None
            delay: float | None = None
            request_id = reply.request_id
            if failure is not None:
                errors = failure.get("errors")
                if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
                    code = _error_code_name(errors[0])
                    m = errors[0].get("message")
                    message = m if isinstance(m, str) else message
                    delay = _quota_delay(errors[0])
                rid = _get(failure, "requestId", "request_id")
                request_id = request_id or (rid if isinstance(rid, str) else None)
            for d in details:
                if _type_is(d, "google.rpc.RetryInfo") and delay is None:
                    delay = parse_duration(_get(d, "retryDelay", "retry_delay"))
                elif _type_is(d, "google.rpc.ErrorInfo") and code is None:
                    r = d.get("reason")
                    code = r if isinstance(r, str) else None
            if code is None:
                st = err.get("status")
                code = st if isinstance(st, str) else f"HTTP_{reply.status}"
            if delay is None:
                delay = reply.retry_after_s
            if message is None:
                message = f"HTTP {reply.status}"
            v = _verdict(reply.status, code, message[:500], delay)
            return _ChunkResult([v] * n, reply.status, request_id, v)

        verdicts: list[_Verdict] = [_OK] * n
        pfe = _get(body, "partialFailureError", "partial_failure_error")
        request_id = reply.request_id
        if isinstance(pfe, Mapping):
            raw = pfe.get("details")
            details = [d for d in raw if isinstance(d, Mapping)] if isinstance(raw, list) else []
            for failure in details:
                rid = _get(failure, "requestId", "request_id")
                if request_id is None and isinstance(rid, str):
                    request_id = rid
                errors = failure.get("errors")
                if not isinstance(errors, list):
                    continue
                for e in errors:
                    if not isinstance(e, Mapping):
                        continue
                    code = _error_code_name(e) or "UNKNOWN"
                    m = e.get("message")
                    v = _verdict(200, code, m[:500] if isinstance(m, str) else None, _quota_delay(e))
                    idx = _row_index(e)
                    targets = range(n) if idx is None else ([idx] if 0 <= idx < n else [])
                    for i in targets:
                        # A row can carry several errors: keep the most severe.
                        if verdicts[i] is _OK or v.worse_than(verdicts[i]):
                            verdicts[i] = v
        results = body.get("results")
        if not isinstance(results, list):
            results = []
        for i in range(n):
            if verdicts[i] is _OK and (i >= len(results) or not results[i]):
                # An empty result without a named error is ambiguous: resend (the order
                # id makes a second copy come back ORDER_ID_ALREADY_IN_USE).
                verdicts[i] = _verdict(200, "MISSING_RESULT", "empty result without an error")
        return _ChunkResult(verdicts, reply.status, request_id)
