"""Store ceiling: idempotent batched inserts straight into PostgreSQL.

The same embedded PostgreSQL (pgserver) and schema as the product, in its own temporary
folder; no gateway, no Ray, no ingest logic. One transaction per batch writes what an
ingest batch must write at the least, one statement per table via ``unnest`` arrays:

- ``ingest_idempotency``: the ledger rows, ``ON CONFLICT DO NOTHING RETURNING`` the new keys
  (the idempotency decision);
- ``sessions``: the batch's sessions, ``ON CONFLICT DO NOTHING`` (events reference them);
- ``events``: one row per new key.

Several connections run batches concurrently; the best (batch size, connections) of a small
grid is the ceiling, so the product is compared against the best this database does here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks import memory

__all__ = ["StoreCeiling"]

_LEDGER = """
INSERT INTO ingest_idempotency (site_id, idempotency_key, billing_state, event_category, event_action, event_label)
SELECT $1::uuid, k, 'ACCEPTED', 'interaction', 'view', 'product page' FROM unnest($2::text[]) AS k
ON CONFLICT DO NOTHING
RETURNING idempotency_key
"""
_SESSIONS = """
INSERT INTO sessions (id, site_id, created_month, created_at, entry_page, fingerprint, referrer_host)
SELECT t.id, $1::uuid, date_trunc('month', $2::timestamptz AT TIME ZONE 'UTC')::date, $2::timestamptz,
       t.page, t.fp, 'www.google.com'
FROM unnest($3::uuid[], $4::text[], $5::text[]) AS t(id, page, fp)
ON CONFLICT DO NOTHING
"""
_EVENTS = """
INSERT INTO events (session_id, session_month, site_id, created_at, url, event_category, event_action,
                    event_label, metadata, ingest_key)
SELECT t.sid, $2::date, $1::uuid, $3::timestamptz, t.url, 'interaction', 'view', 'product page',
       t.meta::jsonb, t.k
FROM unnest($4::uuid[], $5::text[], $6::text[], $7::text[]) AS t(sid, url, meta, k)
ON CONFLICT DO NOTHING
"""


class StoreCeiling:
    """An embedded PostgreSQL with the product schema and one site, for the ceiling runs."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="opsm-bench-store-"))
        memory.watch(self.folder)  # its PostgreSQL server counts as this benchmark's
        self._pg: Any = None
        self.url = ""
        self.site_id = ""
        self._pool: asyncpg.Pool | None = None

    async def setup(self) -> None:
        from opsmantik_stream import tenancy
        from opsmantik_stream.db import EmbeddedPostgres, _init_connection
        from opsmantik_stream.migrate import apply_migrations

        self._pg = EmbeddedPostgres(self.folder)
        self.url = await asyncio.to_thread(self._pg.start)
        conn = await asyncpg.connect(self.url)
        try:
            await _init_connection(conn)
            await apply_migrations(conn)
            site = await tenancy.create_site(
                conn, name="store ceiling", domain="store.example.com", monthly_limit=1_000_000_000
            )
            self.site_id = str(site["site_id"])
        finally:
            await conn.close()

    async def close_pool(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def count_rows(self) -> dict[str, int]:
        """Rows in the ledger and in events (every run's, to check stored == reported)."""
        async with _conn(self.url) as conn:
            return {
                "ledger_rows": int(await conn.fetchval("SELECT count(*) FROM ingest_idempotency")),
                "event_rows": int(await conn.fetchval("SELECT count(*) FROM events")),
            }

    def close(self) -> None:
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        shutil.rmtree(self.folder, ignore_errors=True)
        memory.unwatch(self.folder)

    async def run(self, *, batch: int, connections: int, seconds: float, run: str) -> dict[str, Any]:
        """Events/s committed by ``connections`` concurrent batch writers for ``seconds``.

        The connections stay open between runs: a PostgreSQL backend that exits takes its CPU
        time with it, and the CPU sample must see it."""
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=16)
        pool = self._pool
        assert pool is not None
        now = datetime.now(UTC)
        month = now.date().replace(day=1)
        stored = 0
        commits = 0
        stop_at = 0.0

        async def writer(w: int) -> None:
            nonlocal stored, commits
            n = 0
            sessions = [uuid.uuid5(uuid.NAMESPACE_URL, f"{run}/{w}/{i}") for i in range(50)]
            async with pool.acquire() as conn:
                while time.perf_counter() < stop_at:
                    base = n * batch
                    n += 1
                    keys = [
                        hashlib.sha256(f"{self.site_id}|eid|{run}-{w}-{base + i}".encode()).hexdigest()
                        for i in range(batch)
                    ]
                    sids = [sessions[(base + i) % len(sessions)] for i in range(batch)]
                    urls = [f"https://store.example.com/products/{(base + i) % 97}" for i in range(batch)]
                    metas = [json.dumps({"score": 10, "attribution": "Organic"})] * batch
                    async with conn.transaction():
                        created = {r[0] for r in await conn.fetch(_LEDGER, self.site_id, keys)}
                        uniq = sorted({s for s in sids}, key=str)
                        await conn.execute(
                            _SESSIONS,
                            self.site_id,
                            now,
                            uniq,
                            ["https://store.example.com/"] * len(uniq),
                            [f"fp-{s}" for s in uniq],
                        )
                        pick = [i for i, k in enumerate(keys) if k in created]
                        await conn.execute(
                            _EVENTS,
                            self.site_id,
                            month,
                            now,
                            [sids[i] for i in pick],
                            [urls[i] for i in pick],
                            [metas[i] for i in pick],
                            [keys[i] for i in pick],
                        )
                    stored += len(pick)
                    commits += 1

        t0 = time.perf_counter()
        stop_at = t0 + seconds
        await asyncio.gather(*(writer(w) for w in range(connections)))
        elapsed = time.perf_counter() - t0
        return {
            "batch": batch,
            "connections": connections,
            "events_per_s": stored / elapsed,
            "commits_per_s": commits / elapsed,
            "events": stored,
        }


class _conn:
    def __init__(self, url: str) -> None:
        self.url = url
        self.c: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self.c = await asyncpg.connect(self.url)
        return self.c

    async def __aexit__(self, *exc: object) -> None:
        if self.c is not None:
            await self.c.close()
