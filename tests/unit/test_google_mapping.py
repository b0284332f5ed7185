"""Mapping of queue rows to Google wire formats, and parsing of Google replies (no network)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import httpx
import msgspec
import pytest

from opsmantik_stream.config import load_settings
from opsmantik_stream.destinations.base import (
    Conversion,
    DestinationContext,
    IdentifierKind,
    OutcomeKind,
    UserIdentifier,
    normalize_e164,
)
from opsmantik_stream.destinations.data_manager import DataManagerDestination, build_dm_event
from opsmantik_stream.destinations.google.credentials import GoogleCredentials
from opsmantik_stream.destinations.google.mapping import (
    currency_exponent,
    format_ads_datetime,
    format_rfc3339,
    hash_phone_e164,
    minor_to_major,
    parse_duration,
    pick_click_id,
)
from opsmantik_stream.destinations.google.transport import GoogleDestination
from opsmantik_stream.destinations.google_ads import GoogleAdsDestination, build_ads_conversion

pytestmark = pytest.mark.unit

T = datetime(2026, 11, 2, 13, 5, 9, tzinfo=UTC)


def conv(**kw: object) -> Conversion:
    base: dict[str, object] = {
        "queue_id": "q",
        "order_id": "o-1",
        "conversion_time": T,
        "value_minor": 4990,
        "currency": "EUR",
        "gclid": "Cj0K",
    }
    base.update(kw)
    return Conversion(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dt", "ads", "rfc"),
    [
        (T, "2026-11-02 13:05:09+00:00", "2026-11-02T13:05:09Z"),
        (
            datetime(2026, 11, 2, 16, 5, 9, 999999, tzinfo=timezone(timedelta(hours=3))),
            "2026-11-02 13:05:09+00:00",
            "2026-11-02T13:05:09Z",
        ),
        (
            datetime(2026, 1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            "2025-12-31 19:30:00+00:00",
            "2025-12-31T19:30:00Z",
        ),
        (
            datetime(2026, 3, 1, 20, 0, 0, tzinfo=timezone(timedelta(hours=-8))),
            "2026-03-02 04:00:00+00:00",
            "2026-03-02T04:00:00Z",
        ),
    ],
)
def test_datetime_formats(dt: datetime, ads: str, rfc: str) -> None:
    assert format_ads_datetime(dt) == ads
    assert format_rfc3339(dt) == rfc


def test_naive_datetime_rejected() -> None:
    with pytest.raises(ValueError):
        format_ads_datetime(datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        format_rfc3339(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("currency", "exp", "minor", "major"),
    [
        ("EUR", 2, 4990, 49.9),
        ("usd", 2, 1, 0.01),
        ("TRY", 2, 123456, 1234.56),
        ("JPY", 0, 1234, 1234.0),
        ("KRW", 0, 50000, 50000.0),
        ("KWD", 3, 12345, 12.345),
        ("BHD", 3, 1005, 1.005),
        ("CLF", 4, 12345, 1.2345),
        ("XYZ", 2, 250, 2.5),
        ("EUR", 2, 0, 0.0),
    ],
)
def test_currency_exponent(currency: str, exp: int, minor: int, major: float) -> None:
    assert currency_exponent(currency) == exp
    assert minor_to_major(minor, currency) == major


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ({"gclid": "G", "wbraid": "W", "gbraid": "B"}, ("gclid", "G")),
        ({"wbraid": "W", "gbraid": "B"}, ("wbraid", "W")),
        ({"gbraid": "B"}, ("gbraid", "B")),
        ({"gclid": "  ", "wbraid": " W "}, ("wbraid", "W")),
        ({"gclid": None}, None),
        ({"gclid": ""}, None),
    ],
)
def test_click_id_precedence(ids: dict[str, str | None], expected: tuple[str, str] | None) -> None:
    c = conv(**{"gclid": None, **ids})
    assert pick_click_id(c) == expected


def test_hashed_phone() -> None:
    expected = hashlib.sha256(b"+905551234567").hexdigest()
    assert hash_phone_e164("+905551234567") == expected
    assert hash_phone_e164("+90 555 123-45-67") == expected
    assert hash_phone_e164("0090 (555) 123 45 67") == expected
    assert hash_phone_e164("05551234567") is None  # national format: never guessed
    assert hash_phone_e164("+0123") is None
    assert normalize_e164("+1 (650) 253-0000") == "+16502530000"
    assert len(expected) == 64 and expected == expected.lower()


def destination(cls: type[GoogleDestination], http: httpx.AsyncClient) -> GoogleDestination:
    """A destination as the uploader builds it (Google's default endpoints: MockTransport)."""
    return cls(DestinationContext(load_settings(environ={}), http, httpx.Timeout(5.0), 200))


def test_ads_conversion_shape() -> None:
    # the visitor gave no marketing consent: Google is told so (click conversions: adUserData only)
    c = conv(gbraid="B", user_identifiers=(UserIdentifier.phone("+1 650 253 0000"),), consent_scopes=("analytics",))
    out = build_ads_conversion(c, "1234567890", "987654")
    assert out == {
        "gclid": "Cj0K",
        "conversionAction": "customers/1234567890/conversionActions/987654",
        "conversionDateTime": "2026-11-02 13:05:09+00:00",
        "conversionValue": 49.9,
        "currencyCode": "EUR",
        "orderId": "o-1",
        "userIdentifiers": [{"hashedPhoneNumber": hashlib.sha256(b"+16502530000").hexdigest()}],
        "consent": {"adUserData": "DENIED"},
    }
    # resource name in the row overrides the credentials' action; unknown consent is omitted
    out2 = build_ads_conversion(
        conv(
            target="customers/1/conversionActions/55",
            user_identifiers=(UserIdentifier(IdentifierKind.PHONE_SHA256, "A" * 64),),
        ),
        "1234567890",
        "987654",
    )
    assert out2["conversionAction"] == "customers/1234567890/conversionActions/55"
    assert out2["userIdentifiers"] == [{"hashedPhoneNumber": "a" * 64}]
    assert "consent" not in out2


def test_dm_event_shape() -> None:
    c = conv(
        gclid=None, wbraid="W", user_identifiers=(UserIdentifier.phone("+16502530000"),), consent_scopes=("marketing",)
    )
    ev = build_dm_event(c)
    assert ev == {
        "transactionId": "o-1",
        "eventTimestamp": "2026-11-02T13:05:09Z",
        "eventSource": "WEB",
        "adIdentifiers": {"wbraid": "W"},
        "conversionValue": 49.9,
        "currency": "EUR",
        "userData": {"userIdentifiers": [{"phoneNumber": hashlib.sha256(b"+16502530000").hexdigest()}]},
        "consent": {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"},
    }


def test_parse_duration() -> None:
    assert parse_duration("40591s") == 40591.0
    assert parse_duration("1.5s") == 1.5
    assert parse_duration({"seconds": "3", "nanos": 500000000}) == 3.5
    assert parse_duration("soon") is None


# ---------------------------------------------------------------- reply parsing via MockTransport

CREDS = GoogleCredentials(
    client_id="cid",
    client_secret="secret",
    refresh_token="rt",
    customer_id="123-456-7890",
    conversion_action="987654",
)


def _mock(api_reply: httpx.Response, seen: list[httpx.Request]) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 3599})
        seen.append(request)
        return api_reply

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("casing", ["camel", "snake"])
async def test_ads_partial_failure_parsed_in_both_casings(casing: str) -> None:
    def k(camel: str, snake: str) -> str:
        return camel if casing == "camel" else snake

    body = {
        k("partialFailureError", "partial_failure_error"): {
            "code": 3,
            "message": "Multiple errors",
            "details": [
                {
                    "@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
                    "errors": [
                        {
                            k("errorCode", "error_code"): {
                                k("conversionUploadError", "conversion_upload_error"): "TOO_RECENT_EVENT"
                            },
                            "message": "too recent",
                            "location": {
                                k("fieldPathElements", "field_path_elements"): [
                                    {k("fieldName", "field_name"): "conversions", "index": 1},
                                    {k("fieldName", "field_name"): "gclid"},
                                ]
                            },
                        },
                        {
                            k("errorCode", "error_code"): {"conversionUploadError": "ORDER_ID_ALREADY_IN_USE"},
                            "message": "dup",
                            "location": {
                                k("fieldPathElements", "field_path_elements"): [
                                    {k("fieldName", "field_name"): "conversions", "index": 2}
                                ]
                            },
                        },
                        {
                            k("errorCode", "error_code"): {"internalError": "INTERNAL_ERROR"},
                            "message": "boom",
                            "location": {
                                k("fieldPathElements", "field_path_elements"): [
                                    {k("fieldName", "field_name"): "conversions", "index": 3}
                                ]
                            },
                        },
                    ],
                    k("requestId", "request_id"): "REQ-BODY",
                }
            ],
        },
        "results": [{"gclid": "a"}, {}, {}, {}],
        k("jobId", "job_id"): "2147489321",
    }
    seen: list[httpx.Request] = []
    http = _mock(httpx.Response(200, json=body, headers={"request-id": "REQ-HDR"}), seen)
    client = destination(GoogleAdsDestination, http)
    convs = [conv(queue_id=str(i), order_id=f"o{i}") for i in range(4)]
    res = await client.upload(CREDS, convs)
    await http.aclose()
    assert [r.kind for r in res.rows] == [
        OutcomeKind.COMPLETED,
        OutcomeKind.RETRY_AFTER_6H,
        OutcomeKind.ALREADY_EXISTS,
        OutcomeKind.RETRY,
    ]
    assert res.rows[1].error_code == "TOO_RECENT_EVENT"
    assert res.request_id == "REQ-HDR"
    sent = msgspec.json.decode(seen[0].content)
    assert sent["partialFailure"] is True
    assert seen[0].headers["authorization"] == "Bearer tok"
    assert "login-customer-id" not in seen[0].headers
    assert seen[0].url.path == "/v26/customers/1234567890:uploadClickConversions"


async def test_ads_headers_when_configured() -> None:
    seen: list[httpx.Request] = []
    http = _mock(httpx.Response(200, json={"results": [{"gclid": "x"}]}), seen)
    creds = msgspec.structs.replace(CREDS, developer_token="dev", login_customer_id="111-222-3333")
    res = await destination(GoogleAdsDestination, http).upload(creds, [conv()])
    await http.aclose()
    assert res.rows[0].kind is OutcomeKind.COMPLETED
    assert seen[0].headers["developer-token"] == "dev"
    assert seen[0].headers["login-customer-id"] == "1112223333"


async def test_ads_empty_result_without_error_is_retried() -> None:
    seen: list[httpx.Request] = []
    http = _mock(httpx.Response(200, json={"results": [{"gclid": "x"}, {}]}), seen)
    res = await destination(GoogleAdsDestination, http).upload(CREDS, [conv(order_id="a"), conv(order_id="b")])
    await http.aclose()
    assert [r.kind for r in res.rows] == [OutcomeKind.COMPLETED, OutcomeKind.RETRY]
    assert res.rows[1].error_code == "MISSING_RESULT"


async def test_dm_field_violations_name_event_indexes() -> None:
    body = {
        "error": {
            "code": 400,
            "status": "INVALID_ARGUMENT",
            "message": "Request contains an invalid argument.",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [
                        {
                            "field": "events[2].event_timestamp",
                            "reason": "EVENT_TIME_INVALID",
                            "description": "bad",
                        },
                        {"field": "events[0].userData.userIdentifiers[0]", "reason": "INVALID_SHA256_FORMAT"},
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "DM-REQ"},
            ],
        }
    }
    seen: list[httpx.Request] = []
    http = _mock(httpx.Response(400, json=body), seen)
    dm = destination(DataManagerDestination, http)
    res = await dm.upload(CREDS, [conv(order_id=f"o{i}") for i in range(4)])
    await http.aclose()
    kinds = [(r.kind, r.error_code) for r in res.rows]
    assert kinds == [
        (OutcomeKind.FAILED, "INVALID_SHA256_FORMAT"),
        (OutcomeKind.RETRY, "COLLATERAL"),
        (OutcomeKind.FAILED, "EVENT_TIME_INVALID"),
        (OutcomeKind.RETRY, "COLLATERAL"),
    ]
    assert res.rows[1].retry_delay_s == 0.0
    assert res.request_id == "DM-REQ"
    assert seen[0].url.path == "/v1/events:ingest"


async def test_rows_rejected_before_sending_cost_no_request() -> None:
    seen: list[httpx.Request] = []
    http = _mock(httpx.Response(500), seen)
    client = destination(GoogleAdsDestination, http)
    rows = [
        conv(gclid=None),
        conv(conversion_time=datetime(2026, 1, 1)),
        conv(currency="EURO"),
        conv(value_minor=-1),
        conv(order_id=""),
    ]
    res = await client.upload(CREDS, rows)
    assert [r.error_code for r in res.rows] == [
        "MISSING_CLICK_ID",
        "INVALID_CONVERSION_TIME",
        "INVALID_CURRENCY",
        "INVALID_VALUE",
        "MISSING_ORDER_ID",
    ]
    assert all(r.kind is OutcomeKind.FAILED for r in res.rows)
    assert seen == [] and client.tokens.refreshes == 0 and res.requests_sent == 0
    no_action = msgspec.structs.replace(CREDS, conversion_action="")
    res2 = await client.upload(no_action, [conv()])
    assert (res2.rows[0].kind, res2.rows[0].error_code) == (OutcomeKind.BLOCKED, "MISSING_CONVERSION_ACTION")
    await http.aclose()


def test_credentials_repr_hides_secrets() -> None:
    text = repr(CREDS)
    assert "secret" not in text and "refresh_token" not in text and "developer_token" not in text
    assert "client_id='cid'" in text
