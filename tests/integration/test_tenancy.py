"""Tenancy: bearer tokens, roles per site, and row-level security that holds even for raw SQL."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream import tenancy
from opsmantik_stream.db import api_transaction

pytestmark = pytest.mark.integration


async def _seed_session(pool: asyncpg.Pool, site_id: str) -> str:
    sid = str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO sessions (id, site_id, created_month, fingerprint) VALUES ($1, $2, now()::date, 'fp-x')",
        sid,
        site_id,
    )
    return sid


async def test_token_is_stored_only_as_its_hash(pool: asyncpg.Pool, make_site: Any, make_token: Any) -> None:
    site = await make_site()
    token = await make_token(site["public_id"], "operator")
    assert token.startswith("opsm_")
    stored = await pool.fetch("SELECT token_sha256 FROM private.api_tokens")
    assert [r["token_sha256"] for r in stored] == [tenancy.hash_token(token)]
    async with pool.acquire() as conn:
        principal = await tenancy.resolve_token(conn, token)
        assert await tenancy.resolve_token(conn, token + "x") is None
        assert await tenancy.resolve_token(conn, "garbage") is None
    assert principal is not None
    assert principal.role_for(site["public_id"]) == "operator"
    assert principal.can(site["public_id"], "leads:operate")
    assert not principal.can(site["public_id"], "billing:view")


async def test_rls_hides_and_protects_other_sites_even_for_raw_sql(
    pool: asyncpg.Pool, make_site: Callable[..., Awaitable[dict[str, Any]]], make_token: Any
) -> None:
    site_a = await make_site(name="A")
    site_b = await make_site(name="B")
    await _seed_session(pool, site_a["site_id"])
    await _seed_session(pool, site_b["site_id"])
    token_a = await make_token(site_a["public_id"], "owner")
    async with pool.acquire() as conn:
        user_a = await tenancy.resolve_token(conn, token_a)
    assert user_a is not None

    async with api_transaction(pool, user_a.user_id) as conn:
        sites = {r["public_id"] for r in await conn.fetch("SELECT public_id FROM sites")}
        assert sites == {site_a["public_id"]}
        seen = {str(r["site_id"]) for r in await conn.fetch("SELECT site_id FROM sessions")}
        assert seen == {site_a["site_id"]}
        # an explicit filter on site B finds nothing
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE site_id = $1", site_b["site_id"]) == 0
        # updates of site B touch no row
        status = await conn.execute("UPDATE sites SET name = 'pwned' WHERE id = $1", site_b["site_id"])
        assert status == "UPDATE 0"
        # secrets and token hashes are out of reach entirely
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM private.site_secrets")

    async with api_transaction(pool, user_a.user_id) as conn:
        # inserting a call into site B is refused by the policy
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO calls (site_id, source, phone_number) VALUES ($1, 'manual', 'x')",
                site_b["site_id"],
            )
    async with api_transaction(pool, user_a.user_id) as conn:
        # the API connection is not an owner in disguise: there is no role to go back to
        await conn.execute("RESET ROLE")
        assert await conn.fetchval("SELECT count(*) FROM sites WHERE id = $1", site_b["site_id"]) == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SET ROLE postgres")
    async with api_transaction(pool, user_a.user_id) as conn:
        # and it cannot forge another user's identity without the key
        user_b = await pool.fetchval("INSERT INTO users (email) VALUES ('b@example.com') RETURNING id")
        await pool.execute("INSERT INTO site_members VALUES ($1, $2, 'owner')", site_b["site_id"], user_b)
        await conn.execute("SELECT set_config('opsmantik.identity', $1, true)", f"{user_b}.{'0' * 64}")
        assert await conn.fetchval("SELECT count(*) FROM sites") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("SELECT key FROM private.identity_key")

    assert await pool.fetchval("SELECT name FROM sites WHERE id = $1", site_b["site_id"]) == "B"


async def test_analyst_reads_but_cannot_write(pool: asyncpg.Pool, make_site: Any, make_token: Any) -> None:
    site = await make_site()
    token = await make_token(site["public_id"], "analyst")
    async with pool.acquire() as conn:
        analyst = await tenancy.resolve_token(conn, token)
    assert analyst is not None
    async with api_transaction(pool, analyst.user_id) as conn:
        assert await conn.fetchval("SELECT count(*) FROM sites") == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO calls (site_id, source, phone_number) VALUES ($1, 'manual', 'x')",
                site["site_id"],
            )


async def test_operator_routes_answer_401_and_403(client: httpx.AsyncClient, make_site: Any, make_token: Any) -> None:
    site_a = await make_site()
    site_b = await make_site()
    token_a = await make_token(site_a["public_id"], "analyst")

    r = await client.get(f"/api/sites/{site_a['public_id']}")
    assert r.status_code == 401
    assert r.headers["x-opsmantik-error-code"] == "unauthorized"
    r = await client.get(f"/api/sites/{site_a['public_id']}", headers={"Authorization": "Bearer opsm_nope"})
    assert r.status_code == 401
    r = await client.get(f"/api/sites/{site_a['public_id']}", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401

    auth = {"Authorization": f"Bearer {token_a}"}
    r = await client.get(f"/api/sites/{site_a['public_id']}", headers=auth)
    assert r.status_code == 200
    assert r.json()["public_id"] == site_a["public_id"]
    assert "secret" not in r.json()
    r = await client.get(f"/api/sites/{site_b['public_id']}", headers=auth)
    assert r.status_code == 403
    r = await client.get("/api/me", headers=auth)
    assert r.json()["sites"] == {site_a["public_id"]: {"site_id": site_a["site_id"], "role": "analyst"}}


async def test_platform_admin_reaches_every_site(client: httpx.AsyncClient, make_site: Any, make_token: Any) -> None:
    site = await make_site()
    token = await make_token(None, None, platform_admin=True)
    r = await client.get(f"/api/sites/{site['public_id']}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


async def test_secret_rotation_moves_current_to_next(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    before = await pool.fetchrow("SELECT * FROM private.site_secrets WHERE site_id = $1", site["site_id"])
    assert before["current_secret"] == site["secret"] and before["next_secret"] is None
    async with pool.acquire() as conn:
        rotated = await tenancy.rotate_secret(conn, site["public_id"])
        again = await tenancy.rotate_secret(conn, site["public_id"])
    assert rotated["next_secret"] == site["secret"]
    assert rotated["secret"] != site["secret"]
    assert again["next_secret"] == rotated["secret"]
    assert site["secret"] not in {again["secret"], again["next_secret"]}
    audit = await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'site.secret_rotate'")
    assert audit == 2


@pytest.mark.parametrize("origin", ["ftp://x.com", "https://x.com/path", "https://", "https://x.com?q=1"])
def test_bad_origins_are_refused(origin: str) -> None:
    with pytest.raises(tenancy.TenancyError):
        tenancy.normalize_origin(origin)


def test_origins_are_normalised() -> None:
    assert tenancy.normalize_origin("HTTPS://Shop.Example.com/") == "https://shop.example.com"
    assert tenancy.normalize_origin("shop.example.com") == "https://shop.example.com"
    assert tenancy.normalize_origin("http://localhost:8080") == "http://localhost:8080"
