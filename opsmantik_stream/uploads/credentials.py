"""Destination credentials: validated input, sealing into the vault, opening in the uploader.

The input names a destination, that destination's credential fields (its schema, see
``destinations/base.py``) and optionally the account's rate budget. The destination's fields
are sealed with :class:`~opsmantik_stream.vault.Vault`; only the account id and the budget are
stored in clear, because leases, token buckets and pauses need them without the vault key.
Nothing here ever returns a secret: the API and CLI get :func:`public_view` only. Decryption
(:func:`open_credentials`) happens in the uploader alone.

Endpoint URLs are not credentials: a destination's endpoints are deployment settings (for
Google ``OPSMANTIK_GOOGLE_ADS_BASE_URL``, ``OPSMANTIK_DATA_MANAGER_BASE_URL``,
``OPSMANTIK_GOOGLE_TOKEN_URL``). Input naming ``api_base_url`` or ``token_url`` is refused
(:data:`TENANT_ENDPOINT_FIELDS`), and such values sealed by older versions are ignored when the
credentials are opened, so no tenant can make the uploader send a site's secrets, or any
request, to an address of its choosing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Union

import asyncpg
import msgspec

from opsmantik_stream.config import Settings
from opsmantik_stream.destinations import registry
from opsmantik_stream.destinations.base import CredentialsError
from opsmantik_stream.queries import Q
from opsmantik_stream.vault import Vault, VaultError, private_key, public_key

__all__ = [
    "BUDGET_FIELDS",
    "TENANT_ENDPOINT_FIELDS",
    "CredentialsError",
    "SiteCredentials",
    "credentials_body_type",
    "credentials_from_mapping",
    "open_credentials",
    "public_view",
    "save_credentials",
    "vault_from_settings",
]

#: Fields older versions accepted from tenants; refused now (see the module docstring).
TENANT_ENDPOINT_FIELDS = ("api_base_url", "token_url")
#: The account's rate budget for the whole uploader pool (any destination).
BUDGET_FIELDS = ("requests_per_s", "conversions_per_min")


class _Budget(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    requests_per_s: Annotated[float, msgspec.Meta(gt=0, le=10000)] | None = None
    conversions_per_min: Annotated[float, msgspec.Meta(gt=0, le=10_000_000)] | None = None


@dataclass(frozen=True, slots=True)
class SiteCredentials:
    """One destination's validated credentials for a site, with the account's budget."""

    destination: str
    fields: msgspec.Struct
    account_id: str
    requests_per_s: float | None = None
    conversions_per_min: float | None = None


def credentials_from_mapping(raw: Any) -> SiteCredentials:
    """Validated credentials from decoded JSON or CLI flags (``None`` values are absent).

    Raises :class:`CredentialsError`: ``endpoint_not_allowed`` when the input names an endpoint
    URL, ``invalid_destination``, ``invalid_body`` for anything the schema refuses, or a
    field-specific code from the destination's checks.
    """
    if not isinstance(raw, dict):
        raise CredentialsError("invalid_body", "expected a JSON object")
    given = {k: v for k, v in raw.items() if v is not None}
    named = [f for f in TENANT_ENDPOINT_FIELDS if f in given]
    if named:
        raise CredentialsError(
            "endpoint_not_allowed",
            f"{', '.join(named)}: a destination's endpoints are deployment settings (for Google "
            "OPSMANTIK_GOOGLE_ADS_BASE_URL, OPSMANTIK_DATA_MANAGER_BASE_URL, OPSMANTIK_GOOGLE_TOKEN_URL), "
            "not site credentials",
        )
    name = given.pop("destination", None)
    if not isinstance(name, str) or name not in registry.names():
        raise CredentialsError(
            "invalid_destination", f"destination must be one of {', '.join(registry.names())}: {name!r}"
        )
    cls = registry.get(name)
    try:
        budget = msgspec.convert({k: given.pop(k) for k in BUDGET_FIELDS if k in given}, _Budget)
    except msgspec.ValidationError as exc:
        raise CredentialsError("invalid_body", str(exc)) from None
    fields = cls.parse_credentials(given)
    return SiteCredentials(name, fields, cls.account_id(fields), budget.requests_per_s, budget.conversions_per_min)


def credentials_body_type() -> Any:
    """The body of ``PUT /api/sites/{site}/credentials`` as one type for the OpenAPI
    description: per registered destination, its credential fields and the budget, tagged by
    ``destination`` (validation itself is :func:`credentials_from_mapping`)."""
    members = []
    budget: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (f.name, f.type, None) for f in msgspec.structs.fields(_Budget)
    ]
    for name in registry.names():
        own: list[tuple[str, Any] | tuple[str, Any, Any]] = [
            (f.name, f.type) if f.required else (f.name, f.type, f.default)
            for f in msgspec.structs.fields(registry.get(name).credentials_schema)
        ]
        struct_name = "".join(part.title() for part in name.split("_")) + "CredentialsBody"
        members.append(
            msgspec.defstruct(
                struct_name, own + budget, kw_only=True, forbid_unknown_fields=True, tag_field="destination", tag=name
            )
        )
    return members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007 (built at run time)


def vault_from_settings(settings: Settings) -> Vault:
    """The vault of this process (see opsmantik_stream.vault): the private key in an
    uploader (``vault_key``, or the key file when ``vault_open_credentials``), a sealing-only
    vault from the public key everywhere else (gateway, CLI).

    Raises :class:`CredentialsError` when there is no key (never creates a key here: a fresh
    key could not open anything sealed before).
    """
    try:
        key = private_key(settings) if settings.vault_key or settings.vault_open_credentials else None
        if key:
            return Vault(key)
        public = public_key(settings)
        if public:
            return Vault.sealing_only(public)
    except VaultError as exc:
        raise CredentialsError("VAULT_KEY_INVALID", str(exc)) from None
    raise CredentialsError("VAULT_KEY_MISSING", "no vault key: set OPSMANTIK_VAULT_KEY or start `opsmantik serve` once")


async def save_credentials(
    conn: asyncpg.Connection, vault: Vault, site_id: Any, creds: SiteCredentials
) -> dict[str, Any]:
    """Seal and upsert; returns the public view (never a secret)."""
    row = await conn.fetchrow(
        Q.uploads.upsert_credentials,
        site_id,
        creds.destination,
        vault.seal(msgspec.to_builtins(creds.fields)),
        vault.fingerprint,
        creds.account_id,
        creds.requests_per_s,
        creds.conversions_per_min,
    )
    return public_view(row)


def public_view(row: Any) -> dict[str, Any]:
    """The non-secret facts of a credentials row."""
    return {
        "destination": row["destination"],
        "account_id": row["account_id"],
        "key_fingerprint": row["key_fingerprint"],
        "requests_per_s": float(row["requests_per_s"]) if row["requests_per_s"] is not None else None,
        "conversions_per_min": (float(row["conversions_per_min"]) if row["conversions_per_min"] is not None else None),
        "updated_at": row["updated_at"].isoformat(),
    }


def open_credentials(vault: Vault | None, row: Any | None, destination: str) -> msgspec.Struct:
    """Decrypt a ``provider_credentials`` row into the destination's credentials (uploader only).

    Raises :class:`CredentialsError` (``MISSING_CREDENTIALS``, ``VAULT_KEY_MISSING``,
    ``CREDENTIALS_UNDECRYPTABLE``, ``INVALID_CREDENTIALS``) with a message that names the
    problem but no secret.
    """
    if row is None:
        # the uploader replaces this text with the fix for the site (uploads/hints.py)
        raise CredentialsError("MISSING_CREDENTIALS", f"no {destination} credentials for this site")
    if vault is None:
        raise CredentialsError("VAULT_KEY_MISSING", "the uploader has no vault key (OPSMANTIK_VAULT_KEY)")
    try:
        data = vault.open(bytes(row["sealed"]), row["key_fingerprint"])
    except VaultError as exc:
        raise CredentialsError("CREDENTIALS_UNDECRYPTABLE", f"credentials cannot be opened: {exc}") from None
    # unknown keys (such as endpoint URLs sealed by older versions) are ignored, never used
    return registry.get(destination).open_credentials(data)
