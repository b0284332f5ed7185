"""Read-only site views (``/api/sites/{site}/leads|sessions|traffic|sales|alerts``): keyset
pages, filters, the lead card (masked target, session summary, conversion state, the score's
parts), role checks and row-level security."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from opsmantik_stream.db import api_transaction
from opsmantik_stream.jobs import run_job
from tests.ingest_support import event, post
from tests.integration._leads_support import auth, make_intent, make_session

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


async def _clear_of_midnight(zone: str) -> dt.datetime:
    """The time now, after waiting out the minute around midnight in ``zone``.

    The traffic view counts by local day. A test that dates a lead seconds ago and expects it
    under today must not start in the last minute of a day, nor in the first 40 seconds of one,
    or the lead and the request fall on two days. The suite runs for minutes and can cross
    midnight, so the module's ``NOW`` is not good enough for such a test."""
    now = dt.datetime.now(ZoneInfo(zone))
    since_midnight = now - dt.datetime.combine(now.date(), dt.time(), now.tzinfo)
    if since_midnight >= dt.timedelta(hours=23, minutes=59):
        await asyncio.sleep((dt.timedelta(days=1, seconds=40) - since_midnight).total_seconds())
    elif since_midnight < dt.timedelta(seconds=40):
        await asyncio.sleep((dt.timedelta(seconds=40) - since_midnight).total_seconds())
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


async def _lead(
    pool: asyncpg.Pool,
    site: dict[str, Any],
    minutes_ago: int = 0,
    *,
    seconds_ago: int = 0,
    now: dt.datetime = NOW,
    **session_kw: Any,
) -> str:
    channel = session_kw.pop("channel", ("Google Ads", "cpc"))
    action = session_kw.pop("action", "phone")
    at = now - dt.timedelta(minutes=minutes_ago, seconds=seconds_ago)
    session = await make_session(pool, site["site_id"], created_at=at, **session_kw)
    await pool.execute(
        "UPDATE sessions SET traffic_source = $2, traffic_medium = $3, attribution_source = 'First Click (Paid)',"
        " entry_page = 'https://shop.example.com/klima' WHERE id = $1",
        uuid.UUID(session["id"]),
        *channel,
    )
    return await make_intent(pool, site["site_id"], session, created_at=at, action=action)


async def _get(client: httpx.AsyncClient, token: str, path: str, **params: Any) -> httpx.Response:
    return await client.get(path, params={k: v for k, v in params.items() if v is not None}, headers=auth(token))


async def test_leads_are_paged_newest_first_with_filters(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site, other = await make_site(), await make_site()
    token = await make_token(site["public_id"], "analyst")
    ids = [await _lead(pool, site, minutes_ago=10 * i) for i in range(5)]  # ids[0] is the newest
    whatsapp = await _lead(pool, site, minutes_ago=55, action="whatsapp", channel=("SEO", "organic"))
    await pool.execute("UPDATE calls SET status = 'junk' WHERE id = $1", uuid.UUID(ids[3]))
    base = f"/api/sites/{site['public_id']}/leads"

    seen: list[str] = []
    cursor = None
    for _ in range(5):
        r = await _get(client, token, base, limit=2, cursor=cursor)
        assert r.status_code == 200, r.text
        seen += [lead["id"] for lead in r.json()["leads"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [*ids, whatsapp]

    first = (await _get(client, token, base, limit=1)).json()["leads"][0]
    # the hidden digits appear nowhere in the card (seven of them: four could sit in a UUID)
    assert first["target"] == "tel:+9055••••••33" and "1112233" not in str(first)
    assert first["session"]["pages"] == 0 and first["session"]["duration_sec"] == 40
    assert first["session"]["traffic_source"] == "Google Ads" and first["session"]["click_id_type"] == "gclid"
    assert first["allowed_actions"] == ["seal", "junk", "cancel"] and first["conversion"] is None

    def only(r: httpx.Response) -> list[str]:
        assert r.status_code == 200, r.text
        return [lead["id"] for lead in r.json()["leads"]]

    assert only(await _get(client, token, base, status="junk")) == [ids[3]]
    assert only(await _get(client, token, base, action="whatsapp")) == [whatsapp]
    assert only(await _get(client, token, base, source="SEO", medium="organic")) == [whatsapp]
    window = {"from": (NOW - dt.timedelta(minutes=25)).isoformat(), "to": (NOW - dt.timedelta(minutes=5)).isoformat()}
    assert only(await _get(client, token, base, **window)) == [ids[1], ids[2]]

    for bad in ({"cursor": "garbage!"}, {"status": "sealed"}, {"action": "fax"}, {"limit": 0}, {"from": "yesterday"}):
        r = await _get(client, token, base, **bad)
        assert 400 <= r.status_code < 500, (bad, r.text)
    assert (await _get(client, token, f"/api/sites/{other['public_id']}/leads")).status_code == 403
    r = await _get(client, token, f"{base}/{uuid.uuid4()}")
    assert r.status_code == 404 and r.json()["error"] == "lead_not_found"


async def test_a_sealed_lead_says_why_its_conversion_was_not_queued(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    token = await make_token(site["public_id"], "operator")
    no_consent = await _lead(pool, site, minutes_ago=5, consent=("analytics",))
    no_click = await _lead(pool, site, minutes_ago=6, gclid=None)
    for lead in (no_consent, no_click):
        r = await client.post(
            f"/api/calls/{lead}/actions", json={"action": "seal", "value_minor": 1000}, headers=auth(token)
        )
        assert r.status_code == 200 and r.json()["conversion"]["enqueued"] is False
    cards = {c["id"]: c for c in (await _get(client, token, f"/api/sites/{site['public_id']}/leads")).json()["leads"]}
    assert cards[no_consent]["conversion"] == {"queued": False, "status": None, "reason": "no_marketing_consent"}
    assert cards[no_click]["conversion"]["reason"] == "no_click_id"
    assert cards[no_consent]["session"]["marketing_consent"] is False
    assert cards[no_consent]["allowed_actions"] == ["junk", "cancel", "restore", "undo"]


async def test_a_tracked_intent_explains_its_score(
    stack_client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site(origins=["https://shop.example.com"])
    token = await make_token(site["public_id"], "analyst")
    sid = str(uuid.uuid4())
    google = "https://www.google.com/"
    view = event(site, sid=sid, r=google, u="https://shop.example.com/?gclid=CJ-why-1", meta={"fp": "fp-why"})
    click = event(
        site,
        sid=sid,
        ec="conversion",
        ea="phone_call",
        el="tel:05321234567",
        r=google,
        u="https://shop.example.com/contact",
        meta={"fp": "fp-why", "scroll_pct": 60, "cta_hovers": 1},
    )
    for body in (view, click):
        assert (await post(stack_client, body)).status_code == 202
    [lead] = (await _get(stack_client, token, f"/api/sites/{site['public_id']}/leads")).json()["leads"]
    r = await _get(stack_client, token, f"/api/sites/{site['public_id']}/leads/{lead['id']}")
    assert r.status_code == 200, r.text
    detail = r.json()["lead"]
    parts = {p["reason"]: p["points"] for p in detail["score"]["parts"]}
    assert parts == {"conversion": 50, "scroll_50": 10, "cta_hover": 15, "google_referrer": 5}
    assert detail["lead_score"] == sum(parts.values()) == detail["score"]["score"]
    assert detail["score"]["set_by_operator"] is False
    assert [e["event_action"] for e in detail["timeline"]] == ["view", "phone_call"]
    assert detail["session"]["pages"] == 1 and detail["session"]["click_id_type"] == "gclid"
    assert detail["target"].startswith("tel:+9053") and "4567" not in detail["target"]
    assert "fp-why" not in r.text

    sessions = (await _get(stack_client, token, f"/api/sites/{site['public_id']}/sessions")).json()
    assert [s["id"] for s in sessions["sessions"]] == [detail["session"]["id"]]
    one = await _get(stack_client, token, f"/api/sites/{site['public_id']}/sessions/{detail['session']['id']}")
    assert one.status_code == 200 and len(one.json()["session"]["timeline"]) == 2
    # no fingerprint, and no click id value (pages are shown without their query)
    assert "fp-why" not in one.text and "CJ-why-1" not in one.text and "CJ-why-1" not in r.text
    assert one.json()["session"]["entry_page"] == "https://shop.example.com/"


async def test_sessions_are_paged_and_scoped(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site, other = await make_site(), await make_site()
    token = await make_token(site["public_id"], "analyst")
    made = [await make_session(pool, site["site_id"], created_at=NOW - dt.timedelta(hours=i)) for i in range(3)]
    # one from last month's partition: the pages cross monthly partitions
    old = await make_session(pool, site["site_id"], created_at=NOW - dt.timedelta(days=40))
    foreign = await make_session(pool, other["site_id"])
    base = f"/api/sites/{site['public_id']}/sessions"
    first = (await _get(client, token, base, limit=2)).json()
    second = (await _get(client, token, base, limit=2, cursor=first["next_cursor"])).json()
    assert [s["id"] for s in first["sessions"] + second["sessions"]] == [m["id"] for m in [*made, old]]
    assert second["next_cursor"] is not None
    assert (await _get(client, token, base, limit=2, cursor=second["next_cursor"])).json()["sessions"] == []
    assert (await _get(client, token, f"{base}/{foreign['id']}")).status_code == 404


@pytest.mark.timeout(240)  # may first wait out up to 100 s around midnight
async def test_traffic_counts_per_day_by_channel_with_lead_to_sale(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site = await make_site()
    site_id = uuid.UUID(site["site_id"])
    token = await make_token(site["public_id"], "operator")
    now = await _clear_of_midnight("UTC")
    sealed = await _lead(pool, site, seconds_ago=10, now=now)
    sold = await _lead(pool, site, seconds_ago=20, now=now)
    await _lead(pool, site, seconds_ago=30, now=now, channel=("SEO", "organic"))
    await make_session(pool, site["site_id"], created_at=now - dt.timedelta(days=3))  # a session, no intent
    r = await client.post(
        f"/api/calls/{sealed}/actions", json={"action": "seal", "value_minor": 500}, headers=auth(token)
    )
    assert r.status_code == 200
    conv = await client.post(
        "/api/conversations", json={"site": site["public_id"], "primary_call_id": sold}, headers=auth(token)
    )
    sale = await client.post(
        "/api/sales",
        json={
            "site": site["public_id"],
            "amount_minor": 9900,
            "occurred_at": now.isoformat(),
            "conversation_id": conv.json()["conversation"]["id"],
        },
        headers=auth(token),
    )
    assert (
        await client.post(f"/api/sales/{sale.json()['sale']['id']}/confirm", headers=auth(token))
    ).status_code == 200

    r = await _get(client, token, f"/api/sites/{site['public_id']}/traffic", days=7)
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["days"]) == 7 and data["days"][-1] == now.date().isoformat() and data["timezone"] == "UTC"
    today = [row for row in data["rows"] if row["day"] == data["days"][-1]]
    ads = next(row for row in today if (row["source"], row["medium"]) == ("Google Ads", "cpc"))
    seo = next(row for row in today if row["source"] == "SEO")
    assert (ads["sessions"], ads["intents"], ads["sealed"], ads["sold"], ads["sealed_value_minor"]) == (2, 2, 1, 2, 500)
    assert (seo["sessions"], seo["intents"], seo["sold"]) == (1, 1, 0)
    earlier = [row for row in data["rows"] if row["day"] == data["days"][-4]]
    assert sum(row["sessions"] for row in earlier) == 1 and sum(row["intents"] for row in earlier) == 0
    assert (await _get(client, token, f"/api/sites/{site['public_id']}/traffic", days=0)).status_code == 422

    # the aggregates run in guarded functions: called by hand for another site they give nothing
    outsider = await make_token((await make_site())["public_id"], "owner", email="outsider@example.com")
    assert outsider
    outsider_id = await pool.fetchval("SELECT id::text FROM users WHERE email = 'outsider@example.com'")
    days = ("UTC", now.date() - dt.timedelta(days=7), now.date())
    window = (now - dt.timedelta(days=7), now + dt.timedelta(days=1), "UTC")
    member = await pool.fetchval("SELECT user_id::text FROM site_members WHERE site_id = $1", site_id)
    for user, visible in ((outsider_id, False), (member, True)):
        async with api_transaction(pool, user) as conn:
            assert (
                bool(await conn.fetch("SELECT * FROM console_traffic_counts($1, $2, $3, $4)", site_id, *days))
                is visible
            )
            assert (
                bool(await conn.fetch("SELECT * FROM console_traffic_outcomes($1, $2, $3, $4)", site_id, *window))
                is visible
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the raw counters are not the API's
                await conn.fetch("SELECT * FROM console_traffic_live_sessions($1, $2, $3, 'UTC')", site_id, *window[:2])

    sales = (await _get(client, token, f"/api/sites/{site['public_id']}/sales")).json()["sales"]
    assert [(s["status"], s["lead_id"], s["conversion_status"]) for s in sales] == [("CONFIRMED", sold, "QUEUED")]


async def test_alerts_are_visible_to_their_sites_members_only(
    client: httpx.AsyncClient, pool: asyncpg.Pool, make_site: Any, make_token: Any
) -> None:
    site_a, site_b = await make_site(), await make_site()
    token_a = await make_token(site_a["public_id"], "analyst", email="a@example.com")
    admin = await make_token(None, None, platform_admin=True)
    for site_id, kind in (
        (site_a["site_id"], "blocked_rows"),
        (site_b["site_id"], "breaker_open"),
        (None, "dead_letters"),
    ):
        await pool.execute(
            "INSERT INTO watchtower_alerts (site_id, kind, summary, first_seen_at, last_seen_at)"
            " VALUES ($1, $2, 'x', now(), now())",
            site_id,
            kind,
        )
    r = await _get(client, token_a, f"/api/sites/{site_a['public_id']}/alerts")
    assert [a["kind"] for a in r.json()["alerts"]] == ["blocked_rows"]
    assert (await _get(client, token_a, f"/api/sites/{site_b['public_id']}/alerts")).status_code == 403
    # a hand-written query on the API connection sees the member's rows only (RLS)
    user_a = await pool.fetchval("SELECT id::text FROM users WHERE email = 'a@example.com'")
    async with api_transaction(pool, user_a) as conn:
        assert await conn.fetchval("SELECT array_agg(kind) FROM watchtower_alerts") == ["blocked_rows"]
    summary = (await _get(client, admin, "/api/ops/summary")).json()
    assert summary["alerts"]["by_kind"] == {"blocked_rows": 1, "breaker_open": 1, "dead_letters": 1}


@pytest.mark.timeout(240)  # may first wait out up to 100 s around midnight
async def test_closed_days_come_from_the_rollup_and_equal_the_live_count(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Any, make_site: Any, make_token: Any
) -> None:
    site = await make_site(timezone="Europe/Istanbul")
    token = await make_token(site["public_id"], "operator")
    now = await _clear_of_midnight("Europe/Istanbul")
    # leads on three closed days (one of them across UTC midnight in Istanbul) and today
    for minutes in (60 * 24 * 3 + 5, 60 * 24 * 3 + 30, 60 * 24 * 2, 60 * 26):
        await _lead(pool, site, minutes_ago=minutes, now=now)
    await _lead(pool, site, seconds_ago=30, now=now)
    await _lead(pool, site, minutes_ago=60 * 24 * 2 + 7, now=now, channel=("SEO", "organic"))
    old_lead = await _lead(pool, site, minutes_ago=60 * 24 * 3 + 10, now=now)
    path = f"/api/sites/{site['public_id']}/traffic"

    live = (await _get(client, token, path, days=7)).json()
    assert live["timezone"] == "Europe/Istanbul"
    first = await run_job("traffic_rollup", pool, settings, now=dt.datetime.now(dt.UTC))
    assert first["stored_days"] >= 7 and first["pending_days"] == 0
    assert (await run_job("traffic_rollup", pool, settings, now=dt.datetime.now(dt.UTC)))["stored_days"] == 0
    stored = await pool.fetchval(
        "SELECT sum(intents) FROM console_traffic_daily WHERE site_id = $1", uuid.UUID(site["site_id"])
    )
    assert stored == 6  # every lead but today's
    rolled = (await _get(client, token, path, days=7)).json()
    assert rolled == live

    # a late seal of an old lead shows at once: sealed and sold are never stored
    r = await client.post(
        f"/api/calls/{old_lead}/actions", json={"action": "seal", "value_minor": 700}, headers=auth(token)
    )
    assert r.status_code == 200
    after = (await _get(client, token, path, days=7)).json()
    assert sum(row["sealed"] for row in after["rows"]) == 1
    assert sum(row["sealed_value_minor"] for row in after["rows"]) == 700
    assert sum(row["intents"] for row in after["rows"]) == sum(row["intents"] for row in live["rows"]) == 7

    # a new time zone: the stored days are dropped and counted again in it
    await pool.execute("UPDATE sites SET timezone = 'UTC' WHERE id = $1", uuid.UUID(site["site_id"]))
    await run_job("traffic_rollup", pool, settings, now=dt.datetime.now(dt.UTC))
    zones = await pool.fetch(
        "SELECT DISTINCT zone FROM console_traffic_days WHERE site_id = $1", uuid.UUID(site["site_id"])
    )
    assert [z["zone"] for z in zones] == ["UTC"]
    utc = (await _get(client, token, path, days=7)).json()
    assert utc["timezone"] == "UTC" and sum(row["intents"] for row in utc["rows"]) == 7
