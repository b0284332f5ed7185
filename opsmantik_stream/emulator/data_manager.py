"""The emulator's Data Manager API: ``POST /v1/events:ingest`` (all-or-nothing validation,
adjustments by transaction id) and ``GET /v1/requestStatus:retrieve``.
Wire: reference/google-apis.md §2 and §3."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from .core import CLICK_FIELDS, CURRENCY_RE, DM_SCOPE, HEX64_RE, EmulatorCore, EmuReply, get_either, prefix_rule

__all__ = ["DataManagerApi"]

_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
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


def _rfc3339_ok(s: Any) -> bool:
    if not isinstance(s, str) or not _RFC3339_RE.match(s):
        return False
    try:
        datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError:
        return False
    return True


class DataManagerApi(EmulatorCore):
    """Event ingestion, answered like the Data Manager API answers it."""

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
        op = get_either(first_dest, "operatingAccount", "operating_account") or {}
        account = str(get_either(op, "accountId", "account_id") or "") if isinstance(op, dict) else ""
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
            op = get_either(d, "operatingAccount", "operating_account") or {}
            acct = str(get_either(op, "accountId", "account_id") or "") if isinstance(op, dict) else ""
            atype = get_either(op, "accountType", "account_type") if isinstance(op, dict) else None
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
            pid = str(get_either(d, "productDestinationId", "product_destination_id") or "")
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
            login = get_either(d, "loginAccount", "login_account")
            login_id = str(get_either(login, "accountId", "account_id") or "") if isinstance(login, dict) else None
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
            if not _rfc3339_ok(get_either(ev, "eventTimestamp", "event_timestamp")):
                bad(f"events[{i}].event_timestamp", "EVENT_TIME_INVALID", "Event timestamp must be RFC 3339.")
                continue
            ads = get_either(ev, "adIdentifiers", "ad_identifiers")
            ud = get_either(ev, "userData", "user_data")
            clicks = [f for f in CLICK_FIELDS if isinstance(ads, dict) and ads.get(f)]
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
            value = get_either(ev, "conversionValue", "conversion_value")
            currency = ev.get("currency")
            if value is not None and not currency:
                bad(f"events[{i}].currency", "INVALID_CURRENCY_CODE", "A currency is required with a value.")
                continue
            if currency is not None and not (isinstance(currency, str) and CURRENCY_RE.match(currency)):
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
                uids = get_either(ud, "userIdentifiers", "user_identifiers") if isinstance(ud, dict) else None
                if not isinstance(uids, list) or len(uids) > 10:
                    bad(f"events[{i}].user_data.user_identifiers", "INVALID_FORMAT", "1 to 10 identifiers.")
                    continue
                for u in uids:
                    v = (
                        (get_either(u, "phoneNumber", "phone_number") or get_either(u, "emailAddress", "email_address"))
                        if isinstance(u, dict)
                        else None
                    )
                    if encoding == "HEX" and not (isinstance(v, str) and HEX64_RE.match(v)):
                        bad(
                            f"events[{i}].user_data.user_identifiers",
                            "INVALID_SHA256_FORMAT",
                            "Identifier is not a hex SHA-256 hash.",
                        )
                        break
            drefs = get_either(ev, "destinationReferences", "destination_references")
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

        validate_only = get_either(req, "validateOnly", "validate_only") is True
        rid = self._request_id()
        now = self.clock()
        per_dest_errors: list[Counter[str]] = [Counter() for _ in dest_keys]
        per_dest_ok = [0] * len(dest_keys)
        ref_list = list(refs)
        for ev in events:
            drefs = get_either(ev, "destinationReferences", "destination_references")
            targets = [ref_list.index(r) for r in drefs] if drefs else range(len(dest_keys))
            ads = get_either(ev, "adIdentifiers", "ad_identifiers") or {}
            click_field = next((f for f in CLICK_FIELDS if ads.get(f)), None)
            click = str(ads[click_field]) if click_field else None
            txn = get_either(ev, "transactionId", "transaction_id")
            txn = str(txn) if txn else None
            if txn and not validate_only:
                self.order_id_attempts[txn] += 1
            rule = prefix_rule(click) if click else None
            for di in targets:
                acct, pid = dest_keys[di]
                if rule is not None and rule[3] is not None:
                    per_dest_errors[di][rule[3]] += 1
                    continue
                per_dest_ok[di] += 1
                if validate_only:
                    continue
                value = get_either(ev, "conversionValue", "conversion_value")
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
                        "conversion_date_time": get_either(ev, "eventTimestamp", "event_timestamp"),
                        "value": value,
                        "currency": ev.get("currency"),
                        "user_identifiers": len(
                            get_either(
                                get_either(ev, "userData", "user_data") or {}, "userIdentifiers", "user_identifiers"
                            )
                            or []
                        ),
                        "identifiers": get_either(
                            get_either(ev, "userData", "user_data") or {}, "userIdentifiers", "user_identifiers"
                        )
                        or [],
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
