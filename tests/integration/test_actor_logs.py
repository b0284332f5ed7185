"""Actors log JSON like the gateway: a real Maintenance actor whose jobs fail (its database has
no schema) logs each failure, and the line reaches the driver's stderr (what `opsmantik serve`
prints) as one JSON object with the gateway's fields plus the actor's name."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from opsmantik_stream.config import Settings
from opsmantik_stream.logs import JsonFormatter
from tests.conftest import _with_db, admin_sql

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_db_url(pg_server: str) -> Iterator[str]:
    """A database without the schema, so every job of a Maintenance actor on it fails."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    admin_sql(pg_server, f"CREATE DATABASE {name}")
    try:
        yield _with_db(pg_server, name)
    finally:
        admin_sql(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


@pytest.mark.timeout(180)
def test_an_actor_log_line_reaches_the_driver_as_json(
    ray_session: None, settings: Settings, empty_db_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    from actors.maintenance import Maintenance

    name = f"maintenance-logs-{uuid.uuid4().hex[:8]}"
    actor = Maintenance.options(name=name, namespace=settings.ray_namespace).remote(  # type: ignore[attr-defined]
        empty_db_url, settings, autostart=True
    )
    try:
        assert ray.get(actor.ping.remote(), timeout=120) == "ok"  # starts its job loop
        seen = ""
        mine: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while not mine and time.monotonic() < deadline:
            seen += capfd.readouterr().err
            mine = [e for e in _json_lines(seen) if e.get("actor") == name]
            time.sleep(0.2)
        assert mine, f"no JSON line from actor {name} on the driver's stderr:\n{seen[-3000:]}"
    finally:
        ray.kill(actor, no_restart=True)

    failure = next(e for e in mine if e["logger"] == "actors.maintenance")
    assert failure["level"] == "ERROR"
    assert failure["msg"].startswith("job ") and failure["msg"].endswith(" failed")
    assert "does not exist" in failure["exc"]  # the traceback of the failed query
    time.strptime(failure["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    # the same fields the gateway writes
    gateway = json.loads(JsonFormatter().format(logging.makeLogRecord({"name": "opsmantik.http", "msg": "request"})))
    assert set(gateway) <= set(failure)
