"""Bad input is a clear 4xx and changes nothing (issue 14): invalid UTF-8 on every JSON route,
out-of-range integers and NUL characters on the operator routes, and call events that lack
``event_id`` or carry a NUL in the fingerprint."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from tests.integration._leads_support import auth, call_body, make_intent, make_session, signed_headers

pytestmark = pytest.mark.integration

# JSON bodies whose strings hold bytes that are not UTF-8 (in fields the route reads: a
# decoder may skip an unknown key's value without looking at it)
BAD_UTF8_SYNC = b'{"s": "\xff\xfe", "u": "https://shop.example/caf\xe9", "consent": ["analytics"]}'


def _bad_utf8(field: str) -> bytes:
    return b'{"' + field.encode() + b'": "caf\xe9\xff"}'


TABLES = (
    "calls",
    "call_actions",
    "conversations",
    "conversation_links",
    "sales",
    "offline_conversion_queue",
    "audit_log",
    "provider_credentials",
    "sessions",
    "events",
    "ingest_idempotency",
)


async def _counts(pool: asyncpg.Pool) -> dict[str, int]:
    return {t: int(await pool.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}


async def _tenant_counts(pool: asyncpg.Pool, site: dict[str, Any]) -> dict[str, int]:
    """``_counts`` with the audit log narrowed to the site: the stack's Maintenance actor
    audits its own jobs (retention, auto-approve) whenever it gets to run."""
    counts = await _counts(pool)
    counts["audit_log"] = int(
        await pool.fetchval("SELECT count(*) FROM audit_log WHERE site_id = $1", uuid.UUID(site["site_id"]))
    )
    return counts


async def _seed(pool: asyncpg.Pool, make_site: Any, make_token: Any) -> dict[str, Any]:
    site = await make_site()
    token = await make_token(site["public_id"], "owner")
    session = await make_session(pool, site["site_id"], fingerprint="fp-seed")
    call_id = await make_intent(pool, site["site_id"], session)
    h = auth(token)
    return {"site": site, "token": token, "h": h, "session": session, "call_id": call_id}


async def test_invalid_utf8_is_a_4xx_on_every_json_route(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    s = await _seed(pool, make_site, make_token)
    site, h = s["site"], s["h"]
    conv = await client.post(
        "/api/conversations", json={"site": site["public_id"], "primary_call_id": s["call_id"]}, headers=h
    )
    sale = await client.post(
        "/api/sales",
        json={"site": site["public_id"], "amount_minor": 100, "occurred_at": "2026-01-01T00:00:00Z"},
        headers=h,
    )
    conv_id, sale_id = conv.json()["conversation"]["id"], sale.json()["sale"]["id"]
    before = await _counts(pool)
    json_h = {**h, "Content-Type": "application/json"}
    call_event = _bad_utf8("site_id")
    routes: list[tuple[str, str, bytes, dict[str, str]]] = [
        (
            "POST",
            "/api/sync",
            BAD_UTF8_SYNC,
            {"Content-Type": "application/json", "Origin": f"https://{site['domain']}"},
        ),
        ("POST", "/api/sync", BAD_UTF8_SYNC, {"Content-Type": "application/json"}),
        ("POST", "/api/call-event", call_event, signed_headers(site, call_event)),
        ("POST", f"/api/calls/{s['call_id']}/actions", _bad_utf8("action"), json_h),
        ("POST", "/api/conversations", _bad_utf8("site"), json_h),
        ("POST", f"/api/conversations/{conv_id}/links", _bad_utf8("entity_type"), json_h),
        ("POST", f"/api/conversations/{conv_id}/resolve", _bad_utf8("status"), json_h),
        ("POST", "/api/sales", _bad_utf8("site"), json_h),
        ("POST", "/api/oci/requeue", _bad_utf8("site"), json_h),
        ("POST", "/api/oci/breaker/reset", _bad_utf8("site"), json_h),
        ("PUT", f"/api/sites/{site['public_id']}/credentials", _bad_utf8("customer_id"), json_h),
    ]
    for method, path, content, headers in routes:
        resp = await client.request(method, path, content=content, headers=headers)
        assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text)
        assert resp.headers["x-opsmantik-error-code"] == "invalid_json", (path, resp.text)
    # the confirm route takes no body; the sale is untouched by everything above
    assert (await pool.fetchval("SELECT status FROM sales WHERE id = $1", uuid.UUID(sale_id))) == "DRAFT"
    assert await _counts(pool) == before


async def test_operator_routes_refuse_out_of_range_integers_and_nul(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    s = await _seed(pool, make_site, make_token)
    site, h, call_id = s["site"], s["h"], s["call_id"]
    pid = site["public_id"]
    conv = await client.post("/api/conversations", json={"site": pid, "primary_call_id": call_id}, headers=h)
    conv_id = conv.json()["conversation"]["id"]
    before = await _counts(pool)
    sale = {"site": pid, "amount_minor": 100, "occurred_at": "2026-01-01T00:00:00Z"}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/api/sales", {**sale, "amount_minor": 2**63}, "amount_minor"),
        ("/api/sales", {**sale, "amount_minor": 2**64 + 1}, "amount_minor"),
        ("/api/sales", {**sale, "notes": "a\x00b"}, "notes"),
        ("/api/sales", {**sale, "external_ref": "ref\x00"}, "external_ref"),
        ("/api/sales", {**sale, "occurred_at": "2026-01-01\x00"}, "occurred_at"),
        ("/api/sales", {**sale, "site": pid + "\x00"}, "site"),
        (f"/api/calls/{call_id}/actions", {"action": "seal", "value_minor": 2**63}, "value_minor"),
        (f"/api/calls/{call_id}/actions", {"action": "junk", "note": "\x00"}, "note"),
        (f"/api/calls/{call_id}/actions", {"action": "ju\x00nk"}, "action"),
        (f"/api/calls/{call_id}/actions", {"action": "seal", "score": 2**63}, "score"),
        ("/api/conversations", {"site": pid, "primary_call_id": call_id, "note": "x\x00"}, "note"),
        (f"/api/conversations/{conv_id}/links", {"entity_type": "call\x00", "entity_id": call_id}, "entity_type"),
        (f"/api/conversations/{conv_id}/resolve", {"status": "WON", "note": "\x00"}, "note"),
    ]
    for path, body, field in cases:
        resp = await client.post(path, json=body, headers=h)
        assert resp.status_code == 422, (path, body, resp.status_code, resp.text)
        assert resp.headers["x-opsmantik-error-code"] == f"validation_error:{field}", (path, resp.text)
    # times PostgreSQL could store but Python cannot convert to UTC, and NUL in query strings
    for extreme in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        resp = await client.post("/api/sales", json={**sale, "occurred_at": extreme}, headers=h)
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_occurred_at", resp.text
        resp = await client.get(f"/api/sites/{pid}/intents", params={"from": extreme}, headers=h)
        assert resp.status_code == 400, resp.text
    resp = await client.get("/api/sales", params={"site": pid, "status": "DRAFT\x00"}, headers=h)
    assert resp.status_code == 400
    # a dead letter id beyond its bigserial column: 422 here, not a failed query in the partition
    for bad_id in (2**63, 0):
        resp = await client.post(f"/api/dead-letters/{bad_id}/replay", params={"site": pid}, headers=h)
        assert resp.status_code == 422, resp.text
        assert resp.headers["x-opsmantik-error-code"] == "validation_error:dead_letter_id"
    assert await _counts(pool) == before


async def test_malformed_site_ids_cost_no_query_even_for_platform_admins(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_token: Any
) -> None:
    admin = auth(await make_token(None, None, platform_admin=True))
    for bad in ("x\x00y", "A" * 32, "0" * 31, "../etc"):
        for path, params in (
            (f"/api/sites/{quote(bad, safe='')}", None),
            ("/api/billing/usage", {"site": bad}),
            ("/api/oci/queue", {"site": bad}),
            ("/api/sales", {"site": bad}),
        ):
            resp = await client.get(path, params=params, headers=admin)
            assert resp.status_code in (404, 422), (bad, path, resp.status_code, resp.text)


async def test_call_event_without_event_id_or_with_nul_is_422_and_stores_nothing(
    stack_client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any
) -> None:
    site = await make_site()
    await make_session(pool, site["site_id"], fingerprint="fp")
    before = await _tenant_counts(pool, site)
    bodies = {
        "event_id": call_body(site, "fp", event_id=None),
        "fingerprint": call_body(site, "fp\x00"),
        "phone_number": call_body(site, "fp", phone_number="+90\x00555"),
        "intent_stamp": call_body(site, "fp", intent_stamp="s\x00"),
    }
    for field, body in bodies.items():
        for _attempt in range(2):  # a retry gets the same answer (not a 503 "try again")
            resp = await stack_client.post("/api/call-event", content=body, headers=signed_headers(site, body))
            assert resp.status_code == 422, (field, resp.status_code, resp.text)
            assert resp.headers["x-opsmantik-error-code"] == f"validation_error:{field}"
            assert "retry-after" not in resp.headers
    assert await _tenant_counts(pool, site) == before


class _CountingPool:
    """The real pool, with a count of the queries a route sends through it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.queries = 0

    async def fetchrow(self, *args: Any, **kw: Any) -> Any:
        self.queries += 1
        return await self._pool.fetchrow(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


async def test_unknown_call_event_sites_cost_bounded_queries(settings: Any, pool: asyncpg.Pool, make_site: Any) -> None:
    from gateway.app import create_app
    from gateway.context import AppContext

    counting = _CountingPool(pool)
    cfg = settings.with_overrides(call_event_lookup_rate_limit_per_min=5)
    app = create_app(AppContext(settings=cfg, pool=counting, ray_enabled=False))  # type: ignore[arg-type]
    site = await make_site()
    body = call_body(site, "fp")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        # a malformed site id is refused without a query
        for bad in ("nope", "x" * 32, "' OR 1=1 --"):
            resp = await c.post(
                "/api/call-event", content=body, headers={**signed_headers(site, body), "X-Ops-Site-Id": bad}
            )
            assert resp.status_code == 401
        assert counting.queries == 0
        # the same unknown id again and again: one query (remembered as unknown)
        unknown = uuid.uuid4().hex
        for _ in range(10):
            resp = await c.post(
                "/api/call-event", content=body, headers={**signed_headers(site, body), "X-Ops-Site-Id": unknown}
            )
            assert resp.status_code == 401
        assert counting.queries == 1
        # fresh made-up ids: at most the client's look-up budget, then 429 without a query
        codes = []
        for _ in range(10):
            resp = await c.post(
                "/api/call-event",
                content=body,
                headers={**signed_headers(site, body), "X-Ops-Site-Id": uuid.uuid4().hex},
            )
            codes.append(resp.status_code)
        assert codes.count(401) == 4 and codes.count(429) == 6, codes
        assert counting.queries == 5
    assert json.loads(body)["event_id"]


async def test_signed_consent_shares_the_bounded_site_lookups(
    settings: Any, pool: asyncpg.Pool, make_site: Any
) -> None:
    """/api/consent authenticates like call events (gateway.signed): made-up site ids cost at
    most the client's look-up budget, and a malformed one no query (it queried per request)."""
    from gateway.app import create_app
    from gateway.context import AppContext

    counting = _CountingPool(pool)
    cfg = settings.with_overrides(call_event_lookup_rate_limit_per_min=3)
    app = create_app(AppContext(settings=cfg, pool=counting, ray_enabled=False))  # type: ignore[arg-type]
    site = await make_site()
    body = json.dumps(
        {"site_id": site["public_id"], "identifier_type": "fingerprint", "identifier_value": "fp", "scopes": []}
    ).encode()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        resp = await c.post("/api/consent", content=body, headers={**signed_headers(site, body), "X-Ops-Site-Id": "x"})
        assert resp.status_code == 401 and counting.queries == 0
        codes = []
        for _ in range(6):
            headers = {**signed_headers(site, body), "X-Ops-Site-Id": uuid.uuid4().hex}
            codes.append((await c.post("/api/consent", content=body, headers=headers)).status_code)
    assert codes == [401, 401, 401, 429, 429, 429]
    assert counting.queries == 3
