"""The one domain error of the leads package; routes map it to an HTTP answer."""

from __future__ import annotations

from opsmantik_stream.errors import DomainError

__all__ = ["LeadError"]


class LeadError(DomainError):
    """A lead, call or sale operation that cannot be done as asked."""
