"""Destinations are plug-ins (issue 12): a toy third destination, added with one module
(``_toy_destination.py``), one registry entry and one migration, is chosen, given credentials
through the API and the CLI, receives sealed conversions from the uploader, and has its own
errors classified and hinted, with nothing else changed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from opsmantik_stream.cli import main as cli_main
from opsmantik_stream.config import Settings
from opsmantik_stream.destinations import registry
from opsmantik_stream.enums import CHECKED_COLUMNS, Destination
from opsmantik_stream.uploads import UploadEngine
from tests.integration._leads_support import auth, make_intent, make_session
from tests.integration._toy_destination import ToyDestination
from tests.integration._uploader_support import add_rows, assert_ledger_complete, fast_settings, rows_of
from tests.serving import serve_in_thread

pytestmark = pytest.mark.integration

TOY_KEY = "toy-key-123456"


@pytest.fixture
def toy_api() -> Iterator[dict[str, Any]]:
    """The toy's API on a real uvicorn: remembers what it received."""
    seen: dict[str, Any] = {"requests": []}

    async def conversions(request: Request) -> JSONResponse:
        body = await request.json()
        seen["requests"].append(body)
        if request.headers.get("x-api-key") != TOY_KEY:
            return JSONResponse({"code": "BAD_KEY", "message": "unknown key"}, status_code=401)
        results = [
            {"status": "error", "code": "BAD_CLICK"} if str(e["click"]).startswith("BAD") else {"status": "ok"}
            for e in body["events"]
        ]
        return JSONResponse({"results": results})

    app = Starlette(routes=[Route("/v1/conversions", conversions, methods=["POST"])])
    with serve_in_thread(app) as base:
        ToyDestination.endpoint = base
        yield seen


@pytest.fixture
def toy_registered(pool: Any) -> Iterator[None]:
    """The registry entry (a shipped destination is one line in destinations/shipped.py instead)."""
    registry.register("toy", "tests.integration._toy_destination:ToyDestination")
    try:
        yield
    finally:
        registry.unregister("toy")


async def test_a_toy_destination_is_one_module_one_entry_one_migration(
    client, pool, make_site, make_token, settings: Settings, toy_api, toy_registered, db_url, monkeypatch, capsys
) -> None:
    # the one migration
    checks = sum(1 for enum in CHECKED_COLUMNS.values() if enum is Destination)
    assert await pool.fetchval("SELECT allow_destination('toy')") == checks
    assert await pool.fetchval("SELECT allow_destination('toy')") == 0  # idempotent
    site = await make_site()
    pid = site["public_id"]
    owner = await make_token(pid, "owner")
    # credentials through the API: the toy's schema validates them, and the only destination
    # with credentials becomes the site's
    url = f"/api/sites/{pid}/credentials"
    bad = await client.put(
        url, json={"destination": "toy", "account": "Not Valid!", "api_key": TOY_KEY}, headers=auth(owner)
    )
    assert bad.status_code == 422 and bad.headers["x-opsmantik-error-code"] == "invalid_body"
    r = await client.put(url, json={"destination": "toy", "account": "acme-1", "api_key": TOY_KEY}, headers=auth(owner))
    assert r.status_code == 200, r.text
    assert (r.json()["account_id"], r.json()["site_destination"]) == ("acme-1", "toy")
    assert TOY_KEY not in r.text
    assert (await client.get(f"/api/sites/{pid}", headers=auth(owner))).json()["destination"] == "toy"
    # a sealed conversion of the site goes to the toy
    session = await make_session(pool, site["site_id"], gclid="Cj0Ktoy")
    call_id = await make_intent(pool, site["site_id"], session)
    sealed = await client.post(
        f"/api/calls/{call_id}/actions", json={"action": "seal", "value_minor": 1234}, headers=auth(owner)
    )
    assert sealed.json()["conversion"]["enqueued"] is True
    [bad_row] = await add_rows(pool, site["site_id"], ["BAD-click"], destination="toy")
    engine = UploadEngine(pool, fast_settings(settings), "uploader-toy-0", seed=1)
    try:
        s = await engine.run_once()
        assert (s["destination"], s["completed"], s["failed"], s["http_status"]) == ("toy", 1, 1, 200)
        [request] = toy_api["requests"]
        assert request["account"] == "acme-1"
        assert sorted(e["click"] for e in request["events"]) == ["BAD-click", "Cj0Ktoy"]
        rows = await pool.fetch("SELECT status, destination, error_code FROM offline_conversion_queue ORDER BY status")
        assert [(r["status"], r["destination"], r["error_code"]) for r in rows] == [
            ("COMPLETED", "toy", None),
            ("FAILED", "toy", "BAD_CLICK"),
        ]
        # the CLI takes the toy's flags from its schema (secret ones also from OPSMANTIK_CRED_*)
        monkeypatch.setenv("OPSMANTIK_DATABASE_URL", db_url)
        monkeypatch.setenv("OPSMANTIK_DATA_DIR", settings.data_dir)
        monkeypatch.setenv("OPSMANTIK_VAULT_KEY", settings.vault_key or "")
        monkeypatch.setenv("OPSMANTIK_CRED_API_KEY", "wrong-key-0000")
        args = ["site", "credentials", "set", pid, "--destination", "toy"]
        assert await asyncio.to_thread(cli_main, [*args, "--customer-id", "1"]) == 2
        capsys.readouterr()
        assert await asyncio.to_thread(cli_main, [*args, "--account", "acme-1", "--json"]) == 0
        view = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert view["destination"] == "toy" and "wrong-key" not in json.dumps(view)
        # the toy's own account error is BLOCKED with the toy's own hint
        [again] = await add_rows(pool, site["site_id"], ["Cj0Ktoy2"], destination="toy")
        s = await engine.run_once()
        assert s["blocked"] == 1
        blocked = (await rows_of(pool, [again["id"]]))[again["id"]]
        assert blocked["error_code"] == "BAD_KEY"
        assert f"`opsmantik site credentials set {pid} --destination toy ...`" in blocked["last_error"]
        assert "The destination said: unknown key" in blocked["last_error"]
    finally:
        await engine.aclose()
    assert (await rows_of(pool, [bad_row["id"]]))[bad_row["id"]]["status"] == "FAILED"
    await assert_ledger_complete(pool)
