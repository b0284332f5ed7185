"""Billing over the ledger: reconciliation, immutable invoices, retention, dispute export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from opsmantik_stream.jobs import run_job

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 15, 12, 0, tzinfo=dt.UTC)


async def _ledger(
    pool: asyncpg.Pool,
    site_id: str,
    when: dt.datetime,
    n: int,
    *,
    billable: bool = True,
    state: str = "ACCEPTED",
    expires: dt.datetime | None = None,
) -> None:
    for _ in range(n):
        await pool.execute(
            "INSERT INTO ingest_idempotency (site_id, idempotency_key, created_at, expires_at, billable, "
            "billing_state, billing_reason) VALUES ($1, $2, $3, $4, $5, $6, 'test')",
            site_id,
            uuid.uuid4().hex,
            when,
            expires or when + dt.timedelta(days=90),
            billable,
            state,
        )


async def test_reconciliation_records_zero_drift_and_finds_a_real_one(
    pool: asyncpg.Pool, settings: Any, make_site: Any
) -> None:
    site = await make_site()
    await _ledger(pool, site["site_id"], NOW, 5)
    await _ledger(pool, site["site_id"], NOW, 2, billable=False, state="NOT_BILLABLE")
    await pool.execute(
        "INSERT INTO site_usage_monthly (site_id, year_month, event_count) VALUES ($1, '2026-11', 5)", site["site_id"]
    )
    result = await run_job("reconcile_usage", pool, settings, now=NOW)
    assert result["2026-11"] == {"sites": 1, "drift": {}}
    run = await pool.fetchrow("SELECT * FROM billing_reconciliation_runs WHERE year_month = '2026-11'")
    assert (run["ledger_count"], run["usage_count"], run["drift"]) == (5, 5, 0)

    await pool.execute("UPDATE site_usage_monthly SET event_count = 3 WHERE site_id = $1", site["site_id"])
    result = await run_job("reconcile_usage", pool, settings, now=NOW)
    assert result["2026-11"]["drift"] == {site["site_id"]: 2}


async def test_invoice_freeze_is_immutable_and_idempotent(pool: asyncpg.Pool, settings: Any, make_site: Any) -> None:
    site = await make_site()
    october = dt.datetime(2026, 10, 20, tzinfo=dt.UTC)
    await _ledger(pool, site["site_id"], october, 4)
    await _ledger(pool, site["site_id"], october, 1, state="OVERAGE")
    first = await run_job("invoice_freeze", pool, settings, now=NOW)
    assert first == {"year_month": "2026-10", "frozen": [site["site_id"]]}
    snap = await pool.fetchrow("SELECT * FROM invoice_snapshot WHERE site_id = $1", site["site_id"])
    assert (snap["event_count"], snap["overage_count"]) == (5, 1)
    again = await run_job("invoice_freeze", pool, settings, now=NOW)
    assert again["frozen"] == []
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE invoice_snapshot SET event_count = 0")
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("DELETE FROM invoice_snapshot")


async def test_retention_keeps_current_and_previous_month(pool: asyncpg.Pool, settings: Any, make_site: Any) -> None:
    site = await make_site()
    old = NOW - dt.timedelta(days=120)
    await _ledger(pool, site["site_id"], old, 3)  # expired 30 days ago: deleted
    await _ledger(pool, site["site_id"], NOW - dt.timedelta(days=89), 1)  # not expired: kept
    # expired but in the previous month: kept
    await _ledger(pool, site["site_id"], dt.datetime(2026, 10, 2, tzinfo=dt.UTC), 1, expires=NOW - dt.timedelta(days=1))
    result = await run_job("ledger_retention", pool, settings, now=NOW)
    assert result["deleted"] == 3
    assert await pool.fetchval("SELECT count(*) FROM ingest_idempotency") == 2


async def test_billing_routes_need_billing_view(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    await _ledger(pool, site["site_id"], NOW, 3)
    billing = await make_token(site["public_id"], "billing")
    analyst = await make_token(site["public_id"], "analyst")
    other = await make_token((await make_site())["public_id"], "owner")
    url = f"/api/billing/dispute-export?site={site['public_id']}&month=2026-11"
    for token in (analyst, other):
        r = await client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 403
    r = await client.get(url, headers={"Authorization": f"Bearer {billing}"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["idempotency_key", "created_at", "billable", "billing_reason"]
    assert len(rows) == 4 and all(row[2] == "true" for row in rows[1:])
    r = await client.get(url.replace("2026-11", "2026-13"), headers={"Authorization": f"Bearer {billing}"})
    assert r.status_code == 422
    r = await client.get(f"/api/billing/usage?site={site['public_id']}", headers={"Authorization": f"Bearer {billing}"})
    assert r.status_code == 200 and r.json()["site"] == site["public_id"]
