"""``opsmantik status``: database, Ray and actors at a glance."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import asyncpg

from opsmantik_stream.cli._common import add_json_flag, emit, run_with_db
from opsmantik_stream.config import Settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show database, Ray and actor status",
        description="Connect to the database and to the running Ray cluster (OPSMANTIK_RAY_ADDRESS, "
        "else the local one started by `opsmantik serve`) and report what is alive.",
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_status)


def _ray_status(settings: Settings) -> dict[str, Any]:
    import ray

    from opsmantik_stream.ray_runtime import init_ray

    address = settings.ray_address or local_ray_address(settings)
    if address is None:
        return {"ray": "not running (no OPSMANTIK_RAY_ADDRESS and no local `opsmantik serve`)", "actors": {}}
    try:
        init_ray(settings, address=address)
    except Exception as exc:
        return {"ray": f"not running ({type(exc).__name__})", "actors": {}}
    try:
        from actors.runtime import actor_status

        actors = asyncio.run(actor_status(timeout_s=3.0, namespace=settings.ray_namespace))
        return {"ray": "ok", "actors": actors}
    finally:
        ray.shutdown()


def local_ray_address(settings: Settings) -> str | None:
    """The address `opsmantik serve` wrote for its local Ray, when it is running."""
    path = settings.data_path / "ray.address"
    if not path.exists():
        return None
    return path.read_text().strip() or None


def cmd_status(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        migrations = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        sites = await conn.fetchval("SELECT count(*) FROM sites")
        return {"database": "ok", "migrations": int(migrations), "sites": int(sites)}

    result: dict[str, Any] = run_with_db(body, migrate=False)
    settings = run_settings()
    result.update(_ray_status(settings))
    lines = [
        f"database: {result['database']} ({result['migrations']} migrations, {result['sites']} sites)",
        f"ray:      {result['ray']}",
    ]
    for name, state in sorted(result["actors"].items()):
        lines.append(f"  {name:<24} {state}")
    emit(args, result, "\n".join(lines))
    healthy = result["ray"] == "ok" and all(v == "ok" for v in result["actors"].values())
    return 0 if healthy else 1


def run_settings() -> Settings:
    from opsmantik_stream.cli._common import settings_or_exit

    return settings_or_exit()
