"""Destinations as plug-ins: where conversions are delivered (SPEC §6 "Destinations").

- :mod:`.registry` maps a destination name (as stored in the database) to its class;
- :mod:`.base` is the contract every destination implements: its credential schema, the
  upload, the classification of its errors, its hints for BLOCKED rows (and, later, an
  ``adjust`` operation and user identifiers, see :class:`.base.Operation`);
- :mod:`.google_ads` and :mod:`.data_manager` are the two shipped destinations; the Google
  pieces they share (OAuth client, error classification, mapping, transport) live in
  :mod:`.google`.

Adding one: docs/destinations.md. This package's ``__init__`` stays import-free on purpose
(``opsmantik_stream.enums`` reads the registry, and the destinations import the enums).
"""
