"""The in-memory Google of ``opsmantik emulator``: one object, three APIs.

:class:`EmulatorState` combines the OAuth token endpoint (``oauth.py``), the Google Ads API
(``ads.py``) and the Data Manager API (``data_manager.py``), each a mixin over the shared
:class:`~.core.EmulatorCore` (knobs, counters, rate limits, tokens, faults). Split by API so
each Google surface can be read, and changed, on its own.
"""

from __future__ import annotations

from .ads import GoogleAdsApi
from .core import ROW_ERROR_PREFIXES, AccountRate, EmulatorConfig, EmuReply
from .data_manager import DataManagerApi
from .oauth import OAuthApi

__all__ = ["ROW_ERROR_PREFIXES", "AccountRate", "EmuReply", "EmulatorConfig", "EmulatorState"]


class EmulatorState(OAuthApi, GoogleAdsApi, DataManagerApi):
    """In-memory Google. ``clock`` returns epoch seconds (inject a fake one in tests)."""
