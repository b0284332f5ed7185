"""A site's delivery set-up: which destination it sends to, and that destination's credentials.

One implementation for the API (``PUT /api/sites/{site}/destination|credentials``) and the CLI
(``opsmantik site destination set``, ``opsmantik site credentials set``), each writing the same
audit record in the same transaction as the change.

Rules (issue 11):
- A site's destination (``sites.default_destination``) is chosen explicitly with
  :func:`set_destination`; new conversions are queued for it, and rows requeued by an
  operator move to it.
- Storing credentials for a destination on a site that has credentials for no other
  destination makes it the site's destination, and the answer says so.
- Storing credentials closes the site's breaker for that destination (the cause was fixed).

Both run on the service connection after the caller's capability check: the API role has no
access to the credentials table at all (not even to know which destinations have some).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from opsmantik_stream.config import Settings
from opsmantik_stream.destinations import registry
from opsmantik_stream.destinations.base import (
    CheckStep,
    DestinationContext,
    Operation,
    credentials_command,
    destination_command,
    requeue_command,
)
from opsmantik_stream.enums import ActorType
from opsmantik_stream.queries import Q
from opsmantik_stream.tenancy import write_audit
from opsmantik_stream.uploads.credentials import (
    CredentialsError,
    SiteCredentials,
    open_credentials,
    public_view,
    save_credentials,
    vault_from_settings,
)
from opsmantik_stream.vault import Vault

__all__ = [
    "credentials_overview",
    "destination_names",
    "set_credentials",
    "set_destination",
    "set_enhanced_conversions",
    "sites_delivery",
    "test_credentials",
]


def destination_names() -> list[str]:
    """Every destination a site may choose (the registry's)."""
    return registry.names()


async def credentials_overview(conn: asyncpg.Connection, site_id: Any) -> dict[str, dict[str, Any]]:
    """Destination -> non-secret facts of its credentials, for the destinations that have some."""
    return {r["destination"]: public_view(r) for r in await conn.fetch(Q.uploads.credentials_of_site, site_id)}


async def sites_delivery(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every site's destination and the destinations it has credentials for (service role)."""
    return [
        {
            "site_id": str(r["site_id"]),
            "public_id": r["public_id"],
            "name": r["name"],
            "destination": r["destination"],
            "credentials": list(r["credentials"]),
            "ready": r["destination"] in r["credentials"],
        }
        for r in await conn.fetch(Q.uploads.sites_destinations)
    ]


async def set_credentials(
    conn: asyncpg.Connection,
    vault: Vault,
    site_id: Any,
    public_id: str,
    creds: SiteCredentials,
    *,
    actor_type: ActorType,
    actor_id: str | None,
) -> dict[str, Any]:
    """Seal and store one destination's credentials, reset its breaker, adopt it as the site's
    destination when it is the only one with credentials; audited. Returns no secret."""
    async with conn.transaction():
        site = await conn.fetchrow(Q.uploads.lock_site_destination, site_id)
        if site is None:
            raise CredentialsError("site_not_found", "no such site")
        view = await save_credentials(conn, vault, site_id, creds)
        # new credentials: give the destination a fresh chance (BLOCKED rows need a requeue)
        await conn.fetchval(Q.uploads.reset_breaker, site_id, creds.destination)
        others = [d for d in (await credentials_overview(conn, site_id)) if d != creds.destination]
        current = site["default_destination"]
        changed = not others and current != creds.destination
        if changed:
            await conn.execute(Q.uploads.set_site_destination, site_id, creds.destination)
            current = creds.destination
        await write_audit(
            conn,
            actor_type,
            actor_id,
            "credentials.set",
            "provider_credentials",
            creds.destination,
            site_id,
            {
                "destination": creds.destination,
                "account_id": view["account_id"],
                "key_fingerprint": view["key_fingerprint"],
                "site_destination": current,
                "site_destination_changed": changed,
            },
        )
    if changed:
        note = f"{creds.destination} is now this site's destination: it is the only destination with credentials"
    elif current != creds.destination:
        note = (
            f"this site sends to {current}; to send to {creds.destination} instead run "
            f"{destination_command(public_id, creds.destination)} (PUT /api/sites/{public_id}/destination)"
        )
    else:
        note = f"{creds.destination} is this site's destination"
    return {
        **view,
        "breaker_reset": True,
        "site_destination": current,
        "site_destination_changed": changed,
        "note": note,
    }


async def set_destination(
    conn: asyncpg.Connection,
    site_id: Any,
    public_id: str,
    destination: str,
    *,
    actor_type: ActorType,
    actor_id: str | None,
) -> dict[str, Any]:
    """Choose the site's destination; audited. The answer says when it has no credentials yet
    and how many BLOCKED rows wait for a requeue to move there."""
    if destination not in destination_names():
        raise CredentialsError(
            "invalid_destination", f"destination must be one of {', '.join(destination_names())}: {destination!r}"
        )
    async with conn.transaction():
        site = await conn.fetchrow(Q.uploads.lock_site_destination, site_id)
        if site is None:
            raise CredentialsError("site_not_found", "no such site")
        previous = site["default_destination"]
        if previous != destination:
            await conn.execute(Q.uploads.set_site_destination, site_id, destination)
        await write_audit(
            conn,
            actor_type,
            actor_id,
            "site.destination_set",
            "site",
            str(site_id),
            site_id,
            {"destination": destination, "previous": previous},
        )
        with_credentials = destination in await credentials_overview(conn, site_id)
        blocked_elsewhere = int(await conn.fetchval(Q.uploads.blocked_elsewhere, site_id, destination))
    notes = []
    if not with_credentials:
        notes.append(
            f"no {destination} credentials yet: set them with {credentials_command(public_id, destination)} "
            f"(PUT /api/sites/{public_id}/credentials); until then conversions wait BLOCKED"
        )
    if blocked_elsewhere:
        notes.append(
            f"{blocked_elsewhere} BLOCKED row(s) queued for another destination: "
            f"{requeue_command(public_id)} moves them to {destination}"
        )
    return {
        "destination": destination,
        "previous": previous,
        "changed": previous != destination,
        "credentials": with_credentials,
        "blocked_elsewhere": blocked_elsewhere,
        "note": "; ".join(notes) or None,
    }


async def set_enhanced_conversions(
    conn: asyncpg.Connection, site_id: Any, enabled: bool, *, actor_type: ActorType, actor_id: str | None
) -> dict[str, Any]:
    """Opt the site in or out of enhanced conversions for leads (conversions with a hashed email
    or phone but no click id are then queued and uploaded, with marketing consent); audited."""
    async with conn.transaction():
        row = await conn.fetchrow(Q.uploads.set_enhanced_conversions, site_id, enabled)
        if row is None:
            raise CredentialsError("site_not_found", "no such site")
        await write_audit(
            conn,
            actor_type,
            actor_id,
            "site.enhanced_conversions_set",
            "site",
            str(site_id),
            site_id,
            {"enabled": enabled, "previous": row["previous"]},
        )
    return {"enhanced_conversions": enabled, "previous": row["previous"]}


async def test_credentials(
    conn: asyncpg.Connection,
    settings: Settings,
    site_id: Any,
    public_id: str,
    destination: str | None = None,
    *,
    actor_type: ActorType,
    actor_id: str | None,
    http: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    """Test the site's stored credentials for ``destination`` (default: the site's) without
    storing anything at the destination: each step tried, in words, and ``ok`` when all
    worked. Audited (the answer carries no secret). Endpoints are the deployment's settings."""
    site = await conn.fetchrow(Q.sales.site_destination, site_id)
    if site is None:
        raise CredentialsError("site_not_found", "no such site")
    name = destination or site["default_destination"]
    if name not in destination_names():
        raise CredentialsError(
            "invalid_destination", f"destination must be one of {', '.join(destination_names())}: {name!r}"
        )
    cls = registry.get(name)
    steps: list[CheckStep]
    row = await conn.fetchrow(Q.uploads.credentials_for, site_id, name)
    if Operation.TEST not in cls.operations:
        steps = [CheckStep("test", False, f"{name} offers no connection test", "UNSUPPORTED_OPERATION")]
    elif row is None:
        steps = [
            CheckStep(
                "credentials",
                False,
                f"no {name} credentials for this site: set them with {credentials_command(public_id, name)}",
                "MISSING_CREDENTIALS",
            )
        ]
    else:
        try:
            creds = open_credentials(vault_from_settings(settings), row, name)
        except CredentialsError as exc:
            steps = [
                CheckStep(
                    "credentials",
                    False,
                    f"{exc.message}: set them again with {credentials_command(public_id, name)}",
                    exc.code,
                )
            ]
        else:
            timeout = httpx.Timeout(
                settings.upload_request_timeout_s, connect=min(5.0, settings.upload_request_timeout_s)
            )
            # the deployment's endpoints only, and no redirects (never an address a tenant chose)
            client = http or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
            try:
                dest = cls(DestinationContext(settings, client, timeout, settings.upload_chunk_size))
                try:
                    steps = await dest.test_connection(creds, public_id=public_id)
                finally:
                    await dest.aclose()
            finally:
                if http is None:
                    await client.aclose()
    ok = bool(steps) and all(s.ok for s in steps)
    failed = next((s for s in steps if not s.ok), None)
    summary = (
        f"{name} works for this site: " + "; ".join(s.detail for s in steps)
        if ok
        else f"{name} does not work for this site yet: {failed.detail if failed else 'nothing was tried'}"
    )
    await write_audit(
        conn,
        actor_type,
        actor_id,
        "credentials.test",
        "provider_credentials",
        name,
        site_id,
        {"destination": name, "ok": ok, "code": failed.code if failed else None},
    )
    return {
        "destination": name,
        "site_destination": site["default_destination"],
        "ok": ok,
        "summary": summary,
        "steps": [{"step": s.step, "ok": s.ok, "code": s.code, "detail": s.detail} for s in steps],
    }
