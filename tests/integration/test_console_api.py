"""The console's sign-in (one-time links, cookie sessions, CSRF) and its door to the API:
requests run with the signed-in user's token, roles and row-level security, nothing more."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream.console import signin
from opsmantik_stream.jobs import run_job
from tests.integration._leads_support import auth, make_intent, make_session

pytestmark = pytest.mark.integration

SIGNIN = {"X-OpsMantik-Console": "1"}


async def _link(pool: asyncpg.Pool, email: str, ttl_s: int = 900) -> str:
    async with pool.acquire() as conn:
        return str((await signin.create_link(conn, email=email, ttl_s=ttl_s))["token"])


async def _signed_in(client: httpx.AsyncClient, pool: asyncpg.Pool, email: str) -> str:
    """Sign ``client`` in through a link; returns the session's CSRF token."""
    r = await client.post("/console/session", json={"link": await _link(pool, email)}, headers=SIGNIN)
    assert r.status_code == 200, r.text
    return str(r.json()["csrf"])


async def test_a_link_signs_in_once_into_an_httponly_strict_cookie(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    await make_token(site["public_id"], "operator", email="op@example.com")
    link = await _link(pool, "OP@example.com")
    assert link.startswith("olnk_")
    # only the hash is stored
    stored = await pool.fetchval("SELECT token_sha256 FROM private.console_links")
    assert stored == hashlib.sha256(link.encode()).hexdigest()

    # without the console header (a cross-site form post) nothing happens
    r = await client.post("/console/session", json={"link": link})
    assert r.status_code == 403 and r.json()["error"] == "csrf_required"
    assert await pool.fetchval("SELECT used_at FROM private.console_links") is None

    r = await client.post("/console/session", json={"link": link}, headers=SIGNIN)
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("opsm_console=opsm_")
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "path=/console" in lowered
    csrf = r.json()["csrf"]

    me = await client.get("/console/session")
    assert me.status_code == 200
    assert me.json()["email"] == "op@example.com" and me.json()["csrf"] == csrf
    assert "leads:operate" in me.json()["roles"]["operator"]

    # single use: a second browser cannot use the same link
    async with httpx.AsyncClient(transport=client._transport, base_url="http://testserver") as other:
        again = await other.post("/console/session", json={"link": link}, headers=SIGNIN)
        assert again.status_code == 401 and again.json()["error"] == "invalid_link"
        # an expired link fails the same way
        stale = await _link(pool, "op@example.com", ttl_s=60)
        await pool.execute(
            "UPDATE private.console_links SET created_at = now() - interval '2 hours', "
            "expires_at = now() - interval '1 hour' WHERE token_sha256 = $1",
            hashlib.sha256(stale.encode()).hexdigest(),
        )
        expired = await other.post("/console/session", json={"link": stale}, headers=SIGNIN)
        assert expired.status_code == 401 and expired.json()["error"] == "invalid_link"
        assert (await other.get("/console/session")).status_code == 401
    audit = await pool.fetch("SELECT action, payload FROM audit_log WHERE action LIKE 'console.%' ORDER BY id")
    assert [a["action"] for a in audit] == ["console.link_create", "console.sign_in", "console.link_create"]
    assert link not in str([dict(a) for a in audit])


async def test_unknown_user_and_bad_bodies_are_clear_4xx(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(signin.SignInError) as info:
            await signin.create_link(conn, email="nobody@example.com", ttl_s=900)
    assert info.value.code == "user_not_found"
    # neither or both is a rule of the route (400); a body off its schema is 422 as everywhere
    for body, status in (({}, 400), ({"link": "a", "token": "b"}, 400), ({"link": 5}, 422), ({"other": 1}, 422)):
        r = await client.post("/console/session", json=body, headers=SIGNIN)
        assert r.status_code == status, (body, r.text)
    r = await client.post("/console/session", json={"token": "opsm_nope"}, headers=SIGNIN)
    assert r.status_code == 401
    r = await client.post("/console/session", json={"link": "olnk_" + "x" * 43}, headers=SIGNIN)
    assert r.status_code == 401 and r.json()["error"] == "invalid_link"


async def test_console_calls_run_with_the_users_roles_only(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site_a, site_b = await make_site(), await make_site()
    admin = await make_token(None, None, platform_admin=True)
    await make_token(site_a["public_id"], "analyst", email="analyst@example.com")
    session = await make_session(pool, site_a["site_id"])
    intent = await make_intent(pool, site_a["site_id"], session)
    csrf = await _signed_in(client, pool, "analyst@example.com")

    r = await client.get(f"/console/api/sites/{site_a['public_id']}/leads")
    assert r.status_code == 200 and [lead["id"] for lead in r.json()["leads"]] == [intent]
    # the browser's own Authorization header is dropped: the session's token decides
    r = await client.get(f"/console/api/sites/{site_b['public_id']}/leads", headers=auth(admin))
    assert r.status_code == 403
    # state changes need the CSRF token ...
    r = await client.post(f"/console/api/calls/{intent}/actions", json={"action": "junk"})
    assert r.status_code == 403 and r.json()["error"] == "csrf_failed"
    r = await client.post(
        f"/console/api/calls/{intent}/actions", json={"action": "junk"}, headers={"X-OpsMantik-CSRF": "0" * 64}
    )
    assert r.status_code == 403 and r.json()["error"] == "csrf_failed"
    # ... and then the API answers as it would to the analyst's own token
    r = await client.post(
        f"/console/api/calls/{intent}/actions", json={"action": "junk"}, headers={"X-OpsMantik-CSRF": csrf}
    )
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert await pool.fetchval("SELECT status FROM calls WHERE id = $1", uuid.UUID(intent)) == "intent"
    # only /api routes are reachable, and nothing without a session
    for sneaky in ("/console/api/sites/%2E%2E/%2E%2E/metrics", "/console/api/%2E/me", "/console/api/sites//leads"):
        r = await client.get(sneaky)
        assert r.status_code == 404 and r.json()["error"] == "not_found", sneaky
    async with httpx.AsyncClient(transport=client._transport, base_url="http://testserver") as anon:
        r = await anon.get(f"/console/api/sites/{site_a['public_id']}/leads")
        assert r.status_code == 401 and r.json()["error"] == "console_signed_out"


async def test_an_operator_works_a_lead_through_the_console(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    await make_token(site["public_id"], "operator", email="op@example.com")
    session = await make_session(pool, site["site_id"])
    intent = await make_intent(pool, site["site_id"], session)
    csrf = await _signed_in(client, pool, "op@example.com")
    r = await client.post(
        f"/console/api/calls/{intent}/actions",
        json={"action": "seal", "value_minor": 150_00, "currency": "EUR"},
        headers={"X-OpsMantik-CSRF": csrf},
    )
    assert r.status_code == 200, r.text
    assert r.json()["conversion"]["enqueued"] is True
    lead = (await client.get(f"/console/api/sites/{site['public_id']}/leads/{intent}")).json()["lead"]
    assert lead["status"] == "confirmed" and lead["conversion"]["status"] == "QUEUED"
    assert "undo" in lead["allowed_actions"] and "seal" not in lead["allowed_actions"]
    actor = await pool.fetchval("SELECT actor_id FROM call_actions WHERE call_id = $1", uuid.UUID(intent))
    assert actor == await pool.fetchval("SELECT id::text FROM users WHERE email = 'op@example.com'")


async def test_sign_out_and_expiry_revoke_the_session_token(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Any, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    own = await make_token(site["public_id"], "operator", email="op@example.com")
    # signing in with a token works with a fresh session token: signing out keeps the user's own
    r = await client.post("/console/session", json={"token": own}, headers=SIGNIN)
    assert r.status_code == 200
    session_token = client.cookies["opsm_console"]
    assert session_token != own
    assert (await client.get("/api/me", headers=auth(session_token))).status_code == 200
    assert (await client.delete("/console/session")).status_code == 403  # no CSRF header
    r = await client.delete("/console/session", headers={"X-OpsMantik-CSRF": r.json()["csrf"]})
    assert r.status_code == 200 and "opsm_console=" in r.headers["set-cookie"]
    assert (await client.get("/api/me", headers=auth(session_token))).status_code == 401
    assert (await client.get("/api/me", headers=auth(own))).status_code == 200

    # an expired session: refused at once, and the job revokes tokens of expired sessions
    csrf = await _signed_in(client, pool, "op@example.com")
    second = client.cookies["opsm_console"]
    await pool.execute(
        "UPDATE private.console_sessions SET created_at = now() - interval '2 days',"
        " expires_at = now() - interval '1 s' WHERE ended_at IS NULL"
    )
    r = await client.get(f"/console/api/sites/{site['public_id']}/leads", headers={"X-OpsMantik-CSRF": csrf})
    assert r.status_code == 401
    assert (await client.get("/api/me", headers=auth(second))).status_code == 401
    third = await _signed_in(client, pool, "op@example.com")
    assert third
    third_token = client.cookies["opsm_console"]
    await pool.execute(
        "UPDATE private.console_sessions SET created_at = now() - interval '2 days',"
        " expires_at = now() - interval '1 s' WHERE ended_at IS NULL"
    )
    result = await run_job("console_sessions", pool, settings, now=dt.datetime.now(dt.UTC))
    assert result["revoked"] == 1
    assert (await client.get("/api/me", headers=auth(third_token))).status_code == 401


async def test_console_page_and_assets_are_served_with_a_strict_policy(client: httpx.AsyncClient) -> None:
    page = await client.get("/console")
    assert page.status_code == 200 and "console.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    js = await client.get("/console/static/console.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "/console/api" in js.text
    css = await client.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for bad in ("../ops.html", "..%2Fops.html", "nope.js", "index.html"):
        assert (await client.get(f"/console/static/{bad}")).status_code == 404
