"""Dead letters: an event the store refused is listed, then replayed once the cause is gone,
and ends up stored and billed exactly once."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

pytestmark = pytest.mark.integration


async def test_list_and_replay_a_dead_letter(
    stack_client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    origin = site["origins"][0]
    owner = await make_token(site["public_id"], "owner")
    analyst = await make_token(site["public_id"], "analyst")
    # a real database refusal for one row, as a bad value or a later constraint would cause
    await pool.execute("ALTER TABLE events ADD CONSTRAINT t_no_poison CHECK (event_label IS DISTINCT FROM 'poison')")
    event = {
        "s": site["public_id"],
        "u": f"{origin}/",
        "eid": str(uuid.uuid4()),
        "sid": str(uuid.uuid4()),
        "ec": "interaction",
        "ea": "view",
        "el": "poison",
        "consent": ["analytics"],
        "meta": {"fp": "fp-dl"},
    }
    r = await stack_client.post("/api/sync", json=event, headers={"Origin": origin})
    assert r.status_code == 202, r.text  # stored durably, as a dead letter
    assert await pool.fetchval("SELECT count(*) FROM events") == 0

    auth = {"Authorization": f"Bearer {owner}"}
    listed = await stack_client.get(f"/api/dead-letters?site={site['public_id']}&status=PENDING", headers=auth)
    assert listed.status_code == 200
    [dead] = listed.json()["dead_letters"]
    assert "payload" not in dead and dead["status"] == "PENDING"

    replay_url = f"/api/dead-letters/{dead['id']}/replay?site={site['public_id']}"
    r = await stack_client.post(replay_url, headers={"Authorization": f"Bearer {analyst}"})
    assert r.status_code == 403
    # still refused: the replay says so and the dead letter stays visible
    r = await stack_client.post(replay_url, headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "failed"
    await pool.execute("ALTER TABLE events DROP CONSTRAINT t_no_poison")
    pending = await pool.fetch("SELECT id FROM dead_letters WHERE status = 'PENDING' ORDER BY id")
    assert len(pending) == 1 and pending[0]["id"] != dead["id"]  # the failed replay left one new row
    r = await stack_client.post(f"/api/dead-letters/{pending[-1]['id']}/replay?site={site['public_id']}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "accepted"
    assert await pool.fetchval("SELECT count(*) FROM events WHERE event_label = 'poison'") == 1
    billable = await pool.fetchval("SELECT count(*) FROM ingest_idempotency WHERE billable")
    assert billable == 1
    assert await pool.fetchval("SELECT event_count FROM site_usage_monthly") == 1
    # a second replay of the same dead letter changes nothing
    r = await stack_client.post(f"/api/dead-letters/{pending[-1]['id']}/replay?site={site['public_id']}", headers=auth)
    assert r.status_code == 409
    assert await pool.fetchval("SELECT count(*) FROM events") == 1
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'dead_letter.replay'") == 2
    # another site's token cannot even see them
    other = await make_token((await make_site())["public_id"], "owner")
    r = await stack_client.get(
        f"/api/dead-letters?site={site['public_id']}", headers={"Authorization": f"Bearer {other}"}
    )
    assert r.status_code == 403
