"""Sites, tokens, principals and the audit log: the tenancy core used by CLI and gateway."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

from opsmantik_stream.enums import ActorType, PlatformRole, SiteRole
from opsmantik_stream.fields import is_currency_code
from opsmantik_stream.queries import Q
from opsmantik_stream.rbac import Capability, role_can

__all__ = [
    "TOKEN_PREFIX",
    "Principal",
    "SiteAccess",
    "TenancyError",
    "add_origin",
    "create_site",
    "create_token",
    "get_site",
    "hash_token",
    "list_sites",
    "list_tokens",
    "normalize_origin",
    "resolve_token",
    "revoke_tokens",
    "rotate_secret",
    "write_audit",
]

TOKEN_PREFIX = "opsm_"


class TenancyError(Exception):
    """A tenancy request that cannot be done (unknown site, bad origin, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def normalize_origin(value: str) -> str:
    """``https://Shop.Example.com/`` -> ``https://shop.example.com``; rejects non-origins."""
    text = value.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise TenancyError("invalid_origin", f"not an http(s) origin: {value!r}")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise TenancyError("invalid_origin", f"an origin has no path or query: {value!r}")
    host = parts.hostname.lower()
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _new_public_id() -> str:
    return secrets.token_hex(16)


def _new_secret() -> str:
    return secrets.token_hex(32)


class SiteAccess(msgspec.Struct, frozen=True):
    site_id: str
    role: str


class Principal(msgspec.Struct, frozen=True):
    """The caller behind a bearer token, with a role per site (by public id)."""

    user_id: str
    email: str
    platform_role: str
    token_id: str
    sites: dict[str, SiteAccess]

    @property
    def is_platform_admin(self) -> bool:
        return self.platform_role == PlatformRole.ADMIN

    def role_for(self, public_id: str) -> str | None:
        if self.is_platform_admin:
            return SiteRole.ADMIN
        access = self.sites.get(public_id)
        return access.role if access else None

    def can(self, public_id: str, capability: Capability | str) -> bool:
        return role_can(self.role_for(public_id), capability)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _site_dict(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "site_id": str(row["id"]),
        "public_id": row["public_id"],
        "name": row["name"],
        "domain": row["domain"],
        "currency": row["currency"],
        "timezone": row["timezone"],
        "origins": list(row["origins"]),
        "default_destination": row["default_destination"],
        "created_at": row["created_at"].isoformat(),
    }


async def create_site(
    conn: asyncpg.Connection,
    *,
    name: str,
    domain: str,
    origins: list[str] | None = None,
    currency: str = "TRY",
    timezone: str = "UTC",
    monthly_limit: int = 100_000,
    soft_limit: bool = False,
) -> dict[str, Any]:
    """Create a site with its plan, origins and call-event secrets; returns the new site."""
    domain_origin = normalize_origin(domain)
    all_origins = {domain_origin, *(normalize_origin(o) for o in origins or [])}
    if not is_currency_code(currency):
        raise TenancyError("invalid_currency", f"currency must be an ISO 4217 code like TRY: {currency!r}")
    secret = _new_secret()
    async with conn.transaction():
        row = await conn.fetchrow(
            Q.tenancy.insert_site,
            _new_public_id(),
            name,
            urlsplit(domain_origin).hostname,
            currency,
            timezone,
        )
        site_id = row["id"]
        await conn.execute(Q.tenancy.insert_plan, site_id, monthly_limit, soft_limit)
        for origin in sorted(all_origins):
            await conn.execute(Q.tenancy.insert_origin, site_id, origin)
        await conn.execute(Q.tenancy.insert_secret, site_id, secret, None)
        await write_audit(conn, ActorType.CLI, None, "site.create", "site", str(site_id), site_id, {})
    site = await get_site(conn, row["public_id"])
    site["secret"] = secret
    return site


async def get_site(conn: asyncpg.Connection, public_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(Q.tenancy.site_by_public_id, public_id)
    if row is None:
        raise TenancyError("site_not_found", f"no site with public id {public_id!r}")
    return _site_dict(row)


async def list_sites(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [_site_dict(r) for r in await conn.fetch(Q.tenancy.list_sites)]


async def add_origin(conn: asyncpg.Connection, public_id: str, origin: str) -> dict[str, Any]:
    site = await get_site(conn, public_id)
    norm = normalize_origin(origin)
    async with conn.transaction():
        await conn.execute(Q.tenancy.insert_origin, site["site_id"], norm)
        await write_audit(
            conn,
            ActorType.CLI,
            None,
            "site.origin_add",
            "site",
            site["site_id"],
            site["site_id"],
            {"origin": norm},
        )
    return await get_site(conn, public_id)


async def rotate_secret(conn: asyncpg.Connection, public_id: str) -> dict[str, Any]:
    """Promote the next secret to current and prepare a new next one."""
    site = await get_site(conn, public_id)
    async with conn.transaction():
        row = await conn.fetchrow(Q.tenancy.rotate_secret, site["site_id"], _new_secret())
        if row is None:
            raise TenancyError("site_not_found", f"site {public_id!r} has no secrets")
        await write_audit(conn, ActorType.CLI, None, "site.secret_rotate", "site", site["site_id"], site["site_id"], {})
    return {
        "public_id": public_id,
        "secret": row["current_secret"],
        "next_secret": row["next_secret"],
        "rotated_at": row["rotated_at"].isoformat(),
    }


async def create_token(
    conn: asyncpg.Connection,
    *,
    email: str,
    public_id: str | None,
    role: str | None,
    platform_admin: bool = False,
    label: str | None = None,
    expires_in: dt.timedelta | None = None,
) -> dict[str, Any]:
    """Create (or reuse) the user, grant the role on the site, and mint a token.

    The token is returned once; only its SHA-256 is stored. With ``expires_in`` it stops
    resolving (401) after that long.
    """
    if expires_in is not None and expires_in <= dt.timedelta(0):
        raise TenancyError("invalid_expiry", "the expiry must lie in the future")
    email_lc = email.strip().lower()
    if "@" not in email_lc or email_lc.startswith("@") or email_lc.endswith("@"):
        raise TenancyError("invalid_email", f"not an email address: {email!r}")
    if public_id is not None and role is None:
        raise TenancyError("invalid_role", "a role is required with a site")
    if role is not None:
        try:
            SiteRole(role)
        except ValueError:
            roles = ", ".join(r.value for r in SiteRole)
            raise TenancyError("invalid_role", f"role must be one of {roles}: {role!r}") from None
    site = await get_site(conn, public_id) if public_id is not None else None
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with conn.transaction():
        user = await conn.fetchrow(Q.tenancy.upsert_user, email_lc)
        if platform_admin:
            await conn.execute(Q.tenancy.set_platform_role, user["id"], PlatformRole.ADMIN.value)
        if site is not None:
            await conn.execute(Q.tenancy.upsert_member, site["site_id"], user["id"], role)
        expires_at = dt.datetime.now(dt.UTC) + expires_in if expires_in is not None else None
        minted = await conn.fetchrow(Q.tenancy.insert_token, user["id"], hash_token(token), label, expires_at)
        await write_audit(
            conn,
            ActorType.CLI,
            None,
            "token.create",
            "user",
            str(user["id"]),
            site["site_id"] if site else None,
            {"role": role, "platform_admin": platform_admin, "token_id": str(minted["id"])},
        )
    return {
        "token": token,
        "token_id": str(minted["id"]),
        "user_id": str(user["id"]),
        "email": email_lc,
        "public_id": public_id,
        "role": role,
        "label": label,
        "expires_at": minted["expires_at"].isoformat() if minted["expires_at"] else None,
    }


def _token_view(row: asyncpg.Record) -> dict[str, Any]:
    def iso(v: dt.datetime | None) -> str | None:
        return v.isoformat() if v is not None else None

    return {
        "token_id": str(row["id"]),
        "email": row["email"],
        "label": row["label"],
        "state": row["state"],
        "created_at": iso(row["created_at"]),
        "last_used_at": iso(row["last_used_at"]),
        "expires_at": iso(row["expires_at"]),
        "revoked_at": iso(row["revoked_at"]),
    }


async def list_tokens(conn: asyncpg.Connection, *, email: str | None = None) -> list[dict[str, Any]]:
    """Every token (of one user), by label and dates: never a token or its hash."""
    return [_token_view(r) for r in await conn.fetch(Q.tenancy.list_tokens, email.strip().lower() if email else None)]


async def revoke_tokens(
    conn: asyncpg.Connection,
    *,
    token_id: str | None = None,
    email: str | None = None,
    label: str | None = None,
) -> list[dict[str, Any]]:
    """Revoke the live tokens matching every given filter (at least one); audited. A revoked
    token answers 401 from the next request on (nothing caches principals)."""
    if token_id is None and email is None and label is None:
        raise TenancyError("missing_selection", "name a token id, a user or a label")
    tid: uuid.UUID | None = None
    if token_id is not None:
        try:
            tid = uuid.UUID(token_id)
        except ValueError:
            raise TenancyError("invalid_token_id", f"not a token id: {token_id!r}") from None
    async with conn.transaction():
        rows = await conn.fetch(Q.tenancy.revoke_tokens, tid, email.strip().lower() if email else None, label)
        for r in rows:
            await write_audit(
                conn,
                ActorType.CLI,
                None,
                "token.revoke",
                "user",
                str(r["user_id"]),
                None,
                {
                    "token_id": str(r["id"]),
                },
            )
    return [{"token_id": str(r["id"]), "email": r["email"], "label": r["label"]} for r in rows]


async def resolve_token(conn: asyncpg.Connection, token: str) -> Principal | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = await conn.fetchrow(Q.tenancy.principal_by_token, hash_token(token))
    if row is None:
        return None
    await conn.execute(Q.tenancy.touch_token, row["token_id"])
    sites = {pid: SiteAccess(site_id=str(v["site_id"]), role=v["role"]) for pid, v in (row["sites"] or {}).items()}
    return Principal(
        user_id=str(row["user_id"]),
        email=row["email"],
        platform_role=row["platform_role"],
        token_id=str(row["token_id"]),
        sites=sites,
    )


async def write_audit(
    conn: asyncpg.Connection,
    actor_type: ActorType | str,
    actor_id: str | None,
    action: str,
    resource_type: str | None,
    resource_id: str | None,
    site_id: Any,
    payload: dict[str, Any],
) -> int:
    """Append an audit entry. Callers pass ids and counts, never personal data."""
    return int(
        await conn.fetchval(
            Q.tenancy.insert_audit,
            str(actor_type),
            actor_id,
            action,
            resource_type,
            resource_id,
            site_id,
            payload,
        )
    )
