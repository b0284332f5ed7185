"""What an operator reads on a BLOCKED row: the cause in words and the command that fixes it.

Pure functions, used by the uploader's finish plan (``last_error`` of BLOCKED rows); the
commands are spelled once in ``destinations/base.py``. A destination adds its own fixes for its
own account errors (``Destination.blocked_hint``, e.g. Google Ads' "switch to the Data Manager
API"). Every text names commands and routes only; it never carries a secret or personal data.
"""

from __future__ import annotations

from opsmantik_stream.destinations.base import credentials_command, destination_command, requeue_command

__all__ = ["blocked_hint"]

_REVOKED = frozenset({"invalid_grant", "OAUTH_TOKEN_REVOKED", "OAUTH_TOKEN_EXPIRED", "OAUTH_TOKEN_INVALID"})
_RESEAL = frozenset({"CREDENTIALS_UNDECRYPTABLE", "INVALID_CREDENTIALS"})
_OPERATOR_SIDE = frozenset({"VAULT_KEY_MISSING", "VAULT_KEY_INVALID"})


def blocked_hint(
    code: str | None,
    *,
    row_destination: str,
    site_destination: str,
    public_id: str,
    other_destination: str | None = None,
    destination_hint: str | None = None,
    provider_message: str | None = None,
) -> str:
    """The ``last_error`` of a BLOCKED row.

    ``row_destination`` is where the row was queued, ``site_destination`` the site's current
    choice, ``other_destination`` one the site could switch to. ``destination_hint`` is the
    destination's own fix for its own error code, if it has one. ``provider_message`` is the
    destination's text (from its configured endpoint only), appended after ours.
    """
    requeue = requeue_command(public_id)
    if code == "MISSING_CREDENTIALS":
        if site_destination != row_destination:
            return (
                f"queued for {row_destination}, which has no credentials for this site; the site now sends "
                f"to {site_destination}: {requeue} moves these rows there"
            )
        switch = (
            f", or send to another destination with {destination_command(public_id, other_destination)}"
            if other_destination
            else ""
        )
        return (
            f"no {row_destination} credentials for this site: set them with "
            f"{credentials_command(public_id, row_destination)} (or PUT /api/sites/{public_id}/credentials)"
            f"{switch}; then {requeue}"
        )
    if code in _OPERATOR_SIDE:
        return (
            "the uploader has no usable vault key (OPSMANTIK_VAULT_KEY): the operator of this deployment must "
            f"configure it; then {requeue}"
        )
    if code in _RESEAL:
        return (
            f"the stored {row_destination} credentials cannot be opened (sealed with another vault key, or "
            f"incomplete): set them again with {credentials_command(public_id, row_destination)}, then {requeue}"
        )
    if site_destination != row_destination:
        text = (
            f"{row_destination} refused this site's account or set-up ({code or 'error'}); the site now sends "
            f"to {site_destination}: {requeue} moves these rows there"
        )
    elif destination_hint:
        text = f"{destination_hint}, then {requeue}"
    elif code in _REVOKED:
        text = (
            f"the OAuth refresh token of this site's {row_destination} credentials is expired or revoked: store a "
            f"new one with {credentials_command(public_id, row_destination)}, then {requeue}"
        )
    else:
        text = (
            f"{row_destination} refused this site's account or set-up ({code or 'error'}): fix it with "
            f"{credentials_command(public_id, row_destination)}, or choose another destination with "
            f"{destination_command(public_id, other_destination or '...')}, then {requeue}"
        )
    if provider_message:
        return f"{text}. The destination said: {provider_message}"
    return text
