"""The emulator on the wire: Google's shapes, validation, dedupe, exact rate limits, control API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from opsmantik_stream.emulator import EmulatorConfig, EmulatorState, create_app

pytestmark = pytest.mark.integration

BASE = "http://emu.test"
ADS = "/v26/customers/1234567890:uploadClickConversions"
ACTION = "customers/1234567890/conversionActions/987654"


class FakeClock:
    def __init__(self, t: float = 1_800_000_100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Emu:
    def __init__(self, http: httpx.AsyncClient, state: EmulatorState, clock: FakeClock) -> None:
        self.http = http
        self.state = state
        self.clock = clock
        self.token = ""

    async def login(self, refresh_token: str = "rt") -> str:
        r = await self.http.post(
            "/token",
            data={
                "grant_type": "refresh_token",
                "client_id": "c",
                "client_secret": "s",
                "refresh_token": refresh_token,
            },
        )
        assert r.status_code == 200, r.text
        self.token = r.json()["access_token"]
        return self.token

    async def ads(self, body: dict[str, Any], path: str = ADS, **headers: str) -> httpx.Response:
        h = {"authorization": f"Bearer {self.token}", **headers}
        return await self.http.post(path, json=body, headers=h)

    async def dm(self, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post("/v1/events:ingest", json=body, headers={"authorization": f"Bearer {self.token}"})


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    clock = FakeClock()
    app = create_app(EmulatorConfig(seed=3), clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        e = Emu(http, app.state.emulator, clock)
        await e.login()
        yield e


def conv(i: int, **kw: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "gclid": f"Cj0K{i}",
        "conversionAction": ACTION,
        "conversionDateTime": "2026-11-02 14:05:09+01:00",
        "conversionValue": 49.9,
        "currencyCode": "EUR",
        "orderId": f"ord-{i}",
    }
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def errors_of(body: dict[str, Any]) -> list[tuple[int | None, str, str]]:
    """(row index, oneof key, enum name) of every GoogleAdsFailure error."""
    pfe: dict[str, Any] = body.get("partialFailureError") or body["error"]
    out = []
    for d in pfe["details"]:
        for e in d.get("errors", []):
            ((key, name),) = e["errorCode"].items()
            path = e.get("location", {}).get("fieldPathElements", [])
            out.append((path[0]["index"] if path else None, key, name))
    return out


# ------------------------------------------------------------------ Google Ads wire shapes


async def test_success_shape_and_snake_case_input(emu: Emu) -> None:
    snake = {
        "gclid": "abc",
        "conversion_action": ACTION,
        "conversion_date_time": "2026-11-02 14:05:09+01:00",
        "conversion_value": 10,
        "currency_code": "USD",
        "order_id": "snake-1",
    }
    r = await emu.ads({"conversions": [conv(0), snake], "partial_failure": True})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"results", "jobId"}
    assert isinstance(body["jobId"], str) and int(body["jobId"]) >= 2**31
    assert body["results"][1] == {
        "gclid": "abc",
        "conversionAction": ACTION,
        "conversionDateTime": "2026-11-02 14:05:09+01:00",
    }
    assert r.headers["request-id"]
    assert emu.state.order_id_counts == {"ord-0": 1, "snake-1": 1}


async def test_partial_failure_shape_and_validation(emu: Emu) -> None:
    rows = [
        conv(0),
        conv(1, conversionAction=None),
        conv(2, gbraid="B2"),  # gclid + gbraid
        conv(3, gclid=None, gbraid="B3", wbraid="W3"),
        conv(4, conversionDateTime="2026-11-02T14:05:09Z"),
        conv(5, currencyCode=None),
        conv(6, gclid="TOORECENTx"),
        conv(7, conversionDateTime="2026-13-02 14:05:09+01:00"),
        conv(8, userIdentifiers=[{"hashedPhoneNumber": "not-a-hash"}]),
        conv(9, gclid=None),
    ]
    r = await emu.ads({"conversions": rows, "partialFailure": True, "jobId": 42})
    assert r.status_code == 200
    body = r.json()
    assert body["jobId"] == "42"
    assert [bool(x) for x in body["results"]] == [True] + [False] * 9
    pfe = body["partialFailureError"]
    assert pfe["code"] == 3 and "status" not in pfe
    assert pfe["message"].startswith("Multiple errors in \u2018details\u2019. First error: ")
    assert pfe["message"].endswith("at conversions[1].conversion_action")
    assert len(pfe["details"]) == 1
    failure = pfe["details"][0]
    assert failure["@type"] == "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure"
    assert failure["requestId"] == r.headers["request-id"]
    assert errors_of(body) == [
        (1, "fieldError", "REQUIRED"),
        (2, "fieldError", "VALUE_MUST_BE_UNSET"),
        (3, "conversionUploadError", "GBRAID_WBRAID_BOTH_SET"),
        (4, "dateError", "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET"),
        (5, "fieldError", "REQUIRED"),
        (6, "conversionUploadError", "TOO_RECENT_EVENT"),
        (7, "dateError", "INVALID_FIELD_VALUES_IN_DATE_TIME"),
        (8, "conversionUploadError", "INVALID_USER_IDENTIFIER"),
        (9, "fieldError", "REQUIRED"),
    ]
    first = failure["errors"][0]["location"]["fieldPathElements"]
    assert first == [{"fieldName": "conversions", "index": 1}, {"fieldName": "conversion_action"}]
    assert failure["errors"][5]["trigger"] == {"stringValue": "TOORECENTx"}
    assert emu.state.order_id_counts == {"ord-0": 1}


async def test_request_level_errors(emu: Emu) -> None:
    r = await emu.ads({"conversions": [conv(0)]})  # partialFailure missing
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    r = await emu.ads({"conversions": [conv(i) for i in range(2001)], "partialFailure": True})
    assert r.status_code == 400
    assert errors_of(r.json()) == [(None, "conversionUploadError", "TOO_MANY_CONVERSIONS_IN_REQUEST")]
    assert r.json()["error"]["details"][0]["requestId"] == r.headers["request-id"]
    r = await emu.ads({"conversions": [conv(0)], "partialFailure": True, "jobId": 0})
    assert errors_of(r.json()) == [(None, "conversionUploadError", "INVALID_JOB_ID")]
    r = await emu.ads({"conversions": [conv(0, conversionValue="12")], "partialFailure": True})
    assert r.status_code == 400
    assert r.json()["error"]["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    r = await emu.ads(
        {"conversions": [conv(0)], "partialFailure": True}, path="/v21/customers/1:uploadClickConversions"
    )
    assert r.status_code == 400 and errors_of(r.json()) == [(None, "requestError", "UNSUPPORTED_VERSION")]
    r = await emu.ads({"conversions": []}, path="/v99/customers/1:uploadClickConversions")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    r = await emu.ads({"conversions": [conv(0)], "partialFailure": True}, **{"login-customer-id": "12-3"})
    assert r.status_code == 400 and errors_of(r.json()) == [(None, "headerError", "INVALID_LOGIN_CUSTOMER_ID")]


async def test_auth_errors(emu: Emu) -> None:
    ok = {"conversions": [conv(0)], "partialFailure": True}
    r = await emu.http.post(ADS, json=ok)
    assert r.status_code == 401
    err = r.json()["error"]
    assert (err["code"], err["status"]) == (401, "UNAUTHENTICATED")
    assert errors_of(r.json()) == [(None, "authenticationError", "OAUTH_TOKEN_HEADER_INVALID")]
    r = await emu.http.post(ADS, json=ok, headers={"authorization": "Bearer forged"})
    assert errors_of(r.json()) == [(None, "authenticationError", "OAUTH_TOKEN_INVALID")]
    emu.clock.t += 3600
    r = await emu.ads(ok)
    assert errors_of(r.json()) == [(None, "authenticationError", "OAUTH_TOKEN_EXPIRED")]
    r = await emu.http.post("/v1/events:ingest", json={}, headers={"authorization": "Bearer forged"})
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"


async def test_token_endpoint(emu: Emu) -> None:
    emu.state.update_config({"invalid_grant_tokens": ["gone"], "client_id": "c", "token_ttl_s": 120})
    r = await emu.http.post(
        "/token",
        data={"grant_type": "refresh_token", "client_id": "c", "client_secret": "s", "refresh_token": "gone"},
    )
    assert r.status_code == 400 and r.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    r = await emu.http.post("/token", data={"grant_type": "refresh_token", "client_id": "x", "refresh_token": "rt"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = await emu.http.post("/token", data={"grant_type": "password", "client_id": "c"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = await emu.http.post(
        "/token",
        data={"grant_type": "refresh_token", "client_id": "c", "client_secret": "s", "refresh_token": "rt"},
    )
    body = r.json()
    assert body["expires_in"] == 120 and body["token_type"] == "Bearer" and "adwords" in body["scope"]
    assert emu.state.token_requests == 5  # the fixture's login + 4 here
    assert emu.state.token_requests_by_client["c"] == 4


async def test_allowlist_row_mode(emu: Emu) -> None:
    emu.state.update_config({"not_allowlisted": ["1234567890"], "not_allowlisted_mode": "row"})
    r = await emu.ads({"conversions": [conv(0), conv(1)], "partialFailure": True})
    assert r.status_code == 200
    assert errors_of(r.json()) == [
        (0, "notAllowlistedError", "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"),
        (1, "notAllowlistedError", "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"),
    ]


async def test_dedupe(emu: Emu) -> None:
    body = {"conversions": [conv(0), conv(1)], "partialFailure": True}
    assert "partialFailureError" not in (await emu.ads(body)).json()
    r = await emu.ads({"conversions": [conv(1), conv(2)], "partialFailure": True})
    assert errors_of(r.json()) == [(0, "conversionUploadError", "ORDER_ID_ALREADY_IN_USE")]
    # without an order id: same click + same instant (other offset notation) is a duplicate
    no_order = conv(5, orderId=None)
    assert "partialFailureError" not in (await emu.ads({"conversions": [no_order], "partialFailure": True})).json()
    same_instant = conv(5, orderId=None, conversionDateTime="2026-11-02 13:05:09+00:00")
    r = await emu.ads({"conversions": [same_instant], "partialFailure": True})
    assert errors_of(r.json()) == [(0, "conversionUploadError", "CLICK_CONVERSION_ALREADY_EXISTS")]
    # duplicates inside one request fail every copy
    r = await emu.ads({"conversions": [conv(9), conv(9)], "partialFailure": True})
    assert errors_of(r.json()) == [
        (0, "conversionUploadError", "DUPLICATE_ORDER_ID"),
        (1, "conversionUploadError", "DUPLICATE_ORDER_ID"),
    ]
    r = await emu.ads({"conversions": [conv(9)], "partialFailure": True, "validateOnly": True})
    assert "results" not in r.json() and "ord-9" not in emu.state.order_id_counts
    assert emu.state.order_id_counts == {"ord-0": 1, "ord-1": 1, "ord-2": 1}
    assert emu.state.snapshot()["duplicate_order_ids"] == []


async def test_large_request_is_accepted(emu: Emu) -> None:
    r = await emu.ads({"conversions": [conv(i) for i in range(2000)], "partialFailure": True})
    assert r.status_code == 200 and len(r.json()["results"]) == 2000
    assert emu.state.snapshot(include_conversions=False)["accepted_count"] == 2000


async def test_seeded_row_failures_are_reproducible(emu: Emu) -> None:
    async def run() -> list[int | None]:
        emu.state.reset()
        emu.state.update_config({"row_failure_rate": 0.5})
        r = await emu.ads({"conversions": [conv(i) for i in range(40)], "partialFailure": True})
        return [e[0] for e in errors_of(r.json())]

    first = await run()
    assert 5 < len(first) < 35
    assert await run() == first


# ------------------------------------------------------------------ rate limits (deterministic clock)


async def test_rate_limit_exact_per_one_second_window(emu: Emu) -> None:
    emu.state.update_config({"rate_rps": 3})
    statuses: dict[int, list[int]] = {}
    base = 1_800_000_200
    for sec in range(base, base + 6):
        for frac in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999):
            emu.clock.t = sec + frac
            r = await emu.ads({"conversions": [conv(sec * 10 + int(frac * 1000))], "partialFailure": True})
            statuses.setdefault(sec, []).append(r.status_code)
            if r.status_code == 429:
                err = r.json()["error"]
                assert err["status"] == "RESOURCE_EXHAUSTED"
                e = err["details"][0]["errors"][0]
                assert e["errorCode"] == {"quotaError": "RESOURCE_TEMPORARILY_EXHAUSTED"}
                q = e["details"]["quotaErrorDetails"]
                assert q["rateScope"] == "ACCOUNT" and q["retryDelay"] == "1s"
    for codes in statuses.values():
        assert codes == [200, 200, 200, 429, 429, 429, 429]
    snap = (await emu.http.get("/_emulator/state", params={"conversions": "false"})).json()
    admitted = snap["admitted_requests_per_second"]["1234567890"]
    assert admitted == {str(s): 3 for s in range(base, base + 6)}
    assert snap["max_admitted_requests_per_second"]["1234567890"] == 3
    assert snap["requests_per_second"]["1234567890"] == {str(s): 7 for s in range(base, base + 6)}


async def test_account_rate_override_is_per_account(emu: Emu) -> None:
    emu.state.update_config({"rate_rps": 1, "account_rates": {"1234567890": {"rps": 2}}})
    codes = [(await emu.ads({"conversions": [conv(i)], "partialFailure": True})).status_code for i in range(3)]
    assert codes == [200, 200, 429]
    other = "/v26/customers/2222222222:uploadClickConversions"
    body = {
        "conversions": [conv(9, conversionAction="customers/2222222222/conversionActions/1")],
        "partialFailure": True,
    }
    assert [(await emu.ads(body, path=other)).status_code for _ in range(2)] == [200, 429]


async def test_data_manager_rate_limit_has_retry_info(emu: Emu) -> None:
    emu.state.update_config({"rate_rps": 1})
    assert (await emu.dm(dm_body([dm_event(0)]))).status_code == 200
    r = await emu.dm(dm_body([dm_event(1)]))
    assert r.status_code == 429
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in r.json()["error"]["details"]}
    assert details["RetryInfo"]["retryDelay"] == "1s"
    assert details["ErrorInfo"]["reason"] == "RATE_LIMIT_EXCEEDED" and "quota_limit" in details["ErrorInfo"]["metadata"]
    assert details["RequestInfo"]["requestId"] == r.headers["request-id"]


# ------------------------------------------------------------------ Data Manager


def dm_event(i: int, **kw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "transactionId": f"txn-{i}",
        "eventTimestamp": "2026-11-02T13:05:09Z",
        "eventSource": "WEB",
        "adIdentifiers": {"gclid": f"Cj0K{i}"},
        "conversionValue": 49.9,
        "currency": "EUR",
        "consent": {"adUserData": "CONSENT_GRANTED"},
    }
    ev.update(kw)
    return {k: v for k, v in ev.items() if v is not None}


def dm_body(events: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "destinations": [
            {
                "reference": "d",
                "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
                "productDestinationId": "987654",
            }
        ],
        "events": events,
    }
    body.update(kw)
    return body


async def test_dm_fast_fail_names_event_indexes(emu: Emu) -> None:
    events = [
        dm_event(0),
        dm_event(1, eventTimestamp="2026-11-02 13:05:09+00:00"),
        dm_event(2, adIdentifiers=None),
        dm_event(3, currency=None),
        dm_event(4, adIdentifiers={"gclid": "a", "gbraid": "b"}),
        dm_event(5, consent={"adUserData": "GRANTED"}),
        dm_event(6, userData={"userIdentifiers": [{"phoneNumber": "a" * 64}]}),
    ]
    r = await emu.dm(dm_body(events))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT"
    bad = next(d for d in err["details"] if d["@type"].endswith("google.rpc.BadRequest"))
    assert [(v["field"], v["reason"]) for v in bad["fieldViolations"]] == [
        ("events[1].event_timestamp", "EVENT_TIME_INVALID"),
        ("events[2]", "NO_IDENTIFIERS_PROVIDED"),
        ("events[3].currency", "INVALID_CURRENCY_CODE"),
        ("events[4].ad_identifiers", "INVALID_FORMAT"),
        ("events[5].consent", "INVALID_FORMAT"),
        ("encoding", "INVALID_ENCODING"),
    ]
    assert emu.state.accepted == []  # all or nothing
    r = await emu.dm(dm_body([dm_event(i) for i in range(2001)]))
    assert r.status_code == 400 and "TOO_MANY_EVENTS" in r.text


async def test_dm_adjustment_and_request_status(emu: Emu) -> None:
    emu.state.update_config({"dm_processing_s": 30})
    r = await emu.dm(dm_body([dm_event(0), dm_event(1, adIdentifiers={"gclid": "EXPIREDx"})]))
    assert r.status_code == 200
    rid = r.json()["requestId"]
    assert r.headers["request-id"] == rid
    auth = {"authorization": f"Bearer {emu.token}"}
    st = (await emu.http.get("/v1/requestStatus:retrieve", params={"requestId": rid}, headers=auth)).json()
    assert st["requestStatusPerDestination"][0]["requestStatus"] == "PROCESSING"
    emu.clock.t += 31
    st = (await emu.http.get("/v1/requestStatus:retrieve", params={"requestId": rid}, headers=auth)).json()
    dest = st["requestStatusPerDestination"][0]
    assert dest["requestStatus"] == "PARTIAL_SUCCESS"
    assert dest["errorInfo"]["errorCounts"] == [{"recordCount": "1", "reason": "PROCESSING_ERROR_REASON_EVENT_TOO_OLD"}]
    assert dest["eventsIngestionStatus"] == {"recordCount": "2"}
    # the same transaction id again: an adjustment (200), value overwritten, still one conversion
    r = await emu.dm(dm_body([dm_event(0, conversionValue=10.0)]))
    assert r.status_code == 200
    assert emu.state.order_id_counts == {"txn-0": 1}
    assert emu.state.adjustments == {"txn-0": 1}
    assert emu.state.accepted[0]["value"] == 10.0
    r = await emu.http.get("/v1/requestStatus:retrieve", params={"requestId": "nope"}, headers=auth)
    assert r.status_code == 400 and "INVALID_REQUEST_ID" in r.text
    r = await emu.dm(dm_body([dm_event(7)], validateOnly=True))
    vid = r.json()["requestId"]
    r = await emu.http.get("/v1/requestStatus:retrieve", params={"requestId": vid}, headers=auth)
    assert r.status_code == 400


# ------------------------------------------------------------------ control API


async def test_control_api(emu: Emu) -> None:
    r = await emu.http.post("/_emulator/config", json={"outage": True, "latency_ms": 0})
    assert r.status_code == 200 and r.json()["outage"] is True
    r = await emu.ads({"conversions": [conv(0)], "partialFailure": True})
    assert r.status_code == 503 and r.json()["error"]["status"] == "UNAVAILABLE"
    assert (await emu.http.post("/_emulator/config", json={"no_such_knob": 1})).status_code == 400
    assert (await emu.http.post("/_emulator/config", json={"rate_rps": "fast"})).status_code == 400
    await emu.http.post("/_emulator/config", json={"outage": False})
    assert (await emu.ads({"conversions": [conv(0)], "partialFailure": True})).status_code == 200
    state = (await emu.http.get("/_emulator/state")).json()
    assert state["accepted_count"] == 1 and state["conversions"][0]["order_id"] == "ord-0"
    assert state["responses_by_status"] == {"200": 1, "503": 1}
    assert (await emu.http.get("/_emulator/config")).json()["outage"] is False
    assert (await emu.http.post("/_emulator/reset")).json() == {"ok": True}
    state = (await emu.http.get("/_emulator/state")).json()
    assert state["accepted_count"] == 0 and state["order_id_counts"] == {}
    # tokens survive a plain reset, not a full one
    assert (await emu.ads({"conversions": [conv(0)], "partialFailure": True})).status_code == 200
    await emu.http.post("/_emulator/reset", json={"tokens": True})
    assert (await emu.ads({"conversions": [conv(0)], "partialFailure": True})).status_code == 401


def test_cli_help_documents_every_knob() -> None:
    import argparse

    from opsmantik_stream.emulator import add_arguments
    from opsmantik_stream.emulator.cli import build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert all(a.help for a in parser._actions)
    args = parser.parse_args(
        [
            "--rate-rps",
            "5",
            "--account-rate",
            "123=2:100",
            "--manager-link",
            "123=9,8",
            "--outage",
            "--port",
            "0",
        ]
    )
    cfg = build_config(args)
    assert cfg.rate_rps == 5 and cfg.outage and cfg.account_rates["123"].cpm == 100
    assert cfg.manager_links == {"123": ["9", "8"]}
    # every config field is reachable from the command line
    dests = {a.dest for a in parser._actions}
    mapping = {
        "token_ttl_s": "token_ttl",
        "account_rates": "account_rate",
        "refresh_tokens": "refresh_token",
        "invalid_grant_tokens": "invalid_grant_token",
        "ads_only_refresh_tokens": "ads_only_refresh_token",
        "conversion_actions": "conversion_action",
        "manager_links": "manager_link",
        "throttled_accounts": "throttle",
    }
    for f in EmulatorConfig.__struct_fields__:
        assert mapping.get(f, f) in dests, f
