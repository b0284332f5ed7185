"""The connection budget at run time (issue 14): the actors' pools come from the plan, and a
resize that cannot fit is refused before anything changes."""

from __future__ import annotations

import asyncio
import csv
import io
import socket
import uuid
from typing import Any

import h11
import httpx
import pytest
import ray

from actors.registry import REGISTRY_NAME
from actors.runtime import get_actor, plan_stack, scale_stack
from opsmantik_stream.budget import BudgetError, pool_size

pytestmark = pytest.mark.integration


def test_actors_size_their_pools_from_the_plan_and_a_resize_that_cannot_fit_is_refused(
    stack: dict[str, Any], settings: Any, db_url: str
) -> None:
    ns = settings.ray_namespace
    plan = plan_stack(settings, db_url, len(stack["actors"]), len(stack["uploaders"]))
    for name in stack["actors"]:
        sizes = ray.get(
            get_actor(name, ns).__ray_call__.remote(
                lambda self: (self._settings.partition_db_connections, self._settings.db_pool_max)
            ),
            timeout=30,
        )
        assert sum(sizes) == plan.partition  # ingest pool + call-event pool
    for name in stack["uploaders"]:
        size = ray.get(
            get_actor(name, ns).__ray_call__.remote(lambda self: pool_size(self._settings, "uploader")), timeout=30
        )
        assert size == plan.uploader
    registry = get_actor(REGISTRY_NAME, ns)
    before = ray.get(registry.routing.remote(), timeout=30)
    small = settings.with_overrides(db_max_connections=40)
    with pytest.raises(BudgetError, match="6 partition"):
        scale_stack(small, db_url, 6, 6, timeout_s=30)
    assert ray.get(registry.routing.remote(), timeout=30) == before
    for name in stack["actors"]:
        assert ray.get(get_actor(name, ns).ping.remote(), timeout=30) == "ok"


def _slow_reader(base: str, path: str, token: str) -> tuple[socket.socket, h11.Connection, bytes]:
    """A client with a tiny receive buffer that reads the answer's head and first bytes, then
    stops: the server soon cannot send more and must wait for this client."""
    url = httpx.URL(base)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect((url.host, url.port))
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=path, headers=[("Host", url.host), ("Authorization", f"Bearer {token}")])
    sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
    conn.receive_data(sock.recv(4096))
    event = conn.next_event()
    assert isinstance(event, h11.Response) and event.status_code == 200, event
    return sock, conn, b""


def _read_rest(sock: socket.socket, conn: h11.Connection) -> bytes:
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)


@pytest.mark.timeout(300)
async def test_a_slow_dispute_export_holds_no_connection_or_transaction(
    settings: Any, db_url: str, pool: Any, make_site: Any, make_token: Any
) -> None:
    from gateway.app import create_app
    from tests.serving import serve_in_thread

    site = await make_site()
    token = await make_token(site["public_id"], "billing")
    rows = 30_000  # ~4 MB of CSV: far more than the slow client's window and the server's buffers
    await pool.execute(
        """INSERT INTO ingest_idempotency (site_id, idempotency_key, created_at, billing_reason)
           SELECT $1, md5(i::text) || md5((i + 1)::text), '2026-11-10T00:00:00Z'::timestamptz + i * interval '1 s',
                  'a reason with "quotes" and, commas'
           FROM generate_series(1, $2) AS i""",
        uuid.UUID(site["site_id"]),
        rows,
    )
    app = create_app(settings=settings, db_url=db_url)

    async def api_backends(state: str) -> int:
        return int(
            await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'opsmantik_api' "
                "AND datname = current_database() AND state = $1",
                state,
            )
        )

    path = f"/api/billing/dispute-export?site={site['public_id']}&month=2026-11"
    with serve_in_thread(app, lifespan="on") as base:
        sock, conn, _ = await asyncio.to_thread(_slow_reader, base, path, token)
        try:
            # the client reads nothing more for now: once the buffers are full the server waits
            # to send a page; it must wait outside any transaction (the old export stayed "idle
            # in transaction" on its cursor for the whole download)
            for _ in range(200):
                if await api_backends("idle in transaction") == 0 and await api_backends("active") == 0:
                    break
                await asyncio.sleep(0.05)
            assert await api_backends("idle in transaction") == 0
            assert await api_backends("active") == 0
            body = await asyncio.to_thread(_read_rest, sock, conn)
        finally:
            sock.close()
    lines = list(csv.reader(io.StringIO(body.decode())))
    assert lines[0] == ["idempotency_key", "created_at", "billable", "billing_reason"]
    keys = [line[0] for line in lines[1:]]
    assert len(keys) == rows and len(set(keys)) == rows and keys == sorted(keys)
    assert lines[1][3] == 'a reason with "quotes" and, commas'
