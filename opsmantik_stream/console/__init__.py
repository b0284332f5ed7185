"""The operator console's core: sign-in links and sessions (``signin``), the read-only views
of a site (``reads``) and their pure helpers (``views``)."""
