"""Request rate limits of the gateway's routes: who the client is, and the keyed buckets.

One rule for every route: the client is ``client_net`` of the request's peer address (an
IPv4 address or an IPv6 /64; the User-Agent plays no part, a client chooses it freely), and
the peer address is already the right-most untrusted ``X-Forwarded-For`` hop when the
gateway runs behind ``OPSMANTIK_TRUSTED_PROXIES`` (``gateway.app`` applies uvicorn's
``ProxyHeadersMiddleware`` before any route). The buckets are ``TokenBucketLimiter``, the
same as ``/api/sync`` uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

from starlette.requests import Request

from gateway.errors import ApiError
from opsmantik_stream.ingest.admission import TokenBucketLimiter, client_net

__all__ = ["KeyedLimit", "client_key", "rate_limited", "route_limit"]


def client_key(request: Request) -> str:
    """The rate-limit client of a request (see the module doc)."""
    return client_net(request.client.host if request.client else None)


class KeyedLimit:
    """``per_min`` requests per key and minute (bursts up to ``per_min``), bounded memory."""

    def __init__(self, per_min: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_min = per_min
        self._buckets = TokenBucketLimiter(clock=clock)

    def take(self, key: Hashable, cost: float = 1.0) -> float:
        """0 when the request may pass, else the seconds until it would."""
        return self._buckets.take(key, self.per_min, cost)

    def bounded(self) -> tuple[int, int]:
        """Buckets held and their bound (``LIMITER_MAX_KEYS``), for /metrics."""
        return len(self._buckets), self._buckets.max_keys


def route_limit(ctx: Any, name: str, per_min: int) -> KeyedLimit:
    """The gateway's limiter called ``name`` (made on first use; a test may put its own
    into ``ctx.route_limits[name]``)."""
    found: KeyedLimit | None = ctx.route_limits.get(name)
    if found is None:
        found = ctx.route_limits[name] = KeyedLimit(per_min)
    return found


def rate_limited(wait_s: float, message: str) -> ApiError:
    """429 ``rate_limited`` with ``Retry-After`` in whole seconds (at least 1)."""
    return ApiError(429, "rate_limited", message, {"Retry-After": str(TokenBucketLimiter.retry_after(wait_s))})
