"""The local data path: a gateway sends batches to a partition on its node over the
partition's Unix socket; a restarted partition is found again; with sockets off, Ray calls
carry the same batches."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg
import httpx
import pytest
import ray

from gateway.partitions import _Channel
from opsmantik_stream.config import Settings
from tests.ingest_support import ORIGIN, event, post

pytestmark = pytest.mark.integration


def _app(settings: Settings, pool: asyncpg.Pool, **overrides: Any) -> Any:
    from gateway.app import create_app
    from gateway.context import AppContext

    return create_app(AppContext(settings=settings.with_overrides(**overrides), pool=pool, ray_enabled=True))


async def test_batches_travel_over_the_socket_and_a_restarted_partition_is_found_again(
    settings: Settings, pool: asyncpg.Pool, stack: dict[str, Any], make_site: Any
) -> None:
    site = await make_site(origins=[ORIGIN])
    app = _app(settings, pool)
    ctx = app.state.ctx
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await post(client, event(site))).status_code == 202
        name = (await ctx.routing.table()).owner_of(site["site_id"])
        first = ctx.partitions._channels[name]
        assert isinstance(first, _Channel) and not first.closed
        old_socket = await ctx.routing.handle(name).data_address.remote()
        assert old_socket and await asyncio.to_thread(os.path.exists, old_socket)
        # the partition dies; Ray restarts it with a new socket
        ray.kill(ctx.routing.handle(name), no_restart=False)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if first.closed:
                break
        assert first.closed
        answers = []
        for _ in range(60):
            r = await post(client, event(site))
            answers.append(r.status_code)
            if r.status_code == 202:
                break
            assert r.status_code == 503 and r.headers["retry-after"]
            await asyncio.sleep(0.5)
        assert answers[-1] == 202, answers
        # found on Ray while the socket was not up yet: the socket is asked for again after
        # a short pause, meanwhile batches keep going over Ray
        extra = 0
        second = ctx.partitions._channels.get(name)
        for _ in range(40):
            if isinstance(second, _Channel):
                break
            assert (await post(client, event(site))).status_code == 202
            extra += 1
            await asyncio.sleep(0.25)
            second = ctx.partitions._channels.get(name)
        assert isinstance(second, _Channel) and second is not first and not second.closed
        # the new incarnation removed the killed one's socket when it opened its own
        assert not await asyncio.to_thread(os.path.exists, old_socket)
    await ctx.partitions.close()
    assert await pool.fetchval("SELECT count(*) FROM events") == answers.count(202) + 1 + extra


async def test_with_sockets_off_ray_calls_carry_the_batches(
    settings: Settings, pool: asyncpg.Pool, stack: dict[str, Any], make_site: Any
) -> None:
    site = await make_site(origins=[ORIGIN])
    app = _app(settings, pool, partition_local_socket=False)
    ctx = app.state.ctx
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        answers = await asyncio.gather(*(post(client, event(site)) for _ in range(5)))
        assert [a.status_code for a in answers] == [202] * 5
    assert not any(isinstance(c, _Channel) for c in ctx.partitions._channels.values())
    await ctx.partitions.close()
    assert await pool.fetchval("SELECT count(*) FROM events") == 5
