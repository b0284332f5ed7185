"""The tracker snippet a site pastes into its pages, as ``opsmantik site create`` prints it.

It must work as pasted: the gateway's real address (``OPSMANTIK_PUBLIC_URL``, else the
address the gateway listens on), the site's public id and a ``data-consent`` attribute,
because without the ``analytics`` scope the tracker stores and sends nothing.
"""

from __future__ import annotations

from opsmantik_stream.config import Settings

__all__ = ["CONSENT_NOTE", "DEFAULT_CONSENT", "PLACEHOLDER_URL", "gateway_url", "tracker_snippet"]

# What the tracker's data-consent carries when the site pastes the snippet as printed.
DEFAULT_CONSENT = ("analytics", "marketing")
# Printed when the public address cannot be known (the gateway listens on every address).
PLACEHOLDER_URL = "https://YOUR-GATEWAY-HOST"
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}

CONSENT_NOTE = (
    'consent: nothing is stored or sent without "analytics", and conversions reach Google only with '
    '"marketing"; with a consent banner, leave data-consent out and have the banner set '
    'window.opsmantikConsent = ["analytics", "marketing"] (or what the visitor chose).'
)


def gateway_url(settings: Settings) -> str | None:
    """The gateway as browsers reach it: ``OPSMANTIK_PUBLIC_URL``, else ``http://HOST:PORT``;
    None when the gateway listens on every address (its public name is unknown here)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.host.strip()
    if host in _WILDCARDS:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal in a URL
    return f"http://{host}:{settings.port}"


def tracker_snippet(public_id: str, base_url: str | None, consent: tuple[str, ...] = DEFAULT_CONSENT) -> str:
    """The ``<script>`` tag for site ``public_id`` served by the gateway at ``base_url``."""
    base = (base_url or PLACEHOLDER_URL).rstrip("/")
    return (
        f'<script src="{base}/assets/core.js" data-ops-site-id="{public_id}" '
        f'data-consent="{",".join(consent)}" async></script>'
    )
