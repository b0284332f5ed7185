"""Bearer tokens (issue 14): `opsmantik token revoke`, `--expires-in`, `token list` (labels,
never tokens); an expired or revoked token answers 401 from the next request on."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream import tenancy
from opsmantik_stream.cli.token import parse_duration
from tests.integration.test_cli import as_json, run

pytestmark = pytest.mark.integration


async def _me(client: httpx.AsyncClient, token: str) -> int:
    return (await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})).status_code


async def test_revoke_list_and_expiry_through_the_cli(
    db_url: str, tmp_path: Path, pool: asyncpg.Pool, client: httpx.AsyncClient, make_site: Any
) -> None:
    site = await make_site()
    pid = site["public_id"]
    a = as_json(run(db_url, tmp_path, "token", "create", "--user", "a@example.com", "--site", pid,
                    "--role", "operator", "--label", "laptop", "--json"))  # fmt: skip
    b = as_json(run(db_url, tmp_path, "token", "create", "--user", "a@example.com", "--site", pid,
                    "--role", "operator", "--label", "crm", "--expires-in", "2h", "--json"))  # fmt: skip
    c = as_json(run(db_url, tmp_path, "token", "create", "--user", "c@example.com", "--site", pid,
                    "--role", "analyst", "--json"))  # fmt: skip
    assert a["expires_at"] is None
    expires = dt.datetime.fromisoformat(b["expires_at"])
    assert dt.timedelta(hours=1, minutes=59) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)
    for t in (a, b, c):
        assert await _me(client, t["token"]) == 200

    # list: labels and states, never a token or its hash
    proc = run(db_url, tmp_path, "token", "list", "--json")
    listed = as_json(proc)["tokens"]
    assert {(t["email"], t["label"], t["state"]) for t in listed} == {
        ("a@example.com", "laptop", "active"),
        ("a@example.com", "crm", "active"),
        ("c@example.com", None, "active"),
    }
    hashes = [r["token_sha256"] for r in await pool.fetch("SELECT token_sha256 FROM private.api_tokens")]
    text_list = run(db_url, tmp_path, "token", "list")
    for secret in [a["token"], b["token"], c["token"], *hashes]:
        assert secret not in proc.stdout and secret not in text_list.stdout
    only_c = as_json(run(db_url, tmp_path, "token", "list", "--user", "C@example.com", "--json"))["tokens"]
    assert [t["email"] for t in only_c] == ["c@example.com"]

    # revoke one token by id: that one is 401 at once, the user's other token still works
    revoked = as_json(run(db_url, tmp_path, "token", "revoke", "--id", a["token_id"], "--json"))["revoked"]
    assert [r["token_id"] for r in revoked] == [a["token_id"]]
    assert await _me(client, a["token"]) == 401
    assert await _me(client, b["token"]) == 200
    again = as_json(run(db_url, tmp_path, "token", "revoke", "--id", a["token_id"], "--json"))
    assert again["revoked"] == []  # idempotent
    audits = await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'token.revoke'")
    assert audits == 1

    # revoke every token of a user
    revoked = as_json(run(db_url, tmp_path, "token", "revoke", "--user", "c@example.com", "--json"))["revoked"]
    assert [r["email"] for r in revoked] == ["c@example.com"]
    assert await _me(client, c["token"]) == 401

    # expiry: once the time has passed the token is refused (moved into the past in SQL)
    await pool.execute(
        "UPDATE private.api_tokens SET created_at = now() - interval '3 hours', "
        "expires_at = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(b["token_id"]),
    )
    assert await _me(client, b["token"]) == 401
    states = {t["label"]: t["state"] for t in as_json(run(db_url, tmp_path, "token", "list", "--json"))["tokens"]}
    assert states == {"laptop": "revoked", "crm": "expired", None: "revoked"}

    # bad usage is exit 2 with one line
    for args in (
        ("token", "create", "--user", "x@example.com", "--platform-admin", "--expires-in", "soon"),
        ("token", "create", "--user", "x@example.com", "--platform-admin", "--expires-in", "0d"),
        ("token", "revoke"),
        ("token", "revoke", "--id", "not-a-uuid"),
    ):
        proc = run(db_url, tmp_path, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


async def test_an_expired_token_is_refused_by_resolve(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    async with pool.acquire() as conn:
        made = await tenancy.create_token(
            conn,
            email="e@example.com",
            public_id=site["public_id"],
            role="owner",
            expires_in=dt.timedelta(minutes=5),
        )
        assert await tenancy.resolve_token(conn, made["token"]) is not None
        await conn.execute(
            "UPDATE private.api_tokens SET created_at = now() - interval '1 hour', expires_at = now() WHERE id = $1",
            uuid.UUID(made["token_id"]),
        )
        assert await tenancy.resolve_token(conn, made["token"]) is None
        with pytest.raises(tenancy.TenancyError):
            await tenancy.create_token(
                conn, email="e@example.com", public_id=None, role=None, expires_in=dt.timedelta(seconds=-1)
            )


def test_durations() -> None:
    assert parse_duration("90m") == dt.timedelta(minutes=90)
    assert parse_duration("30d") == dt.timedelta(days=30)
    assert parse_duration(" 2w ") == dt.timedelta(weeks=2)
    for bad in ("", "0h", "5", "1y", "-3d", "3.5h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
