"""The credential schema both Google destinations share (Google Ads API and Data Manager API).

``customer_id`` is the Google Ads account that owns the conversion action (the Data Manager
"operating account"); ``login_customer_id`` the manager (MCC) account when acting through one;
``conversion_action`` a resource name ``customers/{cid}/conversionActions/{id}`` or the numeric
id. Dashes in account ids are accepted and stripped. No endpoint is part of it: Google's URLs are
deployment settings. ``repr`` hides the secrets, so credentials never leak into logs or
tracebacks.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from opsmantik_stream.destinations.base import CredentialsError

__all__ = ["GOOGLE_CREDENTIAL_HELP", "GOOGLE_SECRET_FIELDS", "GoogleCredentials", "action_id", "digits"]

_ACCOUNT_RE = re.compile(r"^\d{3}-?\d{3}-?\d{4}$|^\d{1,20}$")
_ACTION_RE = re.compile(r"^customers/(\d+)/conversionActions/(\d+)$")
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
Account = Annotated[str, msgspec.Meta(max_length=20)]

GOOGLE_SECRET_FIELDS = frozenset({"client_secret", "refresh_token", "developer_token"})
GOOGLE_CREDENTIAL_HELP = {
    "customer_id": "Google Ads account id (dashes allowed)",
    "login_customer_id": "manager (MCC) account id, when acting through one",
    "client_id": "OAuth client id",
    "client_secret": "OAuth client secret",
    "refresh_token": "OAuth refresh token",
    "developer_token": "Google Ads developer token (optional; Google ignores it since 2026-09-09)",
    "conversion_action": "customers/{id}/conversionActions/{id} or the id",
}


class GoogleCredentials(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A site's Google credentials (see the module docstring)."""

    customer_id: Account
    client_id: Text
    client_secret: Text
    refresh_token: Text
    conversion_action: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    login_customer_id: Account | None = None
    developer_token: Text | None = None

    def __repr__(self) -> str:
        return (
            f"GoogleCredentials(customer_id={self.customer_id!r}, client_id={self.client_id!r}, "
            f"conversion_action={self.conversion_action!r}, login_customer_id={self.login_customer_id!r})"
        )

    def normalized(self) -> GoogleCredentials:
        """Account ids as digits, the action trimmed; :class:`CredentialsError` for values
        Google would reject anyway."""
        if not _ACCOUNT_RE.match(self.customer_id.strip()):
            raise CredentialsError("invalid_customer_id", "customer_id must be a Google Ads account id")
        if self.login_customer_id and not _ACCOUNT_RE.match(self.login_customer_id.strip()):
            raise CredentialsError("invalid_login_customer_id", "login_customer_id must be an account id")
        if action_id(self.conversion_action) is None:
            raise CredentialsError(
                "invalid_conversion_action",
                "conversion_action must be customers/{id}/conversionActions/{id} or a numeric id",
            )
        return msgspec.structs.replace(
            self,
            customer_id=digits(self.customer_id) or self.customer_id,
            login_customer_id=digits(self.login_customer_id) if self.login_customer_id else None,
            conversion_action=self.conversion_action.strip(),
        )


def digits(account: str | None) -> str | None:
    """An account id without dashes, or ``None`` when it is not one."""
    if account is None:
        return None
    a = account.replace("-", "").strip()
    return a if a.isdigit() else None


def action_id(action: Any) -> str | None:
    """Numeric conversion action id from a resource name or a bare id."""
    if not isinstance(action, str):
        return None
    text = action.strip()
    if text.isdigit():
        return text
    m = _ACTION_RE.match(text)
    return m.group(2) if m else None
