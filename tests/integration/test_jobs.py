"""Periodic jobs on demand: the cron-secret endpoint and `opsmantik jobs`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.app import create_app
from gateway.context import AppContext

pytestmark = pytest.mark.integration


async def _client(settings: Any, pool: asyncpg.Pool, secret: str | None) -> httpx.AsyncClient:
    app = create_app(AppContext(settings=settings.with_overrides(cron_secret=secret), pool=pool, ray_enabled=False))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_cron_endpoint_needs_the_secret(settings: Any, pool: asyncpg.Pool) -> None:
    async with await _client(settings, pool, "s3cret-value") as c:
        for headers in ({}, {"X-Cron-Secret": "nope"}, {"Authorization": "Bearer nope"}):
            r = await c.post("/api/jobs/partitions", headers=headers)
            assert r.status_code == 403
            assert r.headers["x-opsmantik-error-code"] == "CRON_FORBIDDEN"
        r = await c.post("/api/jobs/partitions", headers={"X-Cron-Secret": "s3cret-value"})
        assert r.status_code == 200, r.text
        assert r.json()["job"] == "partitions"
        r = await c.post("/api/jobs/partitions", headers={"Authorization": "Bearer s3cret-value"})
        assert r.status_code == 200
        r = await c.post("/api/jobs/nope", headers={"X-Cron-Secret": "s3cret-value"})
        assert r.status_code == 404


async def test_cron_endpoint_is_off_without_a_configured_secret(settings: Any, pool: asyncpg.Pool) -> None:
    async with await _client(settings, pool, None) as c:
        r = await c.post("/api/jobs/partitions", headers={"X-Cron-Secret": ""})
        assert r.status_code == 403


async def test_partitions_job_creates_months_ahead(pool: asyncpg.Pool, settings: Any) -> None:
    import datetime as dt

    from opsmantik_stream.jobs import run_job

    # a June five years ahead: far past the months the migrations created from today's date
    year = dt.datetime.now(dt.UTC).year + 5
    june = dt.datetime(year, 6, 15, tzinfo=dt.UTC)
    result = await run_job("partitions", pool, settings, now=june)
    assert f"{year}-09" in result["created"]
    assert await pool.fetchval(f"SELECT to_regclass('public.sessions_{year}_09') IS NOT NULL")
    again = await run_job("partitions", pool, settings, now=june)
    assert again["created"] == []


def test_jobs_cli(db_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "OPSMANTIK_DATABASE_URL": db_url, "OPSMANTIK_DATA_DIR": str(tmp_path)}
    listed = subprocess.run(
        [sys.executable, "-m", "opsmantik_stream.cli", "jobs", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    names = {j["name"] for j in json.loads(listed.stdout)["jobs"]}
    assert {"partitions", "upload_rescue", "auto_approve"} <= names
    ran = subprocess.run(
        [sys.executable, "-m", "opsmantik_stream.cli", "jobs", "run", "partitions", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["job"] == "partitions"
    bad = subprocess.run(
        [sys.executable, "-m", "opsmantik_stream.cli", "jobs", "run", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 1 and "no job named" in bad.stderr
