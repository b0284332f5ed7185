"""The emulator's Google Ads API: ``POST /{version}/customers/{customerId}:uploadClickConversions``
(partial failure, whole-request errors, dedupe by order id and by click + time, quotas) and
``:uploadConversionAdjustments`` (retractions and restatements by order id).
Wire: reference/google-apis.md §1 and §3.

Why this module is over 600 lines: it is one Google service as the wire has it. Both upload
methods share the admission of a request (credentials, developer token, customer, quotas),
the shapes of its errors and the per-customer store of what was uploaded, and an adjustment is
judged against the conversions this same class recorded; split in two, one service's rules
would sit in two files that must change together."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from .core import (
    CLICK_FIELDS,
    CURRENCY_RE,
    HEX64_RE,
    HTML_404,
    EmulatorCore,
    EmuReply,
    get_either,
    prefix_rule,
)

__all__ = ["GoogleAdsApi"]

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
    "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS": "The customer has not accepted the customer data terms "
    "in the conversion settings page.",
    "CUSTOMER_NOT_ENABLED_ENHANCED_CONVERSIONS_FOR_LEADS": "The customer has not enabled enhanced "
    "conversions for leads in the conversion settings page.",
    "INTERNAL_ERROR": "An internal error has occurred.",
    "TRANSIENT_ERROR": "The operation failed due to a transient error. Retry the request.",
    "CONCURRENT_MODIFICATION": "Multiple requests tried to modify the same resource at once.",
    "TOO_MANY_CONVERSIONS_IN_REQUEST": "Upload fewer than 2001 events in a single request.",
    "CONVERSION_NOT_FOUND": "The conversion for this conversion action and conversion identifier can't be "
    "found. Make sure your conversion identifiers are associated with the correct conversion action and try again.",
    "ADJUSTMENT_PRECEDES_CONVERSION": "Adjustment has an adjustment_date_time that occurred before the "
    "associated conversion.",
    "TOO_RECENT_CONVERSION": "Adjustment can't be recorded because the conversion occurred too recently. "
    "Try adjusting a conversion that occurred at least 24 hours ago.",
    "CONVERSION_ALREADY_RETRACTED": "The conversion was already retracted. This adjustment was not processed.",
    "RESTATEMENT_ALREADY_EXISTS": "The conversion has a prior restatement with the same adjustment_date_time.",
    "MORE_RECENT_RESTATEMENT_FOUND": "A more recent adjustment_date_time has already been reported for the "
    "associated conversion.",
    "DUPLICATE_ADJUSTMENT_IN_REQUEST": "Imported adjustment has a duplicate conversion adjustment with the same "
    "adjustment_date_time.",
    "TOO_MANY_ADJUSTMENTS_IN_REQUEST": "Try uploading fewer than 2001 adjustments in a single API request.",
    "INVALID_JOB_ID": "The job ID provided is not in the allowed range [1, 2^31).",
}

_ADS_DT_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?([+-])(\d{2}):(\d{2})$")
_ACTION_RE = re.compile(r"^customers/(\d+)/conversionActions/(\d+)$")


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


class GoogleAdsApi(EmulatorCore):
    """Click-conversion uploads, answered like the Google Ads API answers them."""

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
        collection: str = "conversions",
    ) -> dict[str, Any]:
        e: dict[str, Any] = {"errorCode": {key: name}, "message": message or _MESSAGES.get(name, name)}
        if trigger is not None:
            e["trigger"] = {"stringValue": trigger}
        if index is not None:
            path: list[dict[str, Any]] = [{"fieldName": collection, "index": index}]
            if field_name:
                path.append({"fieldName": field_name})
            e["location"] = {"fieldPathElements": path}
        return e

    def _ads_admit(self, version: str, customer: str, req: dict[str, Any], n_rows: int) -> EmuReply | None:
        """The account's rate limits (429 with a retry delay) and the partial-failure flag both
        upload services require; ``None`` when the request may go on."""
        limited = self._rate_check(customer, n_rows)
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
        if get_either(req, "partialFailure", "partial_failure") is not True:
            return self._ads_error(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                [self._err("fieldError", "REQUIRED", "partial_failure must be true for this service.")],
            )
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
            return EmuReply(404, HTML_404, {"content-type": "text/html; charset=UTF-8"}, html=True)
        if not sep or method not in ("uploadClickConversions", "uploadConversionAdjustments"):
            return EmuReply(404, HTML_404, {"content-type": "text/html; charset=UTF-8"}, html=True)
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
        adjust = method == "uploadConversionAdjustments"
        if not_allowlisted and cfg.not_allowlisted_mode != "row" and not adjust:
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
        if adjust:
            return self._ads_adjust(version, customer, req)
        convs = req.get("conversions") or []
        if not isinstance(convs, list):
            return self._status_error(400, "INVALID_ARGUMENT", "Invalid value at 'conversions'.")
        self.rows_received += len(convs)
        refused = self._ads_admit(version, customer, req, len(convs))
        if refused is not None:
            return refused
        if len(convs) > cfg.max_conversions:
            return self._ads_error(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                [self._err("conversionUploadError", "TOO_MANY_CONVERSIONS_IN_REQUEST")],
            )
        job_id = get_either(req, "jobId", "job_id")
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
            v = get_either(c, "conversionValue", "conversion_value") if isinstance(c, dict) else None
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
        validate_only = get_either(req, "validateOnly", "validate_only") is True
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
            action = get_either(c, "conversionAction", "conversion_action")
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
            present = [f for f in CLICK_FIELDS if c.get(f)]
            uids = get_either(c, "userIdentifiers", "user_identifiers") or []
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
            dt = get_either(c, "conversionDateTime", "conversion_date_time")
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
            value = get_either(c, "conversionValue", "conversion_value")
            currency = get_either(c, "currencyCode", "currency_code")
            if value is not None and not currency:
                errors[i] = err(
                    "fieldError",
                    "REQUIRED",
                    "A currency code is required with a conversion value.",
                    index=i,
                    field_name="currency_code",
                )
                continue
            if currency is not None and not (isinstance(currency, str) and CURRENCY_RE.match(currency)):
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
                        get_either(u, "hashedEmail", "hashed_email"),
                        get_either(u, "hashedPhoneNumber", "hashed_phone_number"),
                    ]
                    vals = [v for v in vals if v]
                if len(vals) != 1 or not (isinstance(vals[0], str) and HEX64_RE.match(vals[0])):
                    bad_uid = True
                    break
            if bad_uid:
                errors[i] = err(
                    "conversionUploadError", "INVALID_USER_IDENTIFIER", index=i, field_name="user_identifiers"
                )
                continue
            if uids and customer in cfg.data_terms_not_accepted:
                errors[i] = err(
                    "conversionUploadError",
                    "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS",
                    index=i,
                    field_name="user_identifiers",
                )
                continue
            if uids and not present and customer in cfg.ec_leads_disabled:
                errors[i] = err(
                    "conversionUploadError",
                    "CUSTOMER_NOT_ENABLED_ENHANCED_CONVERSIONS_FOR_LEADS",
                    index=i,
                    field_name="user_identifiers",
                )
                continue
            click_field = present[0] if present else None
            click = str(c[click_field]) if click_field else None
            if not_allowlisted:
                errors[i] = err("notAllowlistedError", "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE", index=i)
                continue
            if click is not None and click_field is not None:
                rule = prefix_rule(click)
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
            order_id = get_either(c, "orderId", "order_id")
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
            order_id_raw = get_either(c, "orderId", "order_id") if isinstance(c, dict) else None
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
            action = get_either(c, "conversionAction", "conversion_action")
            dt = get_either(c, "conversionDateTime", "conversion_date_time")
            res: dict[str, Any] = {"conversionAction": action, "conversionDateTime": dt}
            if click_field:
                res[click_field] = click
            uids = get_either(c, "userIdentifiers", "user_identifiers")
            if uids:
                res["userIdentifiers"] = uids
            results.append(res)
            if validate_only:
                continue
            if order_id:
                self._ads_orders.add((customer, aid, order_id))
                self._ads_order_rows[(customer, aid, order_id)] = (len(self.accepted), instant)
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
                    "value": get_either(c, "conversionValue", "conversion_value"),
                    "currency": get_either(c, "currencyCode", "currency_code"),
                    "user_identifiers": len(uids) if isinstance(uids, list) else 0,
                    "identifiers": uids if isinstance(uids, list) else [],
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

    # ------------------------------------------------------------------ adjustments

    def _ads_adjust(self, version: str, customer: str, req: dict[str, Any]) -> EmuReply:
        """``POST /{version}/customers/{customerId}:uploadConversionAdjustments`` (RETRACTION and
        RESTATEMENT keyed by order id; partial failure), with Google's checks: the conversion
        must exist, be at least ``adjustment_min_age_s`` old and precede the adjustment; a
        retracted conversion takes nothing more; adjustment times are unique per conversion and
        never older than the newest one applied."""
        cfg = self.config
        adjs = get_either(req, "conversionAdjustments", "conversion_adjustments") or []
        if not isinstance(adjs, list):
            return self._status_error(400, "INVALID_ARGUMENT", "Invalid value at 'conversion_adjustments'.")
        self.rows_received += len(adjs)
        refused = self._ads_admit(version, customer, req, len(adjs))
        if refused is not None:
            return refused
        if len(adjs) > cfg.max_conversions:
            return self._ads_error(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                [self._err("conversionAdjustmentUploadError", "TOO_MANY_ADJUSTMENTS_IN_REQUEST")],
            )
        validate_only = get_either(req, "validateOnly", "validate_only") is True
        rid = self._request_id()
        now = self.clock()
        n = len(adjs)
        errors: list[dict[str, Any] | None] = [None] * n
        parsed: list[tuple[tuple[str, str, str], str, float, Any] | None] = [None] * n

        def err(name: str, i: int, key: str = "conversionAdjustmentUploadError", **kw: Any) -> dict[str, Any]:
            return self._err(key, name, index=i, collection="conversion_adjustments", **kw)

        for i, a in enumerate(adjs):
            if not isinstance(a, dict):
                errors[i] = err("REQUIRED", i, "fieldError", field_name="conversion_action")
                continue
            action = get_either(a, "conversionAction", "conversion_action")
            m = _ACTION_RE.match(action) if isinstance(action, str) else None
            if m is None:
                errors[i] = err("REQUIRED", i, "fieldError", field_name="conversion_action")
                continue
            aid = m.group(2)
            if cfg.conversion_actions and aid not in cfg.conversion_actions:
                errors[i] = err("NO_CONVERSION_ACTION_FOUND", i, field_name="conversion_action", trigger=action)
                continue
            kind = get_either(a, "adjustmentType", "adjustment_type")
            if kind not in ("RETRACTION", "RESTATEMENT"):
                errors[i] = err("REQUIRED", i, "fieldError", field_name="adjustment_type")
                continue
            order_id = get_either(a, "orderId", "order_id")
            if not order_id:
                errors[i] = err("REQUIRED", i, "fieldError", field_name="order_id")
                continue
            when = get_either(a, "adjustmentDateTime", "adjustment_date_time")
            instant = _ads_instant(when) if isinstance(when, str) else None
            if instant is None:
                errors[i] = err(
                    "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET", i, "dateError", field_name="adjustment_date_time"
                )
                continue
            value = None
            if kind == "RESTATEMENT":
                rv = get_either(a, "restatementValue", "restatement_value")
                value = get_either(rv, "adjustedValue", "adjusted_value") if isinstance(rv, dict) else None
                if isinstance(value, bool) or not isinstance(value, int | float):
                    errors[i] = err("REQUIRED", i, "fieldError", field_name="restatement_value.adjusted_value")
                    continue
            key = (customer, aid, str(order_id))
            found = self._ads_order_rows.get(key)
            if found is None:
                errors[i] = err("CONVERSION_NOT_FOUND", i, field_name="order_id", trigger=str(order_id))
                continue
            _idx, conv_instant = found
            if instant < conv_instant:
                errors[i] = err("ADJUSTMENT_PRECEDES_CONVERSION", i, field_name="adjustment_date_time")
                continue
            if now - conv_instant < cfg.adjustment_min_age_s:
                errors[i] = err("TOO_RECENT_CONVERSION", i)
                continue
            if key in self._ads_retracted:
                errors[i] = err("CONVERSION_ALREADY_RETRACTED", i)
                continue
            applied = self._ads_adjusted.get(key, [])
            if instant in applied:
                errors[i] = err("RESTATEMENT_ALREADY_EXISTS", i, field_name="adjustment_date_time")
                continue
            if applied and instant < max(applied):
                errors[i] = err("MORE_RECENT_RESTATEMENT_FOUND", i, field_name="adjustment_date_time")
                continue
            parsed[i] = (key, kind, instant, value)

        seen: Counter[tuple[tuple[str, str, str], float]] = Counter((p[0], p[2]) for p in parsed if p is not None)
        results: list[dict[str, Any]] = []
        for i, p in enumerate(parsed):
            if p is not None and seen[(p[0], p[2])] > 1:
                errors[i] = err("DUPLICATE_ADJUSTMENT_IN_REQUEST", i)
                p = None
            if p is None:
                results.append({})
                continue
            key, kind, instant, value = p
            a = adjs[i]
            results.append(
                {
                    "conversionAction": get_either(a, "conversionAction", "conversion_action"),
                    "adjustmentType": kind,
                    "adjustmentDateTime": get_either(a, "adjustmentDateTime", "adjustment_date_time"),
                    "orderId": key[2],
                }
            )
            if validate_only:
                continue
            self._ads_adjusted.setdefault(key, []).append(instant)
            rec = self.accepted[self._ads_order_rows[key][0]]
            if kind == "RETRACTION":
                self._ads_retracted.add(key)
                rec["retracted"] = True
            else:
                rec["value"] = value
                rv = get_either(a, "restatementValue", "restatement_value") or {}
                rec["currency"] = get_either(rv, "currencyCode", "currency_code") or rec["currency"]
            rec["adjusted_at"] = now
            self.adjustments[key[2]] += 1
            self.adjustment_log.append(
                {
                    "api": "google_ads",
                    "account": customer,
                    "order_id": key[2],
                    "type": kind,
                    "value": value,
                    "adjustment_date_time": get_either(a, "adjustmentDateTime", "adjustment_date_time"),
                    "request_id": rid,
                    "received_at": now,
                }
            )
        payload: dict[str, Any] = {"jobId": str(self.rng.randint(2**31, 2**63 - 1))}
        if not validate_only:
            payload["results"] = results
        failed = [e for e in errors if e is not None]
        if failed:
            payload["partialFailureError"] = {
                "code": 3,
                "message": failed[0]["message"]
                if len(failed) == 1
                else f"Multiple errors in \u2018details\u2019. First error: {failed[0]['message']}",
                "details": [self._ads_failure(version, failed, rid)],
            }
        return self._reply(200, payload, rid)
