"""Destination credentials: validated input, sealing into the vault, opening in the uploader.

The secret part (OAuth client secret, refresh token, developer token, and the account and
endpoint settings that go with them) is sealed with :class:`~opsmantik_stream.vault.Vault`;
only the account id and the rate budget are stored in clear, because leases and token buckets
need them without the vault key. Nothing here ever returns a secret to a caller: the API and
CLI get :func:`public_view` only. Decryption (:func:`open_credentials`) happens in the
uploader alone.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import asyncpg
import msgspec

from opsmantik_stream.config import Settings
from opsmantik_stream.google import GoogleCredentials
from opsmantik_stream.google.ads import action_id
from opsmantik_stream.queries import Q
from opsmantik_stream.vault import Vault, VaultError, private_key, public_key

__all__ = [
    "CredentialsError",
    "CredentialsInput",
    "open_credentials",
    "public_view",
    "save_credentials",
    "vault_from_settings",
]

_ACCOUNT_RE = re.compile(r"^\d{3}-?\d{3}-?\d{4}$|^\d{1,20}$")
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
Url = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$", max_length=500)]


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
    api_base_url: Url | None = None
    token_url: Url | None = None
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
        "api_base_url": creds.api_base_url,
        "token_url": creds.token_url,
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
        raise CredentialsError(
            "MISSING_CREDENTIALS",
            f"no {destination} credentials for this site: set them with PUT /api/sites/{{site}}/credentials",
        )
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
            api_base_url=_opt(data.get("api_base_url")),
            token_url=_opt(data.get("token_url")),
        )
    except (KeyError, TypeError):
        raise CredentialsError("INVALID_CREDENTIALS", "sealed credentials lack a required field") from None


def _opt(value: object) -> str | None:
    return None if value in (None, "") else str(value)
