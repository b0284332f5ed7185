"""The same phone or WhatsApp link, clicked in the tracker (``/api/sync``) and reported by a
phone system (signed ``/api/call-event``), is stored as the same ``calls.intent_target``
(issue 12: the two paths had their own copies of the rule and disagreed). Served stack:
uvicorn, Ray partitions, PostgreSQL."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.ingest_support import ORIGIN, event, post
from tests.integration._leads_support import signed_headers

pytestmark = pytest.mark.e2e

# (what the link or number says, tracker action, the one stored target)
TABLE = [
    ("tel:0532 123 45 67;ext=2", "phone_call", "tel:+905321234567"),
    ("tel:%2B90 532 123 45 67", "phone_call", "tel:+905321234567"),
    ("tel:0090 (532) 123-45-67", "phone_call", "tel:+905321234567"),
    ("tel:+1 202 555 0100", "phone_call", "tel:+12025550100"),
    ("https://whatsapp.com/joinchat/ABC", "whatsapp", "wa:joinchat/ABC"),
    ("https://chat.whatsapp.com/AbC", "whatsapp", "wa:chat/AbC"),
    ("https://wa.me/905321234567?text=hi", "whatsapp", "wa:+905321234567"),
    ("https://api.whatsapp.com/send?phone=05321234567", "whatsapp", "wa:+905321234567"),
    ("whatsapp://send?phone=+905321234567", "whatsapp", "wa:+905321234567"),
]


async def test_tracker_click_and_call_event_store_the_same_target(
    live_server: str, pool: asyncpg.Pool, make_site: Any
) -> None:
    site = await make_site(origins=[ORIGIN])
    site_id = uuid.UUID(site["site_id"])
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as client:
        for i, (raw, tracker_action, _) in enumerate(TABLE):
            click = event(site, ec="conversion", ea=tracker_action, el=raw, meta={"fp": f"fp-target-{i}"})
            r = await post(client, click)
            assert r.status_code == 202, (raw, r.text)
            # the phone system reports the same link for the same visitor; the action is
            # inferred from it, as a phone system rarely says
            body = json.dumps(
                {
                    "site_id": site["public_id"],
                    "fingerprint": f"fp-target-{i}",
                    "event_id": str(uuid.uuid4()),
                    "phone_number": raw,
                }
            ).encode()
            r = await client.post("/api/call-event", content=body, headers=signed_headers(site, body))
            assert r.status_code == 200, (raw, r.text)
            assert r.json()["status"] == "matched", (raw, r.json())

    rows = await pool.fetch(
        """SELECT s.fingerprint, c.source, c.intent_action, c.intent_target
             FROM calls c JOIN sessions s ON s.id = c.matched_session_id
            WHERE c.site_id = $1""",
        site_id,
    )
    stored: dict[tuple[str, str], tuple[str, str]] = {
        (r["fingerprint"], r["source"]): (r["intent_action"], r["intent_target"]) for r in rows
    }
    assert len(rows) == 2 * len(TABLE)
    for i, (raw, tracker_action, target) in enumerate(TABLE):
        action = "phone" if tracker_action == "phone_call" else "whatsapp"
        fp = f"fp-target-{i}"
        assert stored[(fp, "click")] == (action, target), raw
        assert stored[(fp, "call_event")] == (action, target), raw
