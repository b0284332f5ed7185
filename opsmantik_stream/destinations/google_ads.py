"""The Google Ads API destination: ``ConversionUploadService.UploadClickConversions`` (REST).

``POST {OPSMANTIK_GOOGLE_ADS_BASE_URL}/{version}/customers/{customer_id}:uploadClickConversions``
with ``partialFailure: true``, one click id per row, a deterministic ``orderId``, the hashed
phone when known and the visitor's ``adUserData`` consent; per-row outcomes come from
``partialFailureError`` (camelCase or snake_case bodies). Wire: reference/google-apis.md §1.
Accounts new to offline conversion import are refused with
``CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE``: :meth:`GoogleAdsDestination.blocked_hint` tells
the operator to switch the site to the Data Manager API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from opsmantik_stream.destinations.base import (
    BeforeRequest,
    Classification,
    Conversion,
    OutcomeKind,
    UploadResult,
    credentials_command,
    destination_command,
)
from opsmantik_stream.destinations.google.consent import google_consent
from opsmantik_stream.destinations.google.credentials import GoogleCredentials, action_id, digits
from opsmantik_stream.destinations.google.mapping import (
    email_hash,
    error_envelope,
    format_ads_datetime,
    get_either,
    minor_to_major,
    parse_duration,
    phone_hash,
    pick_click_id,
    type_is,
)
from opsmantik_stream.destinations.google.transport import OK, ChunkResult, GoogleDestination, Reply, Verdict, verdict

__all__ = [
    "ALLOWLIST_CODES",
    "ENHANCED_CONVERSIONS_CODES",
    "GoogleAdsDestination",
    "build_ads_adjustment",
    "build_ads_conversion",
]

#: Google's answer for an account that may no longer upload click conversions through the
#: Google Ads API (new adopters must use the Data Manager API since 2026-06-15).
ALLOWLIST_CODES = frozenset({"CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"})
_SWITCH_TO = "data_manager"
#: Google's answers for identifiers sent to an account that has not turned enhanced conversions
#: for leads on, or has not accepted the customer data terms (an account setting, not our row).
ENHANCED_CONVERSIONS_CODES = frozenset(
    {
        "CUSTOMER_NOT_ENABLED_ENHANCED_CONVERSIONS_FOR_LEADS",
        "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS",
        "CUSTOMER_DATA_POLICY_PROHIBITS_ENHANCED_CONVERSIONS",
    }
)
#: Most user identifiers one click conversion may carry.
MAX_IDENTIFIERS = 5
#: The request field whose index names a row in a partial failure (uploads, adjustments).
_ROW_FIELDS = frozenset({"conversions", "conversion_adjustments", "conversionAdjustments"})
_ADJUSTMENT_TYPES = {"restatement": "RESTATEMENT", "retraction": "RETRACTION"}
_ADJUST = "adjust"


def build_ads_conversion(conv: Conversion, customer_id: str, default_action: str) -> dict[str, Any]:
    """Map one validated row to a lowerCamelCase ``ClickConversion`` dict."""
    click = pick_click_id(conv)
    aid = action_id((conv.target or default_action).strip())
    out: dict[str, Any] = {
        "conversionAction": f"customers/{customer_id}/conversionActions/{aid}",
        "conversionDateTime": format_ads_datetime(conv.conversion_time),
        "conversionValue": minor_to_major(conv.value_minor, conv.currency),
        "currencyCode": conv.currency.upper(),
        "orderId": conv.order_id,
    }
    if click is not None:
        out[click[0]] = click[1]
    # enhanced conversions for leads: hashed identifiers, with or without a click id (validated
    # by the caller: at least one of them); Google takes at most 5, one kind per entry
    ids = [{"hashedEmail": h} for h in [email_hash(conv)] if h] + [
        {"hashedPhoneNumber": h} for h in [phone_hash(conv)] if h
    ]
    if ids:
        out["userIdentifiers"] = ids[:MAX_IDENTIFIERS]
    ad_user_data, _ = google_consent(conv.consent_scopes)
    if ad_user_data is not None:
        # click conversions take adUserData only (adPersonalization is for the user-data services)
        out["consent"] = {"adUserData": "GRANTED" if ad_user_data else "DENIED"}
    return out


def build_ads_adjustment(conv: Conversion, customer_id: str, default_action: str) -> dict[str, Any]:
    """Map one adjustment row to a lowerCamelCase ``ConversionAdjustment`` dict, keyed by our
    order id (the conversion's), with the adjustment's own time and, for a restatement, the
    new value."""
    assert conv.adjustment in _ADJUSTMENT_TYPES and conv.adjusted_at is not None
    aid = action_id((conv.target or default_action).strip())
    out: dict[str, Any] = {
        "conversionAction": f"customers/{customer_id}/conversionActions/{aid}",
        "adjustmentType": _ADJUSTMENT_TYPES[conv.adjustment],
        "orderId": conv.order_id,
        "adjustmentDateTime": format_ads_datetime(conv.adjusted_at),
    }
    if conv.adjustment == "restatement":
        out["restatementValue"] = {
            "adjustedValue": minor_to_major(conv.value_minor, conv.currency),
            "currencyCode": conv.currency.upper(),
        }
    return out


def _error_code_name(error: Mapping[str, Any]) -> str | None:
    """The enum name inside a GoogleAdsError ``errorCode`` one-key oneof."""
    ec = get_either(error, "errorCode", "error_code")
    if isinstance(ec, Mapping):
        for v in ec.values():
            if isinstance(v, str):
                return v
    return None


def _quota_delay(error: Mapping[str, Any]) -> float | None:
    det = error.get("details")
    if not isinstance(det, Mapping):
        return None
    q = get_either(det, "quotaErrorDetails", "quota_error_details")
    if isinstance(q, Mapping):
        return parse_duration(get_either(q, "retryDelay", "retry_delay"))
    return None


def _ads_failure(details: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for d in details:
        if "errors" in d or type_is(d, "GoogleAdsFailure"):
            return d
    return None


def _row_index(error: Mapping[str, Any]) -> int | None:
    loc = error.get("location")
    if not isinstance(loc, Mapping):
        return None
    elems = get_either(loc, "fieldPathElements", "field_path_elements")
    if not isinstance(elems, list):
        return None
    for el in elems:
        if not isinstance(el, Mapping):
            continue
        if get_either(el, "fieldName", "field_name") in _ROW_FIELDS:
            idx = el.get("index")
            try:
                return int(idx) if idx is not None else None
            except (TypeError, ValueError):
                return None
    return None


class GoogleAdsDestination(GoogleDestination):
    """Uploads click conversions through the Google Ads API."""

    name = "google_ads"
    label = "Google Ads API (uploadClickConversions)"
    base_url_setting = "google_ads_base_url"

    @property
    def api_version(self) -> str:
        return str(self.ctx.settings.google_ads_api_version)

    @classmethod
    def blocked_hint(
        cls, code: str | None, *, public_id: str, site_destination: str, site_has_credentials: bool
    ) -> str | None:
        if site_destination != cls.name:
            return None  # the generic hints cover it (e.g. the site already moved on)
        if code in ENHANCED_CONVERSIONS_CODES:
            return (
                "this Google Ads account does not accept hashed email/phone identifiers yet: in Google Ads turn "
                "on enhanced conversions for leads (Goals > Settings) and accept the customer data terms; or "
                f"stop sending identifier-only conversions with `opsmantik site enhanced-conversions set "
                f"{public_id} off`"
            )
        if code not in ALLOWLIST_CODES:
            return None
        return (
            "Google refuses click-conversion uploads for this account through the Google Ads API (accounts new "
            f"to offline conversion import must use the Data Manager API): switch the site with "
            f"{destination_command(public_id, _SWITCH_TO)}, set its credentials with "
            f"{credentials_command(public_id, _SWITCH_TO)} if missing"
        )

    def chunk_key(self, conv: Conversion, creds: GoogleCredentials) -> str:
        # adjustments go to their own service, never in a request with click conversions
        return _ADJUST if conv.adjustment else ""

    async def _send_chunk(
        self,
        creds: GoogleCredentials,
        chunk: Sequence[Conversion],
        result: UploadResult,
        before_request: BeforeRequest | None = None,
    ) -> ChunkResult:
        cr = await super()._send_chunk(creds, chunk, result, before_request)
        for i, conv in enumerate(chunk):
            # a retraction of a conversion already retracted (our own earlier, ambiguous send):
            # what we asked for holds, so it is delivered
            if conv.adjustment == "retraction" and cr.verdicts[i].code == "CONVERSION_ALREADY_RETRACTED":
                cr.verdicts[i] = Verdict(Classification(OutcomeKind.ALREADY_EXISTS), cr.verdicts[i].code)
        return cr

    def build_request(self, creds: GoogleCredentials, chunk: Sequence[Conversion]) -> tuple[str, bytes, dict[str, str]]:
        cid = digits(creds.customer_id)
        assert cid is not None
        adjust = bool(chunk[0].adjustment)
        method = "uploadConversionAdjustments" if adjust else "uploadClickConversions"
        url = f"{self.base_url}/{self.api_version}/customers/{cid}:{method}"
        headers: dict[str, str] = {}
        if creds.developer_token:
            # Ignored by Google since 2026-09-09 but still accepted; sent when configured.
            headers["developer-token"] = creds.developer_token
        login = digits(creds.login_customer_id)
        if login:
            headers["login-customer-id"] = login
        body = (
            {
                "conversionAdjustments": [build_ads_adjustment(c, cid, creds.conversion_action) for c in chunk],
                "partialFailure": True,
            }
            if adjust
            else {
                "conversions": [build_ads_conversion(c, cid, creds.conversion_action) for c in chunk],
                "partialFailure": True,
            }
        )
        return url, msgspec.json.encode(body), headers

    # one reading of every place Google's documented error envelope may put a code, a message
    # and a retry delay, in Google's order; a split would hide which place wins
    def parse_reply(self, reply: Reply, n: int) -> ChunkResult:  # noqa: C901
        body = reply.body if isinstance(reply.body, Mapping) else {}
        if reply.status != 200:
            err, details = error_envelope(reply.body)
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
                rid = get_either(failure, "requestId", "request_id")
                request_id = request_id or (rid if isinstance(rid, str) else None)
            for d in details:
                if type_is(d, "google.rpc.RetryInfo") and delay is None:
                    delay = parse_duration(get_either(d, "retryDelay", "retry_delay"))
                elif type_is(d, "google.rpc.ErrorInfo") and code is None:
                    r = d.get("reason")
                    code = r if isinstance(r, str) else None
            if code is None:
                st = err.get("status")
                code = st if isinstance(st, str) else f"HTTP_{reply.status}"
            if delay is None:
                delay = reply.retry_after_s
            if message is None:
                message = f"HTTP {reply.status}"
            v = verdict(reply.status, code, message[:500], delay)
            return ChunkResult([v] * n, reply.status, request_id, v)

        verdicts: list[Verdict] = [OK] * n
        pfe = get_either(body, "partialFailureError", "partial_failure_error")
        request_id = reply.request_id
        if isinstance(pfe, Mapping):
            raw = pfe.get("details")
            details = [d for d in raw if isinstance(d, Mapping)] if isinstance(raw, list) else []
            for failure in details:
                rid = get_either(failure, "requestId", "request_id")
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
                    v = verdict(200, code, m[:500] if isinstance(m, str) else None, _quota_delay(e))
                    idx = _row_index(e)
                    targets = range(n) if idx is None else ([idx] if 0 <= idx < n else [])
                    for i in targets:
                        # A row can carry several errors: keep the most severe.
                        if verdicts[i] is OK or v.worse_than(verdicts[i]):
                            verdicts[i] = v
        results = body.get("results")
        if not isinstance(results, list):
            results = []
        for i in range(n):
            if verdicts[i] is OK and (i >= len(results) or not results[i]):
                # An empty result without a named error is ambiguous: resend (the order
                # id makes a second copy come back ORDER_ID_ALREADY_IN_USE).
                verdicts[i] = verdict(200, "MISSING_RESULT", "empty result without an error")
        return ChunkResult(verdicts, reply.status, request_id)
