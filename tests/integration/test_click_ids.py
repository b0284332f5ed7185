"""The click-id precedence in Python (``opsmantik_stream.clickids``, used by the tracker's
attribution, call events and the conversion queue) gives the same answer as its SQL twin
(``best_click_id`` / ``click_id_rank`` of migration 0006, used by ``ingest_batch``) on the
same table."""

from __future__ import annotations

import itertools

import asyncpg
import pytest

from opsmantik_stream.clickids import CLICK_ID_PRECEDENCE, best_click_id, choose_click_id, click_id_rank
from opsmantik_stream.ingest.attribution import ClickIds

pytestmark = pytest.mark.integration

OWN = [(None, None), ("OWN-G", "gclid"), ("OWN-W", "wbraid"), ("OWN-B", "gbraid"), ("OWN-X", None), ("OWN-F", "fbclid")]
SESSION = [None, "S"]


def _table() -> list[tuple[str | None, str | None, str | None, str | None, str | None]]:
    rows = []
    for (own_id, own_type), g, w, b in itertools.product(OWN, SESSION, SESSION, SESSION):
        rows.append((own_id, own_type, g and f"{g}-G", w and f"{w}-W", b and f"{b}-B"))
    return rows


async def test_python_and_sql_agree_on_precedence(pool: asyncpg.Pool) -> None:
    table = _table()
    assert len(table) == 48
    for row in table:
        sql = await pool.fetchrow("SELECT id, type FROM best_click_id($1, $2, $3, $4, $5)", *row)
        assert best_click_id(*row) == (sql["id"], sql["type"]), row
    for kind in [*CLICK_ID_PRECEDENCE, "fbclid", "", None]:
        assert click_id_rank(kind) == await pool.fetchval("SELECT click_id_rank($1)", kind), kind


async def test_every_python_user_of_the_rule_follows_sql(pool: asyncpg.Pool) -> None:
    for _, _, g, w, b in _table()[:8]:
        sql = await pool.fetchrow("SELECT id, type FROM best_click_id(NULL, NULL, $1, $2, $3)", g, w, b)
        # the tracker's click ids of a page, and a session's click id for a call or conversion
        assert ClickIds(gclid=g, wbraid=w, gbraid=b).best() == (sql["id"], sql["type"])
        chosen = choose_click_id(g, w, b)
        assert ((chosen[1], chosen[0]) if chosen else (None, None)) == (sql["id"], sql["type"])
    # blank values are absent for the Python callers (ingest stores none; sessions may be edited)
    assert choose_click_id("  ", " W ", "B") == ("wbraid", "W")
    assert choose_click_id("", None, " ") is None
    assert ClickIds(gclid="", wbraid="W").best() == ("W", "wbraid")
