"""The schema is the source of truth: every CHECKed state list equals its Python enum."""

from __future__ import annotations

import re

import asyncpg
import pytest

from opsmantik_stream.enums import CHECKED_COLUMNS
from opsmantik_stream.rbac import CAPABILITIES

pytestmark = pytest.mark.integration

# CHECK (col = ANY (ARRAY['a'::text, 'b'::text])) as pg_get_constraintdef prints `IN (...)`
_IN_LIST = re.compile(r"\(\(?(\w+) = ANY \(\(?ARRAY\[(.*?)\]\)?(?:::text\[\])?\)\)?")


async def _check_lists(pool: asyncpg.Pool) -> dict[tuple[str, str], set[str]]:
    rows = await pool.fetch(
        """
        SELECT c.relname AS table_name, pg_get_constraintdef(k.oid) AS def
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE k.contype = 'c' AND n.nspname IN ('public', 'private')
          AND NOT c.relispartition
        """
    )
    found: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        for column, items in _IN_LIST.findall(row["def"]):
            values = set(re.findall(r"'([^']*)'", items))
            key = (row["table_name"], column)
            found.setdefault(key, set()).update(values)
    return found


async def test_every_check_list_matches_its_enum(pool: asyncpg.Pool) -> None:
    found = await _check_lists(pool)
    assert found, "no CHECK lists parsed: the parser is broken"
    unregistered = sorted(set(found) - set(CHECKED_COLUMNS))
    assert not unregistered, f"CHECK lists without a Python enum in CHECKED_COLUMNS: {unregistered}"
    for key, enum in CHECKED_COLUMNS.items():
        assert key in found, f"{key} is registered but has no CHECK list in the schema"
        assert found[key] == {e.value for e in enum}, f"{key}: schema {found[key]} != enum {enum.__name__}"


async def test_role_capabilities_table_matches_python(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch("SELECT role, capability FROM role_capabilities")
    in_db = {(r["role"], r["capability"]) for r in rows}
    in_py = {(role.value, cap.value) for role, caps in CAPABILITIES.items() for cap in caps}
    assert in_db == in_py


async def test_tenant_tables_have_row_level_security(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'site_id')
          AND NOT c.relrowsecurity
        """
    )
    missing = sorted(r["relname"] for r in rows)
    # Service-only tables: no API grant at all, so RLS is not their guard.
    service_only = {"provider_leases", "billing_reconciliation_runs", "session_clicks"}
    assert set(missing) <= service_only, f"tenant tables without RLS: {sorted(set(missing) - service_only)}"
    for table in set(missing):
        granted = await pool.fetchval("SELECT has_table_privilege('opsmantik_api', $1, 'SELECT')", f"public.{table}")
        assert granted is False, f"{table} has no RLS but the API role may read it"


async def test_sessions_and_events_accept_any_month(pool: asyncpg.Pool, make_site) -> None:  # type: ignore[no-untyped-def]
    site = await make_site()
    # a month far outside the created partitions lands in the DEFAULT partition
    await pool.execute(
        "INSERT INTO sessions (id, site_id, created_month, created_at) "
        "VALUES (gen_random_uuid(), $1, '1999-01-01', '2031-07-04T00:00:00Z')",
        site["site_id"],
    )
    month = await pool.fetchval("SELECT created_month FROM sessions WHERE site_id = $1", site["site_id"])
    # the trigger, not the client, decides the month
    assert str(month) == "2031-07-01"
    table = await pool.fetchval("SELECT tableoid::regclass::text FROM sessions WHERE site_id = $1", site["site_id"])
    assert table == "sessions_default"
