"""The one shape of a refusal the domain reports to its callers.

Leads, ingest bodies, privacy requests and console sign-in each refuse requests with an HTTP
status, a stable error code and a message; routes and the CLI turn it into their answer
(``gateway.errors.domain_error``, an exit code). Each package keeps its own subclass, so a
caller catches only the refusals of what it called.
"""

from __future__ import annotations

__all__ = ["DomainError"]


class DomainError(Exception):
    """A request that cannot be done: ``status`` (HTTP), a stable ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
