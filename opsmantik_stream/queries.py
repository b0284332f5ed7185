"""Named SQL queries, loaded once from ``opsmantik_stream/sql/*.sql``.

A file holds blocks that start with ``-- name: <query_name>``; the text up to the next
marker is the query.  Code refers to ``Q.<family>.<name>`` (e.g. ``Q.tenancy.insert_site``),
so actors and routes carry no ad-hoc SQL strings.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

__all__ = ["Q", "QueryFamily", "load_family"]

_SQL_DIR = Path(__file__).with_name("sql")
_MARKER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


class QueryFamily:
    def __init__(self, name: str, queries: dict[str, str]) -> None:
        self._name = name
        self._queries = queries

    def __getattr__(self, item: str) -> str:
        if item.startswith("_"):  # e.g. while unpickling, before _queries exists
            raise AttributeError(item)
        try:
            return self._queries[item]
        except KeyError:
            raise AttributeError(f"no query {item!r} in sql/{self._name}.sql") from None

    def names(self) -> list[str]:
        return sorted(self._queries)


@cache
def load_family(name: str) -> QueryFamily:
    text = (_SQL_DIR / f"{name}.sql").read_text()
    parts = _MARKER.split(text)
    queries: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for qname, body in zip(parts[1::2], parts[2::2], strict=True):
        if qname in queries:
            raise ValueError(f"duplicate query name {qname!r} in sql/{name}.sql")
        queries[qname] = body.strip().rstrip(";")
    return QueryFamily(name, queries)


class _Families:
    def __getstate__(self) -> dict[str, object]:
        # families are loaded again where this object lands (a Ray worker, say)
        return {}

    def __getattr__(self, family: str) -> QueryFamily:
        # Only the first use of a family gets here: it is then an attribute of this object,
        # so hot paths never touch the file system again.
        if family.startswith("__") or not (_SQL_DIR / f"{family}.sql").exists():
            raise AttributeError(f"no SQL file sql/{family}.sql")
        loaded = load_family(family)
        setattr(self, family, loaded)
        return loaded


Q = _Families()
