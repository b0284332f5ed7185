"""What the gateway checks before an event reaches a partition: allowed origins, the rate
limit per (site, client address), and the client ip as it may be stored (truncated).

The client address itself comes from the connection, or -- behind proxies listed in
``OPSMANTIK_TRUSTED_PROXIES`` -- from X-Forwarded-For as uvicorn's ``ProxyHeadersMiddleware``
reads it (the right-most address not in that list); the gateway applies that middleware."""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from functools import lru_cache
from urllib.parse import urlsplit

__all__ = [
    "ADDRESS_MEMO_SIZE",
    "LIMITER_MAX_KEYS",
    "TokenBucketLimiter",
    "client_net",
    "origin_allowed",
    "split_origin",
    "truncate_ip",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Memo bound of the two address functions below (gateway process): keys are client
# addresses (at most 45 characters), so 65,536 entries take at most ~16 MB each. Beyond it
# the least recently seen address is forgotten (and parsed again when it comes back).
ADDRESS_MEMO_SIZE = 65_536
# Rate-limit buckets kept per limiter: ~0.4 KB each (key, tokens, time, order), so at most
# ~40 MB. Beyond it the least recently used bucket is dropped: a dropped bucket is simply
# full again, which only matters for a client idle while 100,000 others were seen.
LIMITER_MAX_KEYS = 100_000


def split_origin(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an ``Origin`` header value, or None if it is not an http(s) origin."""
    try:
        parts = urlsplit(origin.strip().lower().rstrip("/"))
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not host:
        return None
    return parts.scheme, host.rstrip("."), port or _DEFAULT_PORTS[parts.scheme]


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    """True when ``origin`` is one of the site's origins or a subdomain of one of them
    (same scheme and port): ``https://shop.example.com`` allows ``https://m.shop.example.com``
    but not ``https://evilshop.example.com`` nor ``http://shop.example.com``."""
    got = split_origin(origin)
    if got is None:
        return False
    scheme, host, port = got
    for entry in allowed:
        want = split_origin(entry)
        if want is None:
            continue
        if scheme == want[0] and port == want[2] and (host == want[1] or host.endswith("." + want[1])):
            return True
    return False


def truncate_ip(ip: str | None) -> str | None:
    """The ip as stored: IPv4 /24 (last octet 0), IPv6 /48; None when it is not an ip."""
    if not ip:
        return None
    return _truncate(ip)


@lru_cache(maxsize=ADDRESS_MEMO_SIZE)
def _truncate(ip: str) -> str | None:
    try:
        addr = ipaddress.ip_address(ip.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


@lru_cache(maxsize=ADDRESS_MEMO_SIZE)
def client_net(ip: str | None) -> str:
    """The rate-limit client: the IPv4 address, or the IPv6 /64 network (one subscriber's
    usual allocation, so rotating addresses inside it is one client). The User-Agent plays
    no part: a client chooses it freely."""
    if not ip:
        return "unknown"
    try:
        addr = ipaddress.ip_address(ip.strip().strip("[]"))
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class TokenBucketLimiter:
    """Token buckets per key, answering at once (no waiting): ``take`` returns 0 when a
    token was taken, else the seconds until one is available (the ``Retry-After``).

    A bucket holds a minute's worth of tokens and refills continuously, so ``per_min``
    requests pass per minute on average with bursts up to ``per_min``. Bounded: beyond
    ``max_keys`` (``LIMITER_MAX_KEYS``) buckets the least recently used is evicted (an
    evicted bucket is simply full again).
    """

    def __init__(self, max_keys: int = LIMITER_MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock

    @property
    def max_keys(self) -> int:
        return self._max_keys

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, per_min: int, cost: float = 1.0) -> float:
        now = self._clock()
        capacity = float(per_min)
        rate = per_min / 60.0
        tokens, last = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
            return 0.0
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        return (cost - tokens) / rate

    @staticmethod
    def retry_after(wait_s: float) -> int:
        """Whole seconds for a ``Retry-After`` header (at least 1)."""
        return max(1, math.ceil(wait_s))
