"""Measure the console's read routes on a site with 100,000 intents (not part of the suite).

    .venv/bin/python -m tests.console_volume [--keep DIR]

Seeds a fresh embedded PostgreSQL with two sites of 200,000 sessions, 300,000 events and
100,000 intents each (30 days), a sixth of the intents sealed with completed uploads; then
times each route in-process (the real app, row-level security on, httpx ASGI transport) and
the watchtower and traffic_rollup jobs, and prints median and minimum of 7 requests in milliseconds. Seeding takes
a few minutes. Run it on a quiet machine: the figures are wall-clock times.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

from gateway.app import create_app
from gateway.context import AppContext
from opsmantik_stream import tenancy
from opsmantik_stream.config import load_settings
from opsmantik_stream.db import EmbeddedPostgres, close_pool, create_pool
from opsmantik_stream.jobs import run_job
from opsmantik_stream.migrate import apply_migrations

SESSIONS_PER_SITE = 200_000

# One statement per site: sessions 13 s apart (30 days), a page view each, a phone click and
# an intent for every other session, in the shapes the partition writes.
SEED = """
WITH s AS (
  INSERT INTO sessions (id, site_id, created_month, created_at, last_activity_at, entry_page, gclid,
      traffic_source, traffic_medium, attribution_source, consent_scopes, event_count, total_duration_sec,
      is_returning, previous_visit_count, fingerprint)
  SELECT gen_random_uuid(), $1, date_trunc('month', t AT TIME ZONE 'UTC')::date, t, t + interval '2 min',
         'https://shop.example.com/?p=' || (g % 50), CASE WHEN g % 3 = 0 THEN 'G-' || g END,
         (ARRAY['Google Ads','SEO','Direct','Meta Ads','Referral'])[1 + g % 5],
         (ARRAY['cpc','organic','direct','cpc','referral'])[1 + g % 5],
         (ARRAY['First Click (Paid)','Organic','Organic','Social','Organic'])[1 + g % 5],
         ARRAY['analytics','marketing'], 3, 40 + g % 300, g % 4 = 0, g % 4, 'fp-' || (g % 50000)
  FROM (SELECT g, now() - (g * interval '13 seconds') AS t FROM generate_series(1, $2::int) g) x
  RETURNING id, created_month, created_at, site_id
), numbered AS (
  SELECT *, row_number() OVER (ORDER BY created_at) AS n FROM s
), ev AS (
  INSERT INTO events (session_id, session_month, site_id, created_at, url, event_category, event_action, metadata)
  SELECT id, created_month, site_id, created_at, 'https://shop.example.com/', 'interaction', 'view',
         '{"lead_score": 10}'::jsonb FROM numbered
  UNION ALL
  SELECT id, created_month, site_id, created_at + interval '1 min', 'https://shop.example.com/contact',
         'conversion', 'phone_call', jsonb_build_object('lead_score', 55, 'intent_target', 'tel:+905551112233',
         'referrer', 'https://www.google.com/')
  FROM numbered WHERE n % 2 = 0
  RETURNING 1
)
INSERT INTO calls (site_id, source, status, created_at, matched_session_id, matched_session_month, lead_score,
    intent_stamp, intent_action, intent_target, intent_page_url, intent_phone_clicks, intent_last_at, value_minor,
    currency, confirmed_at, matched_fingerprint)
SELECT site_id, 'click', (ARRAY['intent','intent','intent','confirmed','junk','cancelled'])[1 + n % 6],
       created_at + interval '1 min', id, created_month, 55, 'session:' || id,
       (ARRAY['phone','whatsapp','form'])[1 + n % 3], 'tel:+905551112233', 'https://shop.example.com/contact', 1,
       created_at + interval '1 min', CASE WHEN n % 6 = 3 THEN 10000 END, 'TRY',
       CASE WHEN n % 6 = 3 THEN created_at END, 'fp'
FROM numbered WHERE n % 2 = 0
"""

UPLOADED = """
INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, session_id, order_id, gclid,
    conversion_time, value_minor, currency, status, uploaded_at)
SELECT c.site_id, 'data_manager', 'call', c.id, c.matched_session_id, 'om_' || md5(c.id::text), 'G', c.created_at,
       10000, 'TRY', 'COMPLETED', now()
FROM calls c WHERE c.status = 'confirmed' AND c.site_id = $1
"""


def _with_db(url: str, name: str) -> str:
    head, _, query = url.partition("?")
    return head.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")


async def _seed(db: str, pool: asyncpg.Pool) -> tuple[dict[str, Any], str]:
    async with pool.acquire() as tenant:
        await apply_migrations(tenant)
        site = await tenancy.create_site(tenant, name="Volume", domain="shop.example.com")
        other = await tenancy.create_site(tenant, name="Neighbour", domain="other.example.com")
        token = await tenancy.create_token(tenant, email="op@example.com", public_id=site["public_id"], role="operator")
    conn = await asyncpg.connect(db)  # no command timeout: seeding runs for minutes
    try:
        for s in (site, other):
            await conn.execute(SEED, uuid.UUID(s["site_id"]), SESSIONS_PER_SITE)
        await conn.execute(UPLOADED, uuid.UUID(site["site_id"]))
        await conn.execute("VACUUM ANALYZE")
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM calls WHERE site_id = $1) AS intents,"
            " (SELECT count(*) FROM sessions WHERE site_id = $1) AS sessions,"
            " (SELECT count(*) FROM events WHERE site_id = $1) AS events",
            uuid.UUID(site["site_id"]),
        )
        print(f"site: {dict(counts)} (and a neighbour of the same size)")
    finally:
        await conn.close()
    return site, str(token["token"])


async def _time(client: httpx.AsyncClient, path: str, params: dict[str, Any], headers: dict[str, str]) -> list[float]:
    times = []
    for _ in range(7):
        started = time.perf_counter()
        resp = await client.get(path, params=params, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        assert resp.status_code == 200, resp.text
    return times


async def main(keep: Path | None) -> None:
    folder = keep or Path(tempfile.mkdtemp(prefix="opsm-volume-"))
    server = EmbeddedPostgres(folder)
    url = server.start()
    admin = await asyncpg.connect(url)
    await admin.execute("DROP DATABASE IF EXISTS console_volume WITH (FORCE)")
    await admin.execute("CREATE DATABASE console_volume")
    await admin.close()
    db = _with_db(url, "console_volume")
    started = time.perf_counter()
    pool = await create_pool(db, min_size=1, max_size=6)
    try:
        site, token = await _seed(db, pool)
        print(f"seeded in {time.perf_counter() - started:.0f} s")
        settings = load_settings(environ={}, database_url=db, data_dir=str(folder / "data"))
        app = create_app(AppContext(settings=settings, pool=pool, ray_enabled=False))
        pid, headers = site["public_id"], {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://volume") as client:
            base = f"/api/sites/{pid}"
            first = (await client.get(f"{base}/leads", params={"limit": 50}, headers=headers)).json()
            deep = first["next_cursor"]
            for _ in range(199):
                deep = (
                    await client.get(f"{base}/leads", params={"limit": 50, "cursor": deep}, headers=headers)
                ).json()["next_cursor"]
            cases: dict[str, tuple[str, dict[str, Any]]] = {
                "inbox, first page of 50": (f"{base}/leads", {"limit": 50}),
                "inbox, page 10,000 rows deep": (f"{base}/leads", {"limit": 50, "cursor": deep}),
                "inbox, status=confirmed": (f"{base}/leads", {"limit": 50, "status": "confirmed"}),
                "inbox, action=whatsapp": (f"{base}/leads", {"limit": 50, "action": "whatsapp"}),
                "inbox, source=Meta Ads medium=cpc": (
                    f"{base}/leads",
                    {"limit": 50, "source": "Meta Ads", "medium": "cpc"},
                ),
                "lead detail": (f"{base}/leads/{first['leads'][0]['id']}", {}),
                "sessions, first page": (f"{base}/sessions", {"limit": 50}),
                "sales page": (f"{base}/sales", {"limit": 50}),
                "alerts": (f"{base}/alerts", {}),
                "traffic, 7 days": (f"{base}/traffic", {"days": 7}),
                "traffic, 30 days": (f"{base}/traffic", {"days": 30}),
            }
            print(f"{'request':36s} {'median ms':>10s} {'min ms':>8s}")
            for days in (7, 30):
                times = await _time(client, f"{base}/traffic", {"days": days}, headers)
                label = f"traffic, {days} days, all live"
                print(f"{label:36s} {statistics.median(times):10.1f} {min(times):8.1f}")
            started = time.perf_counter()
            rolled = await run_job("traffic_rollup", pool, settings)
            print(f"traffic_rollup job, first run: {rolled} in {time.perf_counter() - started:.1f} s")
            for name, (path, params) in cases.items():
                times = await _time(client, path, params, headers)
                print(f"{name:36s} {statistics.median(times):10.1f} {min(times):8.1f}")
        times = []
        for _ in range(3):
            started = time.perf_counter()
            await run_job("watchtower", pool, settings)
            times.append((time.perf_counter() - started) * 1000)
        print(f"{'watchtower job (both sites)':36s} {statistics.median(times):10.1f} {min(times):8.1f}")
    finally:
        await close_pool(pool)
        server.stop()
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] in {"-h", "--help"}:
        print(__doc__)
        sys.exit(0)
    if args and (args[0] != "--keep" or len(args) != 2):
        print("usage: python -m tests.console_volume [--keep DIR]", file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(Path(args[1]) if args else None))
