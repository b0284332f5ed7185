"""Watchtower: every check raises one alert and one webhook message, stays quiet while the
condition holds, and sends one "resolved" message when it clears; a failing webhook never
stops the checks and its messages go out later, once each and in order."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.context import AppContext
from opsmantik_stream.config import Settings
from opsmantik_stream.enums import AlertKind
from opsmantik_stream.jobs import JOBS, run_job
from opsmantik_stream.queries import Q
from tests.integration._leads_support import make_session
from tests.serving import free_port, serve_in_thread

pytestmark = pytest.mark.integration


class Receiver:
    """A webhook receiver on 127.0.0.1 that records what it accepted (or answers 500)."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.refused = 0
        self.fail = False

    async def hook(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if self.fail:
            self.refused += 1
            return Response(status_code=500)
        self.accepted.append(body)
        return Response(status_code=204)

    def events(self) -> list[tuple[str, str, str | None]]:
        return [(m["event"], m["alert"]["kind"], m["alert"]["details"].get("site")) for m in self.accepted]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = Starlette(routes=[Route("/hook", rec.hook, methods=["POST"])])
    with serve_in_thread(app) as base:
        yield rec, f"{base}/hook"


def _settings(settings: Settings, url: str | None) -> Settings:
    return settings.with_overrides(
        alert_webhook_url=url,
        watchtower_traffic_min_sessions=2,
        watchtower_click_min_sessions=2,
        watchtower_queue_age_max_s=1800,
        upload_stale_after_s=900,
    )


async def _queue_row(pool: asyncpg.Pool, site_id: Any, status: str, **cols: Any) -> uuid.UUID:
    """A queue row in ``status`` with extra columns set (uploads fill the queue in production)."""
    extra = "".join(f", {name}" for name in cols)
    marks = "".join(f", ${i}" for i in range(4, 4 + len(cols)))
    return uuid.UUID(
        str(
            await pool.fetchval(
                "INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id, order_id, gclid,"
                f" conversion_time, value_minor, currency, status{extra})"
                f" VALUES ($1, 'google_ads', 'sale', gen_random_uuid(), $2, 'G-1', now(), 100, 'TRY', $3{marks})"
                " RETURNING id",
                uuid.UUID(str(site_id)),
                f"ord-{uuid.uuid4().hex[:12]}",
                status,
                *cols.values(),
            )
        )
    )


async def test_each_check_raises_once_stays_quiet_and_resolves_once(
    pool: asyncpg.Pool, settings: Settings, make_site: Any, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    cfg = _settings(settings, url)
    now = dt.datetime.now(dt.UTC)
    sites = {kind: await make_site(name=f"Shop {kind.value}") for kind in AlertKind}

    def sid(kind: AlertKind) -> str:
        return str(sites[kind]["site_id"])

    # no sessions in the last hour, two the day before
    for hours in (2, 5):
        await make_session(pool, sid(AlertKind.NO_SESSIONS), created_at=now - dt.timedelta(hours=hours), gclid=None)
    # click ids the week before, sessions (without click id) in the last hour but none with one
    for hours in (4, 30):
        await make_session(pool, sid(AlertKind.NO_CLICK_IDS), created_at=now - dt.timedelta(hours=hours))
    await make_session(pool, sid(AlertKind.NO_CLICK_IDS), created_at=now - dt.timedelta(minutes=20), gclid=None)
    await pool.execute(
        "INSERT INTO dead_letters (site_id, source, stage, reason, payload) VALUES ($1, 'sync', 'store', 'x', '{}')",
        uuid.UUID(sid(AlertKind.DEAD_LETTERS)),
    )
    # usage counter ahead of the (empty) ledger: the reconcile job records a drift of -3
    await pool.execute(
        "INSERT INTO site_usage_monthly (site_id, year_month, event_count) VALUES ($1, $2, 3)",
        uuid.UUID(sid(AlertKind.BILLING_DRIFT)),
        now.strftime("%Y-%m"),
    )
    await run_job("reconcile_usage", pool, cfg, now=now)
    stuck = await _queue_row(
        pool,
        sid(AlertKind.STUCK_UPLOADS),
        "PROCESSING",
        claimed_by="uploader-x",
        claimed_at=now - dt.timedelta(hours=1),
        attempt=1,
    )
    await pool.execute(
        "INSERT INTO provider_health_state (site_id, destination, state, opened_at, next_probe_at)"
        " VALUES ($1, 'google_ads', 'OPEN', now(), now() + interval '5 minutes')",
        uuid.UUID(sid(AlertKind.BREAKER_OPEN)),
    )
    blocked = await _queue_row(pool, sid(AlertKind.BLOCKED_ROWS), "BLOCKED", error_code="MISSING_CREDENTIALS")
    aged = await _queue_row(pool, sid(AlertKind.QUEUE_AGE), "QUEUED", next_retry_at=now - dt.timedelta(hours=2))

    first = await run_job("watchtower", pool, cfg, now=now)
    assert first["failed_checks"] == {}
    assert sorted(a["kind"] for a in first["raised"]) == sorted(k.value for k in AlertKind)
    expected_raised = sorted(("raised", k.value, sites[k]["public_id"]) for k in AlertKind)
    assert sorted(rec.events()) == expected_raised
    for message in rec.accepted:
        assert (
            message["text"].startswith("[OpsMantik ALERT] ")
            and sites[AlertKind(message["alert"]["kind"])]["name"] in message["text"]
        )
    rows = await pool.fetch("SELECT * FROM watchtower_alerts ORDER BY id")
    assert len(rows) == len(AlertKind)
    assert {str(r["site_id"]) for r in rows} == {sid(k) for k in AlertKind}
    assert all(r["first_seen_at"] == r["last_seen_at"] == now and r["resolved_at"] is None for r in rows)
    breaker = next(r for r in rows if r["kind"] == "breaker_open")
    assert breaker["subject"] == "google_ads"

    # still true a minute later: no new alert, no new message, last_seen moves
    later = now + dt.timedelta(minutes=1)
    second = await run_job("watchtower", pool, cfg, now=later)
    assert second["raised"] == [] and second["resolved"] == [] and len(rec.accepted) == len(AlertKind)
    assert await pool.fetchval("SELECT count(*) FROM watchtower_alerts WHERE last_seen_at = $1", later) == len(
        AlertKind
    )

    # every condition clears
    await make_session(pool, sid(AlertKind.NO_SESSIONS), created_at=later - dt.timedelta(minutes=5), gclid=None)
    await make_session(pool, sid(AlertKind.NO_CLICK_IDS), created_at=later - dt.timedelta(minutes=5))
    await pool.execute("UPDATE dead_letters SET status = 'DISCARDED'")
    await pool.execute("UPDATE site_usage_monthly SET event_count = 0")
    await run_job("reconcile_usage", pool, cfg, now=later)
    await pool.execute(
        "UPDATE offline_conversion_queue SET status = 'COMPLETED', uploaded_at = now() WHERE id = ANY($1::uuid[])",
        [stuck, aged],
    )
    await pool.execute("UPDATE provider_health_state SET state = 'CLOSED'")
    async with pool.acquire() as conn:
        await conn.fetch(Q.uploads.requeue_rows, uuid.UUID(sid(AlertKind.BLOCKED_ROWS)), [blocked], None)

    cleared = now + dt.timedelta(minutes=2)
    third = await run_job("watchtower", pool, cfg, now=cleared)
    assert sorted(a["kind"] for a in third["resolved"]) == sorted(k.value for k in AlertKind)
    resolved_msgs = [m for m in rec.accepted if m["event"] == "resolved"]
    assert sorted((m["alert"]["kind"], m["alert"]["details"]["site"]) for m in resolved_msgs) == sorted(
        (k.value, sites[k]["public_id"]) for k in AlertKind
    )
    assert all(m["text"].startswith("[OpsMantik RESOLVED] ") and "open for 2 min" in m["text"] for m in resolved_msgs)
    assert await pool.fetchval("SELECT count(*) FROM watchtower_alerts WHERE resolved_at = $1", cleared) == len(
        AlertKind
    )
    # and quiet afterwards
    fourth = await run_job("watchtower", pool, cfg, now=cleared + dt.timedelta(minutes=1))
    assert fourth["raised"] == fourth["resolved"] == [] and len(rec.accepted) == 2 * len(AlertKind)


async def test_a_failing_webhook_never_stops_the_checks(
    pool: asyncpg.Pool, settings: Settings, make_site: Any, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    site = await make_site()
    now = dt.datetime.now(dt.UTC)
    row = await _queue_row(pool, site["site_id"], "BLOCKED", error_code="MISSING_CREDENTIALS")

    # the receiver answers 500: the alert is stored anyway, the message waits with back-off
    rec.fail = True
    cfg = _settings(settings, url)
    result = await run_job("watchtower", pool, cfg, now=now)
    assert [a["kind"] for a in result["raised"]] == ["blocked_rows"]
    assert result["webhook"] == {"configured": True, "delivered": 0, "failed": 1}
    msg = await pool.fetchrow("SELECT * FROM watchtower_notifications")
    assert (msg["status"], msg["attempts"], msg["last_error"]) == ("PENDING", 1, "HTTP 500")
    assert msg["next_attempt_at"] >= now + dt.timedelta(seconds=30)

    # nobody listens at all (connection refused): still no exception, the checks still run
    dead = _settings(settings, f"http://127.0.0.1:{free_port()}/hook")
    await pool.execute(
        "UPDATE offline_conversion_queue SET status = 'COMPLETED', uploaded_at = now(), error_code = NULL"
        " WHERE id = $1",
        row,
    )
    result = await run_job("watchtower", pool, dead, now=now + dt.timedelta(minutes=2))
    assert [a["kind"] for a in result["resolved"]] == ["blocked_rows"]
    assert result["webhook"]["failed"] == 1
    errors = await pool.fetch("SELECT event, last_error FROM watchtower_notifications ORDER BY id")
    # the raise backed off, so the resolve waits behind it (order) and nothing was sent
    assert [(e["event"], e["last_error"]) for e in errors] == [("raised", "ConnectError"), ("resolved", None)]
    assert rec.accepted == []

    # the receiver is back: after the back-off both go out, once each, raise first
    rec.fail = False
    done = await run_job("watchtower", pool, cfg, now=now + dt.timedelta(hours=2))
    assert done["webhook"]["delivered"] == 2
    assert [m["event"] for m in rec.accepted] == ["raised", "resolved"]
    again = await run_job("watchtower", pool, cfg, now=now + dt.timedelta(hours=3))
    assert again["webhook"]["delivered"] == 0 and len(rec.accepted) == 2
    assert rec.refused == 1


async def test_alerts_reach_metrics_ops_and_status(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    settings: Settings,
    make_site: Any,
    make_token: Any,
) -> None:
    site = await make_site(name="Metered")
    await _queue_row(pool, site["site_id"], "BLOCKED", error_code="MISSING_CREDENTIALS")
    result = await run_job("watchtower", pool, settings, now=dt.datetime.now(dt.UTC))
    assert result["webhook"] == {"configured": False, "delivered": 0, "failed": 0}
    assert await pool.fetchval("SELECT count(*) FROM watchtower_notifications") == 0

    metrics = (await client.get("/metrics")).text
    assert 'opsmantik_watchtower_alerts_open{kind="blocked_rows"} 1.0' in metrics
    assert 'opsmantik_watchtower_alerts_open{kind="breaker_open"} 0.0' in metrics

    admin = await make_token(None, None, platform_admin=True)
    summary = (await client.get("/api/ops/summary", headers={"Authorization": f"Bearer {admin}"})).json()
    [alert] = summary["alerts"]["open"]
    assert alert["kind"] == "blocked_rows" and alert["public_id"] == site["public_id"]
    assert "Metered" in alert["summary"] and summary["alerts"]["last_run"]["checked_at"]

    from opsmantik_stream.cli.status import _alerts_line

    line = _alerts_line({"by_kind": {"blocked_rows": 1}, "open": [alert], "last_checked_at": "now"})
    assert line.startswith("alerts:    1 open (blocked_rows 1)") and "Metered" in line


def test_the_maintenance_actor_runs_the_watchtower_every_minute() -> None:
    assert JOBS["watchtower"].interval_s == 60


async def test_watchtower_runs_from_the_cli_and_the_cron_endpoint_and_shows_in_status(
    db_url: str, tmp_path: Path, pool: asyncpg.Pool, settings: Settings, make_site: Any, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    site = await make_site(name="Cli shop")
    await _queue_row(pool, site["site_id"], "BLOCKED", error_code="MISSING_CREDENTIALS")
    env = {
        **os.environ,
        "OPSMANTIK_DATABASE_URL": db_url,
        "OPSMANTIK_DATA_DIR": str(tmp_path / "data"),
        "OPSMANTIK_ALERT_WEBHOOK_URL": url,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "opsmantik_stream.cli", *args], capture_output=True, text=True, env=env, timeout=90
        )

    ran = cli("jobs", "run", "watchtower", "--json")
    assert ran.returncode == 0, ran.stderr
    assert [a["kind"] for a in json.loads(ran.stdout)["result"]["raised"]] == ["blocked_rows"]
    assert rec.events() == [("raised", "blocked_rows", site["public_id"])]
    # status exits 1 without a running Ray, but reports the open alert
    status = cli("status", "--json")
    alerts = json.loads(status.stdout)["alerts"]
    assert alerts["by_kind"] == {"blocked_rows": 1} and alerts["last_checked_at"]
    assert "Cli shop" in cli("status").stdout

    app = create_app(
        AppContext(
            settings=_settings(settings, url).with_overrides(cron_secret="cron-s3cret"), pool=pool, ray_enabled=False
        )
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.post("/api/jobs/watchtower")).status_code == 403
        await pool.execute("UPDATE offline_conversion_queue SET status = 'FAILED'")
        r = await http.post("/api/jobs/watchtower", headers={"X-Cron-Secret": "cron-s3cret"})
        assert r.status_code == 200, r.text
        assert [a["kind"] for a in r.json()["result"]["resolved"]] == ["blocked_rows"]
    assert [e[0] for e in rec.events()] == ["raised", "resolved"]
