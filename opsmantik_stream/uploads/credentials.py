"""Destination credentials: validated input, sealing into the vault, opening in the uploader.

The secret part (OAuth client secret, refresh token, developer token, and the account
settings that go with them) is sealed with :class:`~opsmantik_stream.vault.Vault`;
only the account id and the rate budget are stored in clear, because leases and token buckets
need them without the vault key. Nothing here ever returns a secret to a caller: the API and
CLI get :func:`public_view` only. Decryption (:func:`open_credentials`) happens in the
uploader alone.

Endpoint URLs are not credentials: Google's API and token URLs are deployment settings
(``OPSMANTIK_GOOGLE_ADS_BASE_URL``, ``OPSMANTIK_DATA_MANAGER_BASE_URL``,
``OPSMANTIK_GOOGLE_TOKEN_URL``). Input naming ``api_base_url`` or ``token_url`` is refused
(:data:`TENANT_ENDPOINT_FIELDS`), and such values sealed by older versions are ignored when the
credentials are opened, so no tenant can make the uploader send a site's secrets, or any
request, to an address of its choosing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import asyncpg
import msgspec

from opsmantik_stream.config import Settings
from opsmantik_stream.google import GoogleCredentials
from opsmantik_stream.google.ads import action_id
from opsmantik_stream.queries import Q
from opsmantik_stream.vault import Vault, VaultError

__all__ = [
    "TENANT_ENDPOINT_FIELDS",
    "CredentialsError",
    "CredentialsInput",
    "credentials_from_mapping",
    "open_credentials",
    "public_view",
    "save_credentials",
    "vault_from_settings",
]

_ACCOUNT_RE = re.compile(r"^\d{3}-?\d{3}-?\d{4}$|^\d{1,20}$")
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]

#: Fields older versions accepted from tenants; refused now (see the module docstring).
TENANT_ENDPOINT_FIELDS = ("api_base_url", "token_url")


class CredentialsError(Exception):
    """Credentials missing, invalid or not openable; ``code`` goes on the blocked rows."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CredentialsInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What an operator sets for one (site, destination)."""

    destination: Literal["google_ads", "data_manager"]
    customer_id: Annotated[str, msgspec.Meta(max_length=20)]
    client_id: Text
    client_secret: Text
    refresh_token: Text
    conversion_action: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    login_customer_id: Annotated[str, msgspec.Meta(max_length=20)] | None = None
    developer_token: Text | None = None
    requests_per_s: Annotated[float, msgspec.Meta(gt=0, le=10000)] | None = None
    conversions_per_min: Annotated[float, msgspec.Meta(gt=0, le=10_000_000)] | None = None

    def validate(self) -> None:
        """Raise :class:`CredentialsError` for account ids or actions Google would reject."""
        if not _ACCOUNT_RE.match(self.customer_id.strip()):
            raise CredentialsError("invalid_customer_id", "customer_id must be a Google Ads account id")
        if self.login_customer_id and not _ACCOUNT_RE.match(self.login_customer_id.strip()):
            raise CredentialsError("invalid_login_customer_id", "login_customer_id must be an account id")
        if action_id(self.conversion_action) is None:
            raise CredentialsError(
                "invalid_conversion_action",
                "conversion_action must be customers/{id}/conversionActions/{id} or a numeric id",
            )

    @property
    def account_id(self) -> str:
        return self.customer_id.replace("-", "").strip()


def credentials_from_mapping(raw: Any) -> CredentialsInput:
    """Validated credentials from decoded JSON or CLI flags (``None`` values are absent).

    Raises :class:`CredentialsError`: ``endpoint_not_allowed`` when the input names an endpoint
    URL, ``invalid_body`` for anything the schema refuses, or a field-specific code from
    :meth:`CredentialsInput.validate`.
    """
    if not isinstance(raw, dict):
        raise CredentialsError("invalid_body", "expected a JSON object")
    named = [f for f in TENANT_ENDPOINT_FIELDS if f in raw]
    if named:
        raise CredentialsError(
            "endpoint_not_allowed",
            f"{', '.join(named)}: Google's endpoints are deployment settings (OPSMANTIK_GOOGLE_ADS_BASE_URL, "
            "OPSMANTIK_DATA_MANAGER_BASE_URL, OPSMANTIK_GOOGLE_TOKEN_URL), not site credentials",
        )
    try:
        creds = msgspec.convert({k: v for k, v in raw.items() if v is not None}, CredentialsInput)
    except msgspec.ValidationError as exc:
        raise CredentialsError("invalid_body", str(exc)) from None
    creds.validate()
    return creds


def vault_from_settings(settings: Settings) -> Vault:
    """The vault of this deployment: ``OPSMANTIK_VAULT_KEY`` or ``data_dir/vault.key``.

    Raises :class:`CredentialsError` when neither exists (never creates a key here: a fresh
    key could not open anything sealed before).
    """
    key = settings.vault_key
    if key is None:
        path = Path(settings.data_path) / "vault.key"
        if path.exists():
            key = path.read_text().strip()
    if not key:
        raise CredentialsError("VAULT_KEY_MISSING", "no vault key: set OPSMANTIK_VAULT_KEY")
    try:
        return Vault(key)
    except VaultError as exc:
        raise CredentialsError("VAULT_KEY_INVALID", str(exc)) from None


async def save_credentials(
    conn: asyncpg.Connection, vault: Vault, site_id: Any, creds: CredentialsInput
) -> dict[str, Any]:
    """Seal and upsert; returns the public view (never a secret)."""
    creds.validate()
    secret: dict[str, object] = {
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
        "refresh_token": creds.refresh_token,
        "customer_id": creds.account_id,
        "login_customer_id": (creds.login_customer_id or "").replace("-", "").strip() or None,
        "conversion_action": creds.conversion_action.strip(),
        "developer_token": creds.developer_token,
    }
    row = await conn.fetchrow(
        Q.uploads.upsert_credentials,
        site_id,
        creds.destination,
        vault.seal(secret),
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


def open_credentials(vault: Vault | None, row: Any | None, destination: str) -> GoogleCredentials:
    """Decrypt a ``provider_credentials`` row into client credentials (uploader only).

    Raises :class:`CredentialsError` (``MISSING_CREDENTIALS``, ``CREDENTIALS_UNDECRYPTABLE``,
    ``INVALID_CREDENTIALS``) with a message that names the problem but no secret.
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
    try:
        return GoogleCredentials(
            client_id=str(data["client_id"]),
            client_secret=str(data["client_secret"]),
            refresh_token=str(data["refresh_token"]),
            customer_id=str(data["customer_id"]),
            conversion_action=str(data["conversion_action"]),
            destination=destination,  # type: ignore[arg-type]
            developer_token=_opt(data.get("developer_token")),
            login_customer_id=_opt(data.get("login_customer_id")),
            # api_base_url / token_url sealed by older versions are ignored on purpose
        )
    except (KeyError, TypeError):
        raise CredentialsError("INVALID_CREDENTIALS", "sealed credentials lack a required field") from None


def _opt(value: object) -> str | None:
    return None if value in (None, "") else str(value)
