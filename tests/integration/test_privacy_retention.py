"""The privacy_retention job: consent-less sessions past the retention period and old
dead-letter payloads are anonymised in bounded batches; a dry run only counts; the last run
shows in `opsmantik status` and /metrics; the CLI answers data-subject requests."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.context import AppContext
from opsmantik_stream.cli.status import _text as status_text
from opsmantik_stream.jobs import JOBS, run_job
from opsmantik_stream.privacy import run_retention
from tests.integration._leads_support import make_session
from tests.integration._privacy_support import FINGERPRINT, seed_subject

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)


async def _old_session(pool: asyncpg.Pool, site: dict[str, Any], days: int, consent: tuple[str, ...]) -> uuid.UUID:
    at = NOW - dt.timedelta(days=days)
    s = await make_session(
        pool, site["site_id"], fingerprint=f"fp-{uuid.uuid4().hex[:6]}", consent=consent, created_at=at
    )
    await pool.execute(
        """INSERT INTO events (session_id, session_month, site_id, url, event_category, event_action, metadata,
               created_at)
           VALUES ($1, $2, $3, 'https://shop.example.com/?gclid=x', 'interaction', 'view', '{"fingerprint": "x"}',
                   $4)""",
        uuid.UUID(s["id"]),
        s["created_month"],
        uuid.UUID(site["site_id"]),
        at,
    )
    return uuid.UUID(s["id"])


async def _dead_letter(pool: asyncpg.Pool, site: dict[str, Any], days: int) -> int:
    return int(
        await pool.fetchval(
            "INSERT INTO dead_letters (site_id, source, stage, reason, payload, created_at) "
            "VALUES ($1, 'ingest', 'write', 'DataError', '{\"meta\": {\"fp\": \"fp-dl\"}}', $2) RETURNING id",
            uuid.UUID(site["site_id"]),
            NOW - dt.timedelta(days=days),
        )
    )


async def test_retention_anonymises_old_consentless_data_in_batches(pool: asyncpg.Pool, make_site: Any) -> None:
    site = await make_site()
    withdrawn = [await _old_session(pool, site, 100, ()) for _ in range(5)]
    marketing_only = await _old_session(pool, site, 100, ("marketing",))
    consented = await _old_session(pool, site, 100, ("analytics",))
    recent = await _old_session(pool, site, 10, ())
    old_dl = [await _dead_letter(pool, site, 40) for _ in range(3)]
    new_dl = await _dead_letter(pool, site, 5)

    dry = await run_retention(pool, now=NOW, days=90, dead_letter_days=30, batch=2, dry_run=True)
    assert dry["would_anonymize"] == {"sessions": 6, "events": 6, "dead_letters": 3}
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE anonymized_at IS NOT NULL") == 0
    assert await pool.fetchval("SELECT count(*) FROM dead_letters WHERE redacted_at IS NOT NULL") == 0
    assert await pool.fetchval("SELECT count(*) FROM runtime_state WHERE key LIKE 'privacy%'") == 0

    done = await run_retention(pool, now=NOW, days=90, dead_letter_days=30, batch=2)
    assert done["batches"] == 4  # 6 sessions in batches of 2, and a last empty one
    assert done["counts"]["sessions"] == 6 and done["counts"]["events"] == 6
    assert done["counts"]["dead_letters"] == 3
    rows = {r["id"]: r for r in await pool.fetch("SELECT * FROM sessions")}
    for sid in [*withdrawn, marketing_only]:
        assert rows[sid]["anonymized_at"] is not None and rows[sid]["fingerprint"] is None
    for sid in (consented, recent):
        assert rows[sid]["anonymized_at"] is None and rows[sid]["fingerprint"] is not None
    urls = {r["session_id"]: r["url"] for r in await pool.fetch("SELECT session_id, url FROM events")}
    assert urls[withdrawn[0]] == "https://shop.example.com/" and urls[consented].endswith("?gclid=x")
    letters = {r["id"]: r for r in await pool.fetch("SELECT * FROM dead_letters")}
    assert all(
        letters[i]["payload"]
        == {"redacted": True, "redacted_at": letters[i]["payload"]["redacted_at"], "reason": "retention"}
        for i in old_dl
    )
    assert letters[new_dl]["payload"]["meta"]["fp"] == "fp-dl"
    # recorded for status and /metrics, audited; a second run finds nothing
    state = await pool.fetchval("SELECT value FROM runtime_state WHERE key = 'privacy_retention.last_run'")
    assert state["counts"] == done["counts"]
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'privacy.retention'") == 1
    again = await run_retention(pool, now=NOW, days=90, dead_letter_days=30, batch=2)
    assert set(again["counts"].values()) == {0}
    with pytest.raises(ValueError):
        await run_retention(pool, now=NOW, days=10, dead_letter_days=30, batch=2)


async def test_retention_reaches_what_a_session_left_behind(settings: Any, pool: asyncpg.Pool, make_site: Any) -> None:
    """A withdrawn session's calls, conversation, sale notes, conversions and dead letters go
    with it (the same rows an erase reaches)."""
    site = await make_site()
    fp = await seed_subject(pool, site, at=NOW - dt.timedelta(days=200))
    main = uuid.UUID(fp.sessions[0])
    await pool.execute("UPDATE sessions SET consent_scopes = '{}' WHERE id = $1", main)
    # the subject's other session is still active and consented
    await pool.execute("UPDATE sessions SET last_activity_at = now() WHERE id = $1", uuid.UUID(fp.sessions[1]))
    done = await run_job("privacy_retention", pool, settings, now=NOW)
    assert done["counts"]["sessions"] == 1 and done["counts"]["calls"] == 2 and done["counts"]["sales"] == 1
    assert done["counts"]["dead_letters"] == 1
    assert await pool.fetchval("SELECT notes FROM sales WHERE id = $1", uuid.UUID(fp.sale)) is None
    # the withdrawal had voided the pending conversion already; retention took its click id
    row = await pool.fetchrow("SELECT * FROM offline_conversion_queue WHERE id = $1", uuid.UUID(fp.queued))
    assert (row["status"], row["error_code"], row["gclid"]) == ("FAILED", "consent_withdrawn", None)
    # the subject's other session has consent and is kept
    assert await pool.fetchval("SELECT fingerprint FROM sessions WHERE id = $1", uuid.UUID(fp.sessions[1])) == (
        FINGERPRINT
    )


async def test_last_run_in_status_metrics_and_cron(
    settings: Any, pool: asyncpg.Pool, db_url: str, tmp_path: Path, make_site: Any
) -> None:
    assert "privacy_retention" in JOBS
    site = await make_site()
    await _old_session(pool, site, 120, ())
    app = create_app(
        # metrics_cache_s=0: every scrape reads the figures (this test is about the job's)
        AppContext(
            settings=settings.with_overrides(cron_secret="cron-s3cret", metrics_cache_s=0.0),
            pool=pool,
            ray_enabled=False,
        )
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        metrics = (await c.get("/metrics")).text
        assert "opsmantik_privacy_retention_last_run_timestamp_seconds" not in metrics
        r = await c.post("/api/jobs/privacy_retention", headers={"X-Cron-Secret": "cron-s3cret"})
        assert r.status_code == 200, r.text
        assert r.json()["result"]["counts"]["sessions"] == 1
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families((await c.get("/metrics")).text)
            for s in f.samples
        }
    assert samples[("opsmantik_privacy_retention_last_run_rows", (("table", "sessions"),))] == 1
    assert samples[("opsmantik_privacy_retention_last_run_timestamp_seconds", ())] > NOW.timestamp() - 60

    env = {**os.environ, "OPSMANTIK_DATABASE_URL": db_url, "OPSMANTIK_DATA_DIR": str(tmp_path / "data")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "opsmantik_stream.cli", *args], capture_output=True, text=True, env=env, timeout=90
        )

    status = json.loads(cli("status", "--json").stdout)
    assert status["privacy_retention"]["counts"]["sessions"] == 1
    assert "privacy:   retention last run" in status_text(status)
    dry = cli("privacy", "retention", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["would_anonymize"]["sessions"] == 0
    assert cli("privacy", "retention", "--days", "7").returncode == 2
    assert "erase" in cli("privacy", "--help").stdout


async def test_cli_erase_and_export(pool: asyncpg.Pool, db_url: str, tmp_path: Path, make_site: Any) -> None:
    site = await make_site()
    fp = await seed_subject(pool, site)
    env = {**os.environ, "OPSMANTIK_DATABASE_URL": db_url, "OPSMANTIK_DATA_DIR": str(tmp_path / "data")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "opsmantik_stream.cli", "privacy", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=90,
        )

    subject = ["--site", site["public_id"], "--type", "fingerprint", "--value", FINGERPRINT]
    out = tmp_path / "export.json"
    summary = cli("export", *subject, "--output", str(out), "--json")
    assert summary.returncode == 0, summary.stderr
    doc = json.loads(out.read_text())
    assert json.loads(summary.stdout)["total_records"] == doc["meta"]["total_records"] > 0
    assert sorted(s["id"] for s in doc["sessions"]) == sorted(fp.sessions)
    printed = cli("export", *subject)
    assert json.loads(printed.stdout)["meta"]["total_records"] == doc["meta"]["total_records"]

    erased = cli("erase", *subject, "--json")
    assert erased.returncode == 0, erased.stderr
    assert json.loads(erased.stdout)["counts"]["sessions"] == 2
    assert "0 rows changed" in cli("erase", *subject).stdout
    assert (
        await pool.fetchval("SELECT count(*) FROM audit_log WHERE action LIKE 'privacy.%' AND actor_type = 'cli'") == 4
    )

    bad = cli("erase", "--site", site["public_id"], "--type", "phone", "--value", "nope")
    assert bad.returncode == 2 and "not a phone number" in bad.stderr
    assert cli("erase", "--site", "f" * 32, "--type", "fingerprint", "--value", "x").returncode == 1
