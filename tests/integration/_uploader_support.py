"""Helpers for the uploader tests: a real emulator on 127.0.0.1 (settings point the deployment's
Google endpoints at it), queue rows inserted with SQL (enqueue fills the queue in production),
credentials, ledger checks."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from opsmantik_stream.config import Settings
from opsmantik_stream.emulator import EmulatorConfig, create_app
from opsmantik_stream.uploads.credentials import SiteCredentials, credentials_from_mapping, save_credentials
from opsmantik_stream.vault import Vault
from tests.serving import serve_in_thread

ACTION = "customers/1234567890/conversionActions/987654"


@contextlib.contextmanager
def serve_emulator(config: EmulatorConfig | None = None) -> Iterator[str]:
    """The emulator on a real uvicorn. It keeps idle connections far longer than httpx's
    clients do (5 s): with equal timeouts a client may reuse a connection at the instant the
    server closes it ("Server disconnected without sending a response"), which a slow,
    loaded machine makes likely."""
    with serve_in_thread(create_app(config or EmulatorConfig()), timeout_keep_alive=75) as base:
        yield base


class Emu:
    """Control client of a running emulator."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.AsyncClient(base_url=base, timeout=10)

    async def reset(self, **config: Any) -> None:
        defaults = EmulatorConfig()
        patch: dict[str, Any] = {
            "latency_ms": 0.0,
            "failure_rate": 0.0,
            "outage": False,
            "rate_rps": None,
            "rate_cpm": None,
            "account_rates": {},
            "throttled_accounts": {},
            "max_conversions": defaults.max_conversions,
            "daily_ops_limit": None,
            "not_allowlisted": [],
            "seed": defaults.seed,
        }
        patch.update(config)
        (await self.http.post("/_emulator/config", json=patch)).raise_for_status()
        (await self.http.post("/_emulator/reset", json={"tokens": False})).raise_for_status()

    async def config(self, **patch: Any) -> None:
        (await self.http.post("/_emulator/config", json=patch)).raise_for_status()

    async def state(self) -> dict[str, Any]:
        r = await self.http.get("/_emulator/state", params={"conversions": "false"})
        r.raise_for_status()
        return dict(r.json())

    async def aclose(self) -> None:
        await self.http.aclose()


def emulator_settings(settings: Settings, emu_base: str) -> Settings:
    """The deployment's Google endpoints pointed at the emulator (never a tenant's choice)."""
    return settings.with_overrides(
        google_ads_base_url=emu_base,
        data_manager_base_url=emu_base,
        google_token_url=f"{emu_base}/token",
    )


def fast_settings(settings: Settings, emu_base: str | None = None, **kw: Any) -> Settings:
    """Test knobs: no retry delays, 1 s breaker, short polls (defaults stay for production);
    with ``emu_base``, Google's endpoints are the emulator's."""
    if emu_base is not None:
        settings = emulator_settings(settings, emu_base)
    base = dict(
        upload_retry_base_delay_s=0.0,
        upload_retry_jitter_s=0.0,
        upload_breaker_open_s=1.0,
        upload_breaker_jitter_s=0.0,
        upload_breaker_probe_rows=2,
        upload_idle_poll_s=0.05,
        upload_stale_after_s=1,
        upload_request_timeout_s=10.0,
        upload_lease_ttl_s=30.0,
        upload_chunk_size=5,
    )
    base.update(kw)
    return settings.with_overrides(**base)


def site_credentials(destination: str = "google_ads", customer_id: str = "1234567890", **kw: Any) -> SiteCredentials:
    """Validated credentials for the emulator's account (budget fields may be given in ``kw``)."""
    return credentials_from_mapping(
        {
            "destination": destination,
            "customer_id": customer_id,
            "client_id": "client",
            "client_secret": "secret-value",
            "refresh_token": "refresh-value",
            "conversion_action": ACTION,
            **kw,
        }
    )


async def credentials_through_delivery(
    pool: asyncpg.Pool, settings: Settings, site: dict[str, Any], destination: str
) -> dict[str, Any]:
    """Credentials for the emulator's account saved the way the CLI and the API save them
    (``delivery.set_credentials``: vault, audit record), with a budget no test runs into."""
    from opsmantik_stream.enums import ActorType
    from opsmantik_stream.uploads import delivery

    assert settings.vault_key is not None
    async with pool.acquire() as conn:
        return await delivery.set_credentials(
            conn,
            Vault(settings.vault_key),
            site["site_id"],
            site["public_id"],
            site_credentials(destination, requests_per_s=1000.0, conversions_per_min=1e6),
            actor_type=ActorType.CLI,
            actor_id="test",
        )


async def set_creds(
    pool: asyncpg.Pool,
    settings: Settings,
    site_id: Any,
    *,
    destination: str = "google_ads",
    customer_id: str = "1234567890",
    requests_per_s: float | None = 1000.0,
    conversions_per_min: float | None = 1_000_000.0,
) -> None:
    """Store credentials directly (no destination change, no audit: a test's set-up)."""
    assert settings.vault_key is not None
    creds = site_credentials(
        destination, customer_id, requests_per_s=requests_per_s, conversions_per_min=conversions_per_min
    )
    async with pool.acquire() as conn:
        await save_credentials(conn, Vault(settings.vault_key), site_id, creds)


async def add_rows(
    pool: asyncpg.Pool, site_id: Any, gclids: list[str], *, destination: str = "google_ads"
) -> list[dict[str, Any]]:
    """Insert QUEUED rows directly (one per gclid); returns id and order_id of each."""
    when = datetime.now(UTC) - timedelta(days=1)
    out = []
    async with pool.acquire() as conn:
        for g in gclids:
            order = f"ord-{uuid.uuid4().hex[:20]}"
            rid = await conn.fetchval(
                """INSERT INTO offline_conversion_queue (site_id, destination, source_kind, source_id,
                       order_id, gclid, conversion_time, value_minor, currency)
                   VALUES ($1, $2, 'sale', gen_random_uuid(), $3, $4, $5, 12345, 'EUR') RETURNING id""",
                site_id,
                destination,
                order,
                g,
                when,
            )
            out.append({"id": rid, "order_id": order, "gclid": g})
    return out


async def rows_of(pool: asyncpg.Pool, ids: list[Any]) -> dict[Any, asyncpg.Record]:
    recs = await pool.fetch("SELECT * FROM offline_conversion_queue WHERE id = ANY($1::uuid[])", ids)
    return {r["id"]: r for r in recs}


async def assert_ledger_complete(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every attempt has exactly one STARTED and one FINISHED row."""
    recs = await pool.fetch(
        "SELECT batch_id, array_agg(phase ORDER BY phase) AS phases FROM provider_upload_attempts GROUP BY batch_id"
    )
    for r in recs:
        assert list(r["phases"]) == ["FINISHED", "STARTED"], (r["batch_id"], r["phases"])
    return list(recs)


async def health(pool: asyncpg.Pool, site_id: Any, destination: str = "google_ads") -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT * FROM provider_health_state WHERE site_id = $1 AND destination = $2", site_id, destination
    )
    assert row is not None, "no breaker state for this site and destination"
    return row
