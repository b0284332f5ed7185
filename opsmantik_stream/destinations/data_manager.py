"""The Data Manager API destination: ``IngestionService.IngestEvents`` (``POST /v1/events:ingest``).

Google's primary offline-conversion import API since June 2026. Unlike the Google Ads API it
has no partial failure: a bad required field rejects the whole request with 400 and
``google.rpc.BadRequest.fieldViolations`` naming ``events[i]``. Named events fail; the other
events of that request were collateral and are returned as ``retry`` with code ``COLLATERAL``
and a zero delay so the uploader can resend them at once. Re-sending the same
``transactionId`` is an adjustment (idempotent 200), not an error. The API root is the
deployment's ``OPSMANTIK_DATA_MANAGER_BASE_URL``. Wire: reference/google-apis.md §2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from opsmantik_stream.destinations.base import Classification, Conversion, ErrorCategory, OutcomeKind
from opsmantik_stream.destinations.google.classify import classify
from opsmantik_stream.destinations.google.consent import google_consent
from opsmantik_stream.destinations.google.credentials import GoogleCredentials, action_id, digits
from opsmantik_stream.destinations.google.mapping import (
    email_hash,
    error_envelope,
    format_rfc3339,
    get_either,
    minor_to_major,
    parse_duration,
    phone_hash,
    pick_click_id,
    type_is,
)
from opsmantik_stream.destinations.google.transport import OK, ChunkResult, GoogleDestination, Reply, Verdict, verdict
from opsmantik_stream.enums import QueueKind

__all__ = ["RETRACTION_NOT_SUPPORTED", "DataManagerDestination", "build_dm_event"]

_EVENT_INDEX_RE = re.compile(r"^events\[(\d+)\]")
_DEST_REF = "conversions"
#: Our code for a retraction sent to Data Manager: refused, with words, never a silent drop.
RETRACTION_NOT_SUPPORTED = "RETRACTION_NOT_SUPPORTED"
#: Most user identifiers one event may carry.
MAX_IDENTIFIERS = 10


def _consent(flag: bool | None) -> str | None:
    if flag is None:
        return None
    return "CONSENT_GRANTED" if flag else "CONSENT_DENIED"


def build_dm_event(conv: Conversion) -> dict[str, Any]:
    """Map one validated row to a Data Manager ``Event`` dict (lowerCamelCase)."""
    click = pick_click_id(conv)
    ev: dict[str, Any] = {
        "transactionId": conv.order_id,
        "eventTimestamp": format_rfc3339(conv.conversion_time),
        "eventSource": "WEB",
        "conversionValue": minor_to_major(conv.value_minor, conv.currency),
        "currency": conv.currency.upper(),
    }
    if click is not None:
        ev["adIdentifiers"] = {click[0]: click[1]}
    # hashed identifiers (enhanced conversions for leads), at most 10 per event
    ids = [{"emailAddress": h} for h in [email_hash(conv)] if h] + [{"phoneNumber": h} for h in [phone_hash(conv)] if h]
    if ids:
        ev["userData"] = {"userIdentifiers": ids[:MAX_IDENTIFIERS]}
    ad_user_data, ad_personalization = google_consent(conv.consent_scopes)
    consent: dict[str, str] = {}
    if (c := _consent(ad_user_data)) is not None:
        consent["adUserData"] = c
    if (c := _consent(ad_personalization)) is not None:
        consent["adPersonalization"] = c
    if consent:
        ev["consent"] = consent
    return ev


class DataManagerDestination(GoogleDestination):
    """Sends conversions as events through the Data Manager API."""

    name = "data_manager"
    label = "Google Data Manager API (events:ingest)"
    base_url_setting = "data_manager_base_url"

    def refuse(self, conv: Conversion) -> Verdict | None:
        # A restatement is the event re-sent with the same transactionId and the new value (an
        # adjustment there); the Data Manager API has no way to withdraw an event.
        if conv.adjustment == QueueKind.RETRACTION:
            return Verdict(
                Classification(OutcomeKind.FAILED, ErrorCategory.VALIDATION),
                RETRACTION_NOT_SUPPORTED,
                "refused: the Data Manager API cannot retract an uploaded conversion; remove or adjust it in "
                "Google Ads (Goals > Conversions > Uploads), or send sales that can be cancelled through the "
                "Google Ads API (`opsmantik site destination set PUBLIC_ID google_ads`)",
            )
        return None

    def chunk_key(self, conv: Conversion, creds: GoogleCredentials) -> str:
        # One destination (conversion action) per request keeps the body simple.
        return action_id(conv.target or creds.conversion_action) or ""

    def build_request(self, creds: GoogleCredentials, chunk: Sequence[Conversion]) -> tuple[str, bytes, dict[str, str]]:
        cid = digits(creds.customer_id)
        aid = self.chunk_key(chunk[0], creds)
        destination: dict[str, Any] = {
            "reference": _DEST_REF,
            "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": cid},
            "productDestinationId": aid,
        }
        login = digits(creds.login_customer_id)
        if login:
            # Data Manager takes the manager account in the body, not in a header.
            destination["loginAccount"] = {"accountType": "GOOGLE_ADS", "accountId": login}
        events = [build_dm_event(c) for c in chunk]
        body: dict[str, Any] = {"destinations": [destination], "events": events}
        if any("userData" in e for e in events):
            body["encoding"] = "HEX"  # required whenever userData is present
        url = f"{self.base_url}/v1/events:ingest"
        return url, msgspec.json.encode(body), {}

    def parse_reply(self, reply: Reply, n: int) -> ChunkResult:
        body = reply.body if isinstance(reply.body, Mapping) else {}
        if 200 <= reply.status < 300:
            rid = body.get("requestId")
            request_id = reply.request_id or (rid if isinstance(rid, str) else None)
            return ChunkResult([OK] * n, reply.status, request_id)

        err, details = error_envelope(reply.body)
        msg = err.get("message")
        message = (msg if isinstance(msg, str) else f"HTTP {reply.status}")[:500]
        info_reason: str | None = None
        delay: float | None = None
        request_id = reply.request_id
        violations: list[tuple[int | None, str | None, str]] = []
        for d in details:
            if type_is(d, "google.rpc.BadRequest"):
                fv = get_either(d, "fieldViolations", "field_violations")
                for v in fv if isinstance(fv, list) else []:
                    if not isinstance(v, Mapping):
                        continue
                    field = v.get("field") if isinstance(v.get("field"), str) else ""
                    m = _EVENT_INDEX_RE.match(field or "")
                    reason = v.get("reason") if isinstance(v.get("reason"), str) else None
                    desc = v.get("description") if isinstance(v.get("description"), str) else ""
                    violations.append((int(m.group(1)) if m else None, reason, f"{field}: {desc}"[:500]))
            elif type_is(d, "google.rpc.ErrorInfo"):
                r = d.get("reason")
                info_reason = r if isinstance(r, str) else None
            elif type_is(d, "google.rpc.RetryInfo"):
                delay = parse_duration(get_either(d, "retryDelay", "retry_delay"))
            elif type_is(d, "google.rpc.RequestInfo"):
                rid = get_either(d, "requestId", "request_id")
                request_id = request_id or (rid if isinstance(rid, str) else None)
        if delay is None:
            delay = reply.retry_after_s

        request_level = [v for v in violations if v[0] is None]
        # Collateral needs a culprit in this request: violations naming no event of it are
        # answered as a whole-request failure (else every row would be resent for ever).
        named = [v for v in violations if v[0] is not None and 0 <= v[0] < n]
        if reply.status == 400 and named and not request_level:
            verdicts: list[Verdict] = [
                Verdict(
                    Classification(OutcomeKind.RETRY, ErrorCategory.TRANSIENT, 0.0),
                    "COLLATERAL",
                    "not ingested: another event in the same request was invalid",
                )
            ] * n
            first: Verdict | None = None
            for idx, reason, text in named:
                assert idx is not None
                v = Verdict(classify(400, reason or "INVALID_ARGUMENT"), reason or "INVALID_ARGUMENT", text)
                if verdicts[idx].code == "COLLATERAL" or v.worse_than(verdicts[idx]):
                    verdicts[idx] = v
                first = first or v
            return ChunkResult(verdicts, reply.status, request_id, first)

        code: str | None = info_reason
        if request_level and request_level[0][1]:
            code, message = request_level[0][1], request_level[0][2]
        if code is None:
            status_name = err.get("status")
            code = status_name if isinstance(status_name, str) else f"HTTP_{reply.status}"
        # classify() falls back to the HTTP status for reasons it does not know.
        whole = verdict(reply.status, code, message, delay)
        return ChunkResult([whole] * n, reply.status, request_id, whole)
