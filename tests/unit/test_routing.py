"""Routing: a stable hash (same in every process) picks the owning partition."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from opsmantik_stream.routing import RoutingTable, partition_for, stable_hash

pytestmark = pytest.mark.unit


def test_hash_is_stable_across_processes() -> None:
    key = "3f2c0c0e-8f57-4c1c-9d7e-8d5b8f0b5a11"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from opsmantik_stream.routing import stable_hash; print(stable_hash({key!r}))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    )
    assert int(out.stdout) == stable_hash(key)


def test_partitions_cover_every_index_and_stay_in_range() -> None:
    seen = {partition_for(str(uuid.UUID(int=i)), 4) for i in range(400)}
    assert seen == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        partition_for("x", 0)


def test_table_names_the_owner() -> None:
    table = RoutingTable(version=3, actors=("a", "b", "c"))
    site = "site-1"
    assert table.owner_of(site) == ("a", "b", "c")[partition_for(site, 3)]
    assert table.partitions == 3
