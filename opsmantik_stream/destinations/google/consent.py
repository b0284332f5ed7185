"""The visitor's consent as Google's two consent signals (one rule, used by both APIs).

Our tracker records consent scopes (``analytics``, ``marketing``) on the session; enqueue
copies them into the queue row. Google asks two questions about each conversion:
``ad_user_data`` (may data about this user be sent to Google for advertising) and
``ad_personalization`` (may it be used for personalised advertising). ``marketing`` is the
visitor's consent to advertising use, so it answers both: granted with ``marketing``, denied
without it, and not claimed at all when nothing was recorded (rows from before consent was
copied). The Google Ads API takes only ``adUserData`` on click conversions (its Consent
message allows ``adPersonalization`` only for the user-data services); the Data Manager API
takes both (``CONSENT_GRANTED`` / ``CONSENT_DENIED``).
"""

from __future__ import annotations

from collections.abc import Sequence

from opsmantik_stream.enums import ConsentScope

__all__ = ["google_consent"]


def google_consent(scopes: Sequence[str] | None) -> tuple[bool | None, bool | None]:
    """``(ad_user_data, ad_personalization)`` for the recorded scopes; ``None`` = not recorded."""
    if scopes is None:
        return None, None
    granted = ConsentScope.MARKETING in scopes
    return granted, granted
