"""Stable site -> partition routing, shared by the Registry and every gateway."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import msgspec

__all__ = ["PartitionRetired", "RoutingTable", "partition_for", "stable_hash"]


class PartitionRetired(Exception):
    """Raised by a partition actor that a resize retired: nothing of the call was written;
    the caller asks the Registry for the new owner and resends (every event is idempotent)."""


def stable_hash(key: str) -> int:
    """A hash that is the same in every process and every run (unlike ``hash()``)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


# Memo bound: keys are (site id, partition count) of sites that passed admission, so the
# number of sites (x resizes) fills it; 65,536 entries take at most ~12 MB. Beyond it the
# least recently used is forgotten (and hashed again, ~1 us).
ROUTING_MEMO_SIZE = 65_536


@lru_cache(maxsize=ROUTING_MEMO_SIZE)
def partition_for(site_id: str, partitions: int) -> int:
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return stable_hash(site_id) % partitions


class RoutingTable(msgspec.Struct, frozen=True):
    """A versioned table: index ``partition_for(site_id, len(actors))`` names the owner."""

    version: int
    actors: tuple[str, ...]
    uploaders: tuple[str, ...] = ()

    @property
    def partitions(self) -> int:
        return len(self.actors)

    def owner_of(self, site_id: str) -> str:
        return self.actors[partition_for(site_id, len(self.actors))]
