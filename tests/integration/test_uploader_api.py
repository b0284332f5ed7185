"""Operator surface: credentials (write-only), queue/rows/ledger reads, requeue and breaker
reset (audited), capabilities, and the CLI."""

from __future__ import annotations

import asyncio
import json

import pytest

from opsmantik_stream.cli import main as cli_main
from tests.integration._uploader_support import ACTION, add_rows

pytestmark = pytest.mark.integration

CREDS = {
    "destination": "google_ads",
    "customer_id": "123-456-7890",
    "client_id": "cid",
    "client_secret": "very-secret-client",
    "refresh_token": "very-secret-refresh",
    "developer_token": "very-secret-dev",
    "conversion_action": ACTION,
    "requests_per_s": 5,
}


async def test_credentials_are_write_only_and_sealed(client, pool, make_site, make_token) -> None:
    site = await make_site()
    owner = await make_token(site["public_id"], "owner")
    operator = await make_token(site["public_id"], "operator")
    url = f"/api/sites/{site['public_id']}/credentials"
    r = await client.put(url, json=CREDS, headers={"authorization": f"Bearer {operator}"})
    assert r.status_code == 403
    r = await client.put(url, json={**CREDS, "customer_id": "abc"}, headers={"authorization": f"Bearer {owner}"})
    assert r.status_code == 422 and r.headers["x-opsmantik-error-code"] == "invalid_customer_id"
    r = await client.put(url, json=CREDS, headers={"authorization": f"Bearer {owner}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["account_id"] == "1234567890" and body["requests_per_s"] == 5
    assert "very-secret" not in r.text
    row = await pool.fetchrow("SELECT * FROM provider_credentials WHERE site_id = $1", site["site_id"])
    assert b"very-secret" not in bytes(row["sealed"])
    audit = await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'credentials.set'")
    assert audit == 1
    assert (await client.put(url, json=CREDS)).status_code == 401


async def test_queue_rows_ledger_requeue_and_breaker_reset(client, pool, make_site, make_token) -> None:
    site, other = await make_site(), await make_site()
    rows = await add_rows(pool, site["site_id"], ["Cj0Ka", "Cj0Kb", "Cj0Kc"])
    await pool.execute(
        "UPDATE offline_conversion_queue SET status = 'FAILED', attempt = 7, error_code = 'MAX_ATTEMPTS', "
        "last_error = 'gave up' WHERE id = $1",
        rows[0]["id"],
    )
    await pool.execute(
        "UPDATE offline_conversion_queue SET status = 'BLOCKED', error_code = 'MISSING_CREDENTIALS' WHERE id = $1",
        rows[1]["id"],
    )
    await pool.execute(
        "INSERT INTO provider_health_state (site_id, destination, state, failure_count) VALUES ($1, 'google_ads', 'OPEN', 5)",  # noqa: E501
        site["site_id"],
    )
    analyst = await make_token(site["public_id"], "analyst")
    operator = await make_token(site["public_id"], "operator")
    stranger = await make_token(other["public_id"], "owner")
    a = {"authorization": f"Bearer {analyst}"}
    o = {"authorization": f"Bearer {operator}"}
    q = await client.get("/api/oci/queue", params={"site": site["public_id"]}, headers=a)
    assert q.status_code == 200
    assert q.json()["counts"] == {
        "QUEUED": 1,
        "PROCESSING": 0,
        "COMPLETED": 0,
        "RETRY": 0,
        "FAILED": 1,
        "BLOCKED": 1,
    }
    assert q.json()["breakers"][0]["state"] == "OPEN"
    r = await client.get("/api/oci/rows", params={"site": site["public_id"], "status": "FAILED"}, headers=a)
    assert [x["last_error"] for x in r.json()["rows"]] == ["gave up"]
    assert (await client.get("/api/oci/ledger", params={"site": site["public_id"]}, headers=a)).status_code == 200
    stranger_h = {"authorization": f"Bearer {stranger}"}
    assert (
        await client.get("/api/oci/queue", params={"site": site["public_id"]}, headers=stranger_h)
    ).status_code == 403
    body = {"site": site["public_id"], "status": "FAILED"}
    assert (await client.post("/api/oci/requeue", json=body, headers=a)).status_code == 403
    r = await client.post("/api/oci/requeue", json={"site": site["public_id"], "status": "QUEUED"}, headers=o)
    assert r.status_code == 400
    r = await client.post("/api/oci/requeue", json=body, headers=o)
    assert r.status_code == 200 and r.json()["requeued"] == 1
    back = await pool.fetchrow("SELECT status, attempt FROM offline_conversion_queue WHERE id = $1", rows[0]["id"])
    assert (back["status"], back["attempt"]) == ("QUEUED", 0)
    r = await client.post("/api/oci/breaker/reset", json={"site": site["public_id"]}, headers=o)
    assert r.status_code == 200
    h = await pool.fetchrow(
        "SELECT state, failure_count FROM provider_health_state WHERE site_id = $1", site["site_id"]
    )
    assert (h["state"], h["failure_count"]) == ("CLOSED", 0)
    actions = [
        r["action"] for r in await pool.fetch("SELECT action FROM audit_log WHERE site_id = $1", site["site_id"])
    ]
    assert "oci.requeue" in actions and "oci.breaker_reset" in actions


def test_cli_credentials_and_queue(db_url, settings, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OPSMANTIK_DATABASE_URL", db_url)
    monkeypatch.setenv("OPSMANTIK_DATA_DIR", settings.data_dir)
    monkeypatch.setenv("OPSMANTIK_VAULT_KEY", settings.vault_key or "")
    assert cli_main(["site", "create", "--name", "Cli shop", "--domain", "cli.example.com", "--json"]) == 0
    public_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["public_id"]
    monkeypatch.setenv("OPSMANTIK_CRED_CLIENT_SECRET", "cli-secret")
    monkeypatch.setenv("OPSMANTIK_CRED_REFRESH_TOKEN", "cli-refresh")
    rc = cli_main(
        [
            "site",
            "credentials",
            "set",
            public_id,
            "--destination",
            "data_manager",
            "--customer-id",
            "1112223333",
            "--client-id",
            "cid",
            "--conversion-action",
            "987654",
            "--requests-per-s",
            "3",
            "--json",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    view = json.loads(out.strip().splitlines()[-1])
    assert view["account_id"] == "1112223333" and "cli-secret" not in out
    assert cli_main(["oci", "queue", "--site", public_id, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["counts"]["QUEUED"] == 0
    assert cli_main(["oci", "breaker-reset", "--site", public_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["state"] == "CLOSED"
    assert cli_main(["oci", "ledger", "--site", public_id, "--json"]) == 0


def test_cli_destination_set_list_and_status(db_url, settings, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OPSMANTIK_DATABASE_URL", db_url)
    monkeypatch.setenv("OPSMANTIK_DATA_DIR", settings.data_dir)
    monkeypatch.setenv("OPSMANTIK_VAULT_KEY", settings.vault_key or "")
    assert cli_main(["site", "create", "--name", "Dest shop", "--domain", "dest.example.com", "--json"]) == 0
    public_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["public_id"]
    with pytest.raises(SystemExit) as bad:
        cli_main(["site", "destination", "set", public_id, "meta"])
    assert bad.value.code == 2
    capsys.readouterr()
    assert cli_main(["site", "destination", "set", public_id, "google_ads"]) == 0
    text = capsys.readouterr().out
    assert f"{public_id} sends to google_ads (was data_manager)" in text
    assert f"opsmantik site credentials set {public_id} --destination google_ads" in text
    assert cli_main(["site", "list"]) == 0
    assert "-> google_ads (no credentials yet)" in capsys.readouterr().out
    cli_main(["status", "--json"])  # exit 1 without a running Ray; the data part is still printed
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status["destinations"] == [
        {
            "site_id": status["destinations"][0]["site_id"],
            "public_id": public_id,
            "name": "Dest shop",
            "destination": "google_ads",
            "credentials": [],
            "ready": False,
        }
    ]


async def test_api_and_cli_write_credentials_alike(
    client, pool, make_site, make_token, settings, db_url, monkeypatch, capsys
) -> None:
    """One implementation (uploads/delivery.py): the same credentials set through the API and
    the CLI store the same facts and leave the same audit record, the actor aside."""
    by_api, by_cli = await make_site(), await make_site()
    owner = await make_token(by_api["public_id"], "owner")
    r = await client.put(
        f"/api/sites/{by_api['public_id']}/credentials", json=CREDS, headers={"authorization": f"Bearer {owner}"}
    )
    assert r.status_code == 200, r.text
    monkeypatch.setenv("OPSMANTIK_DATABASE_URL", db_url)
    monkeypatch.setenv("OPSMANTIK_DATA_DIR", settings.data_dir)
    monkeypatch.setenv("OPSMANTIK_VAULT_KEY", settings.vault_key or "")
    monkeypatch.setenv("OPSMANTIK_CRED_CLIENT_SECRET", CREDS["client_secret"])
    monkeypatch.setenv("OPSMANTIK_CRED_REFRESH_TOKEN", CREDS["refresh_token"])
    monkeypatch.setenv("OPSMANTIK_CRED_DEVELOPER_TOKEN", CREDS["developer_token"])
    args = ["site", "credentials", "set", by_cli["public_id"], "--destination", "google_ads"]
    args += ["--customer-id", str(CREDS["customer_id"]), "--client-id", str(CREDS["client_id"])]
    args += ["--conversion-action", ACTION, "--requests-per-s", "5", "--json"]
    assert await asyncio.to_thread(cli_main, args) == 0
    cli_view = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    api_view = r.json()
    same = ("destination", "account_id", "key_fingerprint", "requests_per_s", "site_destination", "note")
    assert {k: api_view[k] for k in same if k != "note"} == {k: cli_view[k] for k in same if k != "note"}
    assert api_view["note"].replace(by_api["public_id"], "X") == cli_view["note"].replace(by_cli["public_id"], "X")
    audits = {
        str(a["site_id"]): a
        for a in await pool.fetch(
            "SELECT actor_type, action, resource_type, resource_id, site_id, payload FROM audit_log "
            "WHERE action = 'credentials.set'"
        )
    }
    api_audit, cli_audit = audits[str(by_api["site_id"])], audits[str(by_cli["site_id"])]
    assert (api_audit["actor_type"], cli_audit["actor_type"]) == ("user", "cli")
    fields = ("action", "resource_type", "resource_id", "payload")
    assert {k: api_audit[k] for k in fields} == {k: cli_audit[k] for k in fields}
    assert api_audit["payload"]["site_destination_changed"] is True
    sealed = await pool.fetch("SELECT sealed FROM provider_credentials")
    assert len(sealed) == 2 and all(b"very-secret" not in bytes(s["sealed"]) for s in sealed)
