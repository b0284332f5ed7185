"""What an operator reads on a BLOCKED row: the cause in words and the command that fixes it.

Pure functions, shared by the uploader (``last_error`` of BLOCKED rows), the destination and
credentials commands (their notes) and the docs, so a fix is always spelled the same way.
Every text names commands and routes only; it never carries a secret or personal data.
"""

from __future__ import annotations

__all__ = [
    "ALLOWLIST_CODES",
    "blocked_hint",
    "credentials_command",
    "destination_command",
    "requeue_command",
]

#: Google's answer for an account that may no longer upload click conversions through the
#: Google Ads API (new adopters must use the Data Manager API since 2026-06-15).
ALLOWLIST_CODES = frozenset({"CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"})
_REVOKED = frozenset({"invalid_grant", "OAUTH_TOKEN_REVOKED", "OAUTH_TOKEN_EXPIRED", "OAUTH_TOKEN_INVALID"})
_RESEAL = frozenset({"CREDENTIALS_UNDECRYPTABLE", "INVALID_CREDENTIALS"})
_OPERATOR_SIDE = frozenset({"VAULT_KEY_MISSING", "VAULT_KEY_INVALID"})
_GOOGLE_ADS = "google_ads"
_DATA_MANAGER = "data_manager"


def credentials_command(public_id: str, destination: str) -> str:
    return f"`opsmantik site credentials set {public_id} --destination {destination} ...`"


def destination_command(public_id: str, destination: str) -> str:
    return f"`opsmantik site destination set {public_id} {destination}`"


def requeue_command(public_id: str) -> str:
    return f"`opsmantik oci requeue --site {public_id} --status BLOCKED`"


def blocked_hint(
    code: str | None,
    *,
    row_destination: str,
    site_destination: str,
    public_id: str,
    site_has_credentials: bool,
    provider_message: str | None = None,
) -> str:
    """The ``last_error`` of a BLOCKED row.

    ``row_destination`` is where the row was queued; ``site_destination`` the site's current
    choice; ``site_has_credentials`` whether that choice has credentials. ``provider_message``
    is the destination's own text (from the configured endpoint only), appended after ours.
    """
    requeue = requeue_command(public_id)
    moved = site_destination != row_destination
    if code == "MISSING_CREDENTIALS":
        if moved:
            return (
                f"queued for {row_destination}, which has no credentials for this site; the site now sends "
                f"to {site_destination}: {requeue} moves these rows there"
            )
        other = _DATA_MANAGER if row_destination == _GOOGLE_ADS else _GOOGLE_ADS
        return (
            f"no {row_destination} credentials for this site: set them with "
            f"{credentials_command(public_id, row_destination)} (or PUT /api/sites/{public_id}/credentials), "
            f"or send to another destination with {destination_command(public_id, other)}; then {requeue}"
        )
    if code in ALLOWLIST_CODES:
        if moved:
            text = (
                f"Google refuses click-conversion uploads for this account through the Google Ads API; the site "
                f"now sends to {site_destination}: {requeue} moves these rows there"
            )
        else:
            steps = destination_command(public_id, _DATA_MANAGER)
            if not site_has_credentials or row_destination != _DATA_MANAGER:
                steps += f", set its credentials with {credentials_command(public_id, _DATA_MANAGER)} if missing"
            text = (
                "Google refuses click-conversion uploads for this account through the Google Ads API (accounts "
                f"new to offline conversion import must use the Data Manager API): switch the site with {steps}, "
                f"then {requeue}"
            )
        return _with_provider(text, provider_message)
    if code in _REVOKED:
        text = (
            f"the OAuth refresh token of this site's {row_destination} credentials is expired or revoked: store a "
            f"new one with {credentials_command(public_id, row_destination)}, then {requeue}"
        )
        return _with_provider(text, provider_message)
    if code in _RESEAL:
        return (
            f"the stored {row_destination} credentials cannot be opened (sealed with another vault key, or "
            f"incomplete): set them again with {credentials_command(public_id, row_destination)}, then {requeue}"
        )
    if code in _OPERATOR_SIDE:
        return (
            "the uploader has no usable vault key (OPSMANTIK_VAULT_KEY): the operator of this deployment must "
            f"configure it; then {requeue}"
        )
    text = (
        f"{row_destination} refused this site's account or set-up ({code or 'error'}): fix it with "
        f"{credentials_command(public_id, row_destination)} or {destination_command(public_id, '...')}, "
        f"then {requeue}"
    )
    return _with_provider(text, provider_message)


def _with_provider(text: str, provider_message: str | None) -> str:
    if provider_message:
        return f"{text}. Google said: {provider_message}"
    return text
