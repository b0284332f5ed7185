"""The one domain error of the leads package; routes map it to an HTTP answer."""

from __future__ import annotations

__all__ = ["LeadError"]


class LeadError(Exception):
    """A request that cannot be done: ``status`` (HTTP), a stable ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
