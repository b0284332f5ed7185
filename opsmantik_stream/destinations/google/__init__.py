"""What the two Google destinations share: their credential schema (``credentials.py``), one
OAuth client with its token cache (``oauth.py``), the classification of Google's errors
(``classify.py``), the wire mapping (``mapping.py``), the consent mapping (``consent.py``) and
the transport with row checks and chunking (``transport.py``). The destinations themselves are
``destinations/google_ads.py`` and ``destinations/data_manager.py``."""
