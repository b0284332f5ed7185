"""A small bounded-memory token bucket keyed by string (pure; injected clock).

Used by the call-event route for the per-(site, client) and per-fingerprint limits. The
key map is an LRU capped at ``max_keys``: a flood of new keys evicts the least recently
seen ones instead of growing memory without bound.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["CALL_EVENT_LIMITER_MAX_KEYS", "KeyedTokenBucket"]


# Buckets kept per limiter (keys are "site|client" or "site|fingerprint", fingerprints at
# most 128 characters): ~0.4 KB each, so at most ~20 MB.
CALL_EVENT_LIMITER_MAX_KEYS = 50_000


class KeyedTokenBucket:
    """Token buckets per key; bounded by ``max_keys`` (``CALL_EVENT_LIMITER_MAX_KEYS``)."""

    def __init__(self, per_min: int, *, burst: int | None = None, max_keys: int = CALL_EVENT_LIMITER_MAX_KEYS) -> None:
        if per_min < 1:
            raise ValueError("per_min must be >= 1")
        self.rate_per_s = per_min / 60.0
        self.capacity = float(burst if burst is not None else per_min)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """0.0 when a token was taken; otherwise the seconds until one is available."""
        tokens, last = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + max(0.0, now - last) * self.rate_per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate_per_s
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
