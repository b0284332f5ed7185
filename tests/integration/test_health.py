"""/health answers 200 with a live database and actors, 503 when something is down."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration


async def test_health_ok_with_stack(stack_client: httpx.AsyncClient, stack: dict[str, Any]) -> None:
    r = await stack_client.get("/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["checks"]["database"] == "ok"
    assert set(body["checks"]["actors"]) == {"registry", "maintenance", *stack["actors"], *stack["uploaders"]}
    assert r.headers["x-request-id"]


async def test_health_503_when_actors_missing(ray_session: None, settings: Any, pool: Any) -> None:
    from gateway.app import create_app
    from gateway.context import AppContext

    # Ray is expected (ray_enabled) but no actors exist in this namespace.
    app = create_app(AppContext(settings=settings, pool=pool, ray_enabled=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/health")
    assert r.status_code == 503
    assert r.json()["checks"]["actors"]["registry"].startswith("unavailable")


async def test_health_503_when_database_down(settings: Any, pool: Any) -> None:
    from gateway.app import create_app
    from gateway.context import AppContext

    await pool.close()
    app = create_app(AppContext(settings=settings, pool=pool, ray_enabled=False))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/health")
    assert r.status_code == 503
    assert r.json()["checks"]["database"].startswith("unavailable")


async def test_openapi_lists_the_contract_routes(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for route in (
        "/api/sync",
        "/api/call-event",
        "/api/sites/{site}/intents",
        "/api/calls/{call_id}/actions",
        "/api/conversations",
        "/api/sales/{sale_id}/confirm",
        "/api/sites/{site}/credentials",
        "/api/oci/queue",
        "/api/oci/requeue",
        "/api/oci/breaker/reset",
        "/api/jobs/{name}",
        "/health",
        "/metrics",
        "/ops",
    ):
        assert route in paths, route
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text


def test_maintenance_resumes_its_job_loop_after_a_crash(stack: dict[str, Any], settings: Any) -> None:
    import ray

    from actors.maintenance import MAINTENANCE_NAME
    from actors.runtime import get_actor

    maintenance = get_actor(MAINTENANCE_NAME, settings.ray_namespace)
    assert ray.get(maintenance.status.remote(), timeout=30)["running"] is True
    ray.kill(maintenance, no_restart=False)  # a crash: Ray restarts it with the same arguments
    deadline = time.monotonic() + 60
    while True:
        try:
            status = ray.get(get_actor(MAINTENANCE_NAME, settings.ray_namespace).status.remote(), timeout=10)
            break
        except ray.exceptions.RayActorError:
            assert time.monotonic() < deadline, "maintenance did not come back"
    assert status["running"] is True
    # and the restarted loop ran its jobs again (partitions is due at once)
    for _ in range(100):
        status = ray.get(get_actor(MAINTENANCE_NAME, settings.ray_namespace).status.remote(), timeout=10)
        if "partitions" in status["last_result"]:
            break
        time.sleep(0.1)
    assert "partitions" in status["last_result"]
