"""The destinations shipped with OpsMantik Stream: name (stored in the database) ->
"module:Class" of its implementation, loaded on first use by ``destinations.registry``.

A module of its own that imports nothing, so ``opsmantik_stream.enums`` can build the
``Destination`` enum from it without an import circle (the implementations import enums).
"""

from __future__ import annotations

__all__ = ["SHIPPED"]

SHIPPED: dict[str, str] = {
    "google_ads": "opsmantik_stream.destinations.google_ads:GoogleAdsDestination",
    "data_manager": "opsmantik_stream.destinations.data_manager:DataManagerDestination",
}
