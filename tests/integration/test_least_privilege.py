"""Least privilege (issue 14): no superuser anywhere at run time, a narrow role for the
gateway's service queries, row-level security that holds within a site, the vault's private
key only in the uploaders and outside the data folder, conversions unique per site."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream import tenancy
from opsmantik_stream.db import (
    API_ROLE,
    GATEWAY_ROLE,
    OWNER_ROLE,
    api_transaction,
    bootstrap_roles,
    gateway_database_url,
)
from opsmantik_stream.leads.enqueue import order_id_for
from opsmantik_stream.migrate import apply_migrations, default_migrations_dir
from tests.integration._leads_support import auth, make_intent, make_session

pytestmark = pytest.mark.integration

Insufficient = asyncpg.InsufficientPrivilegeError


async def test_roles_are_not_superusers_and_own_what_they_should(pool: asyncpg.Pool) -> None:
    roles = {
        r["rolname"]: r
        for r in await pool.fetch(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = ANY($1)",
            [OWNER_ROLE, GATEWAY_ROLE, API_ROLE],
        )
    }
    assert set(roles) == {OWNER_ROLE, GATEWAY_ROLE, API_ROLE}
    for r in roles.values():
        assert not (r["rolsuper"] or r["rolcreaterole"] or r["rolcreatedb"] or r["rolbypassrls"]), dict(r)
    assert await pool.fetchval("SELECT current_user") == OWNER_ROLE
    foreign = await pool.fetch(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname IN ('public', 'private') AND c.relkind IN ('r', 'p')
             AND pg_get_userbyid(c.relowner) <> $1""",
        OWNER_ROLE,
    )
    assert foreign == []


async def test_the_gateway_role_reaches_only_what_it_needs(db_url: str, pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    session = await make_session(pool, site["site_id"], fingerprint="fp-secret")
    await make_intent(pool, site["site_id"], session)
    conn = await asyncpg.connect(gateway_database_url(db_url))
    try:
        assert await conn.fetchval("SELECT current_user") == GATEWAY_ROLE
        # what it needs: sites, token hashes, signing secrets, counts by state
        assert await conn.fetchval("SELECT count(*) FROM sites") == 1
        assert await conn.fetchval("SELECT count(*) FROM private.site_secrets") == 1
        assert await conn.fetchval("SELECT count(*) FROM private.api_tokens") >= 0
        assert await conn.fetchval("SELECT count(status) FROM offline_conversion_queue") == 0
        assert await conn.fetchval("SELECT count(*) FROM calls WHERE site_id = $1", uuid.UUID(site["site_id"])) == 1
        # what it must not: change values, states, ids, plans, tokens or the schema (it reads
        # tenant rows and updates personal columns only for privacy consent and erase)
        refused = [
            "SELECT payload FROM audit_log",
            "UPDATE sites SET name = 'x'",
            "UPDATE site_plans SET monthly_limit = 10000000",
            "UPDATE private.api_tokens SET user_id = gen_random_uuid()",
            "UPDATE private.api_tokens SET expires_at = NULL",
            "DELETE FROM private.api_tokens",
            "INSERT INTO calls (site_id, source) VALUES (gen_random_uuid(), 'manual')",
            "UPDATE calls SET status = 'confirmed', value_minor = 1",
            "UPDATE sales SET amount_minor = 1",
            "UPDATE offline_conversion_queue SET value_minor = 1",
            "UPDATE sessions SET site_id = gen_random_uuid()",
            "DELETE FROM sessions",
            "DELETE FROM events",
            "SELECT * FROM provider_leases",
            "CREATE TABLE gateway_was_here (x int)",
            "SET ROLE opsmantik_owner",
        ]
        for sql in refused:
            with pytest.raises(Insufficient):
                await conn.execute(sql)
        # the console's sign-out may revoke a token; nothing may un-revoke one
        user = await pool.fetchval("INSERT INTO users (email) VALUES ('revoked@example.com') RETURNING id")
        token = await pool.fetchval(
            "INSERT INTO private.api_tokens (user_id, token_sha256, label) VALUES ($1, $2, 'x') RETURNING id",
            user,
            "a" * 64,
        )
        await conn.execute("UPDATE private.api_tokens SET revoked_at = now() WHERE id = $1", token)
        for sql in (
            "UPDATE private.api_tokens SET revoked_at = NULL",
            "UPDATE private.api_tokens SET revoked_at = now()",
        ):
            with pytest.raises(Insufficient):
                await conn.execute(sql + " WHERE id = $1", token)
            with pytest.raises(Insufficient):
                await pool.execute(sql + " WHERE id = $1", token)  # the owner neither
    finally:
        await conn.close()


async def test_the_served_gateway_runs_as_its_role_with_the_public_key_only(settings: Any, db_url: str) -> None:
    from gateway.app import create_app
    from opsmantik_stream.vault import public_key_of

    assert settings.vault_key
    app = create_app(settings=settings, db_url=db_url)
    async with app.router.lifespan_context(app):
        ctx = app.state.ctx
        assert await ctx.pool.fetchval("SELECT current_user") == GATEWAY_ROLE
        assert ctx.settings.vault_key is None
        assert ctx.settings.vault_public_key == public_key_of(settings.vault_key)


async def _api_user(pool: asyncpg.Pool, public_id: str, role: str = "owner") -> str:
    async with pool.acquire() as conn:
        made = await tenancy.create_token(
            conn, email=f"{role}-{uuid.uuid4().hex[:6]}@example.com", public_id=public_id, role=role
        )
    return str(made["user_id"])


async def test_rls_within_a_site(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    sid = uuid.UUID(site["site_id"])
    owner = await _api_user(pool, site["public_id"], "owner")

    async def refused(sql: str, *args: Any) -> None:
        async with api_transaction(pool, owner) as conn:
            with pytest.raises(Insufficient):
                await conn.execute(sql, *args)

    # the plan that limits the tenant is not the tenant's to change
    await refused("UPDATE site_plans SET monthly_limit = 100000000 WHERE site_id = $1", sid)
    await refused("INSERT INTO site_plans (site_id) VALUES ($1)", sid)
    # nor the site's identity or ingest key; its descriptive settings stay editable
    await refused("UPDATE sites SET public_id = $2 WHERE id = $1", sid, uuid.uuid4().hex)
    await refused("UPDATE sites SET ingest_key_sha256 = 'x' WHERE id = $1", sid)
    async with api_transaction(pool, owner) as conn:
        assert await conn.execute("UPDATE sites SET name = 'Renamed' WHERE id = $1", sid) == "UPDATE 1"
    # audit entries: with a site and in the caller's own name only
    await refused("INSERT INTO audit_log (actor_type, action, site_id) VALUES ('user', 'x', NULL)")
    await refused(
        "INSERT INTO audit_log (actor_type, actor_id, action, site_id) VALUES ('user', $2, 'x', $1)",
        sid,
        str(uuid.uuid4()),
    )
    await refused(
        "INSERT INTO audit_log (actor_type, actor_id, action, site_id) VALUES ('system', $2, 'x', $1)", sid, owner
    )
    async with api_transaction(pool, owner) as conn:
        await conn.execute(
            "INSERT INTO audit_log (actor_type, actor_id, action, site_id) VALUES ('user', $2, 'x', $1)", sid, owner
        )
    assert await pool.fetchval("SELECT monthly_limit FROM site_plans WHERE site_id = $1", sid) == 100_000


async def test_api_role_cannot_forge_or_reshape_queued_conversions(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    sid = uuid.UUID(site["site_id"])
    token = await make_token(site["public_id"], "owner")
    async with pool.acquire() as conn:
        owner = (await tenancy.resolve_token(conn, token)).user_id  # type: ignore[union-attr]
    session = await make_session(pool, site["site_id"], gclid="gclid-REAL")
    call_id = uuid.UUID(await make_intent(pool, site["site_id"], session))
    forged_source = uuid.uuid4()
    row = (
        sid,
        "google_ads",
        "call",
        forged_source,
        uuid.UUID(session["id"]),
        order_id_for(sid, "call", forged_source),
        "gclid-REAL",
        dt.datetime.now(dt.UTC),
        10_000_000,
        "TRY",
    )
    insert = """INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, session_id,
                    order_id, gclid, conversion_time, value_minor, currency) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"""
    # a conversion for a source that does not exist (or is not sealed) is refused
    for forged in (row, (*row[:3], call_id, row[4], order_id_for(sid, "call", call_id), *row[6:])):
        async with api_transaction(pool, owner) as conn:
            with pytest.raises(Insufficient):
                await conn.execute(insert, *forged)
    assert await pool.fetchval("SELECT count(*) FROM offline_conversion_queue") == 0

    # the real path (seal with a value) enqueues; then the row cannot be reshaped
    resp = await client.post(
        f"/api/calls/{call_id}/actions",
        json={"action": "seal", "value_minor": 5000, "currency": "TRY"},
        headers=auth(token),
    )
    assert resp.status_code == 200 and resp.json()["conversion"]["enqueued"], resp.text
    qid = await pool.fetchval("SELECT id FROM offline_conversion_queue WHERE source_id = $1", call_id)
    for sql in (
        "UPDATE offline_conversion_queue SET value_minor = 99999999 WHERE id = $1",
        "UPDATE offline_conversion_queue SET gclid = 'someone-elses-click' WHERE id = $1",
        "UPDATE offline_conversion_queue SET status = 'COMPLETED', uploaded_at = now() WHERE id = $1",
        "UPDATE offline_conversion_queue SET order_id = 'om_x' WHERE id = $1",
    ):
        async with api_transaction(pool, owner) as conn:
            with pytest.raises(Insufficient):
                await conn.execute(sql, qid)
    # operator moves (void, requeue) still work
    async with api_transaction(pool, owner) as conn:
        status = await conn.execute(
            "UPDATE offline_conversion_queue SET status = 'FAILED', error_code = 'VOIDED' WHERE id = $1", qid
        )
        assert status == "UPDATE 1"
    assert await pool.fetchval("SELECT value_minor FROM offline_conversion_queue WHERE id = $1", qid) == 5000


async def test_conversions_are_unique_per_site_not_globally(pool: asyncpg.Pool, make_site: Any) -> None:
    a, b = await make_site(), await make_site()
    source = uuid.uuid4()
    for site in (a, b):
        sid = uuid.UUID(site["site_id"])
        await pool.execute(
            """INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, order_id,
                   gclid, conversion_time, value_minor, currency) VALUES ($1, 'google_ads', 'sale', $2, $3, 'g',
                   now(), 1, 'TRY')""",
            sid,
            source,
            order_id_for(sid, "sale", source),
        )
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(
            """INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, order_id,
                   gclid, conversion_time, value_minor, currency) VALUES ($1, 'google_ads', 'sale', $2, 'om_other',
                   'g', now(), 1, 'TRY')""",
            uuid.UUID(a["site_id"]),
            source,
        )


def test_only_uploaders_get_the_vault_private_key(stack: dict[str, Any], settings: Any) -> None:
    import ray

    from actors.runtime import get_actor

    assert settings.vault_key
    for name in [*stack["actors"], "maintenance"]:
        seen = ray.get(
            get_actor(name, settings.ray_namespace).__ray_call__.remote(
                lambda self: (self._settings.vault_key, self._settings.vault_open_credentials)
            ),
            timeout=30,
        )
        assert seen == (None, False), name
    for name in stack["uploaders"]:
        seen = ray.get(
            get_actor(name, settings.ray_namespace).__ray_call__.remote(
                lambda self: (self._settings.vault_key, self._settings.vault_open_credentials)
            ),
            timeout=30,
        )
        assert seen == (settings.vault_key, True), name


def test_the_key_file_lives_outside_the_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opsmantik_stream.config import load_settings
    from opsmantik_stream.uploads.credentials import vault_from_settings
    from opsmantik_stream.vault import Vault, key_file, load_or_create_key, public_key

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    cfg = load_settings(environ={}, data_dir=str(tmp_path / "data"))
    key = load_or_create_key(cfg)
    path = key_file(cfg)
    assert path == tmp_path / "config" / "opsmantik" / "vault.key"
    assert not path.is_relative_to(cfg.data_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(cfg) == key  # stable
    # the gateway's and the CLI's vault seals with the public key and cannot open
    sealer = vault_from_settings(cfg)
    assert not sealer.can_open and sealer.public_key_b64 == public_key(cfg)
    sealed = sealer.seal({"refresh_token": "r"})
    opener = vault_from_settings(cfg.with_overrides(vault_open_credentials=True))
    assert opener.open(sealed, sealer.fingerprint) == {"refresh_token": "r"}
    with pytest.raises(Exception, match="public key"):
        sealer.open(sealed, sealer.fingerprint)
    # an older installation's key in the data folder keeps working until moved
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other-config"))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "vault.key").write_text(key + "\n")
    old = load_settings(environ={}, data_dir=str(legacy))
    assert key_file(old) == legacy / "vault.key"
    assert Vault(load_or_create_key(old)).fingerprint == sealer.fingerprint


async def test_an_installation_migrated_by_a_superuser_is_handed_to_the_owner(pg_server: str, tmp_path: Path) -> None:
    """An upgrade: a database migrated before the roles existed (everything owned by the
    superuser) is taken over by the bootstrap, and the owner role migrates on from there."""
    from tests.conftest import _with_db, _with_user

    name = f"u_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        old = tmp_path / "old"
        old.mkdir()
        for f in sorted(default_migrations_dir().glob("*.sql")):
            if int(f.name[:4]) <= 5:
                shutil.copy(f, old / f.name)
        su = await asyncpg.connect(_with_db(pg_server, name))
        try:
            await apply_migrations(su, old)
        finally:
            await su.close()
        await bootstrap_roles(_with_db(pg_server, name))
        owner = await asyncpg.connect(_with_user(_with_db(pg_server, name), OWNER_ROLE))
        try:
            done = await apply_migrations(owner)
            assert [m.version for m in done][-1] >= 8
            assert await owner.fetchval("SELECT count(*) FROM sites") == 0
        finally:
            await owner.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_jobs_through_the_gateway_run_in_maintenance_as_the_owner(
    settings: Any, gateway_pool: asyncpg.Pool, pool: asyncpg.Pool, stack: dict[str, Any]
) -> None:
    """The cron endpoint's jobs write as the schema owner (e.g. create partitions): the
    gateway's narrow role could not, so the Maintenance actor runs them."""
    from gateway.app import create_app
    from gateway.context import AppContext

    cfg = settings.with_overrides(cron_secret="cron-secret-value")
    app = create_app(AppContext(settings=cfg, pool=gateway_pool, ray_enabled=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/api/jobs/partitions", headers={"X-Cron-Secret": "cron-secret-value"})
    assert r.status_code == 200, r.text
    months = await pool.fetchval("SELECT count(*) FROM pg_tables WHERE tablename ~ '^sessions_[0-9]{4}_[0-9]{2}$'")
    assert months >= 5


async def test_two_partition_jobs_at_once_do_not_collide(db_url: str) -> None:
    """The cron endpoint and the Maintenance loop may run the partitions job together: the
    second waits for the first and creates nothing (it used to fail: relation exists)."""
    first = await asyncpg.connect(db_url)
    second = await asyncpg.connect(db_url)
    watcher = await asyncpg.connect(db_url)  # outside any transaction: sees activity live
    try:
        # a March six years ahead: months nothing else creates (test_jobs takes five years ahead)
        year = dt.datetime.now(dt.UTC).year + 6
        march = dt.date(year, 3, 1)
        tx = first.transaction()
        await tx.start()
        assert await first.fetchval("SELECT ensure_month_partitions($1)", march) is True
        pid = second.get_server_pid()
        racing = asyncio.ensure_future(second.fetchval("SELECT ensure_month_partitions($1)", march))
        waiting = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1"
        while await watcher.fetchval(waiting, pid) != "Lock":
            await asyncio.sleep(0.01)  # the second call now waits for the first transaction
        await tx.commit()
        assert await racing is False
        # new session partitions get 0014's fillfactor (HOT updates), as the ones that existed
        # when the migration ran
        options = await watcher.fetch(
            "SELECT c.relname, c.reloptions FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'sessions'::regclass"
        )
        assert f"sessions_{year}_03" in {r["relname"] for r in options} and len(options) > 2
        assert {tuple(r["reloptions"] or ()) for r in options} == {("fillfactor=50",)}
    finally:
        for conn in (first, second, watcher):
            await conn.close()


async def test_api_role_cannot_forge_adjustments_or_identifiers(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    """Issue 13's rows (adjustments, hashed identifiers) pass the guard only as the real paths
    write them: the source's own identifiers, and adjustments that carry the source's figures."""
    site = await make_site()
    token = await make_token(site["public_id"], "owner")
    async with pool.acquire() as conn:
        owner = (await tenancy.resolve_token(conn, token)).user_id  # type: ignore[union-attr]
    session = await make_session(pool, site["site_id"], gclid="gclid-EC")
    r = await client.post(
        "/api/conversations", json={"site": site["public_id"], "primary_session_id": session["id"]}, headers=auth(token)
    )
    conv_id = r.json()["conversation"]["id"]
    body = {"site": site["public_id"], "conversation_id": conv_id, "amount_minor": 7000, "currency": "EUR"}
    r = await client.post(
        "/api/sales",
        json={**body, "occurred_at": "2026-03-05T14:30:00Z", "email": "a@example.com"},
        headers=auth(token),
    )
    sale_id = r.json()["sale"]["id"]
    r = await client.post(f"/api/sales/{sale_id}/confirm", headers=auth(token))
    assert r.json()["enqueued"] is True, r.text
    qid = await pool.fetchval("SELECT id FROM offline_conversion_queue WHERE order_id = $1", r.json()["order_id"])
    someone_else = "f" * 64
    for sql, arg in (
        # another person's hash on the sale's conversion
        ("UPDATE offline_conversion_queue SET email_sha256 = $2 WHERE id = $1", someone_else),
        # a click id the session never had (its wbraid is NULL: no match, never a pass)
        ("UPDATE offline_conversion_queue SET wbraid = $2 WHERE id = $1", "forged-wbraid"),
    ):
        async with api_transaction(pool, owner) as conn:
            with pytest.raises(Insufficient):
                await conn.execute(sql, qid, arg)

    await pool.execute(
        "UPDATE offline_conversion_queue SET status = 'COMPLETED', uploaded_at = now() WHERE id = $1", qid
    )
    adjustment = """INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, order_id, gclid,
            email_sha256, conversion_time, value_minor, currency, consent_scopes, kind, adjusts_id, adjusted_at)
        SELECT site_id, destination, source_kind, source_id, order_id, gclid, email_sha256, conversion_time,
               $2, currency, consent_scopes, $3, id, now()
        FROM offline_conversion_queue WHERE id = $1"""
    # a restatement to a value the sale does not have; a retraction of a sale still confirmed
    for value, kind in ((1, "restatement"), (0, "retraction")):
        async with api_transaction(pool, owner) as conn:
            with pytest.raises(Insufficient):
                await conn.execute(adjustment, qid, value, kind)

    # the real paths: restate (an adjustment with the sale's new value), then cancel (the
    # pending adjustment becomes a retraction); the pending row cannot be reshaped by hand
    r = await client.post(f"/api/sales/{sale_id}/restate", json={"amount_minor": 9000}, headers=auth(token))
    assert r.status_code == 200 and r.json()["conversion"]["outcome"] == "adjustment_queued", r.text
    adj = uuid.UUID(r.json()["conversion"]["adjustment_id"])
    reshape: tuple[tuple[str, object], ...] = (
        ("UPDATE offline_conversion_queue SET value_minor = $2 WHERE id = $1", 1),
        ("UPDATE offline_conversion_queue SET kind = $2 WHERE id = $1", "conversion"),
        ("UPDATE offline_conversion_queue SET email_sha256 = $2 WHERE id = $1", someone_else),
    )
    for statement, new_value in reshape:
        async with api_transaction(pool, owner) as conn:
            with pytest.raises(Insufficient):
                await conn.execute(statement, adj, new_value)
    r = await client.post(f"/api/sales/{sale_id}/cancel", headers=auth(token))
    assert r.status_code == 200, r.text
    got = await pool.fetchrow("SELECT kind, value_minor, status FROM offline_conversion_queue WHERE id = $1", adj)
    assert (got["kind"], got["value_minor"], got["status"]) == ("retraction", 0, "QUEUED")
