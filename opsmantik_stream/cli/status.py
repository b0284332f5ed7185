"""``opsmantik status``: database, Ray, actors, routing, queue depth, breakers, ingest rate."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import asyncpg

from opsmantik_stream.cli._common import add_json_flag, emit, run_with_db, settings_or_exit
from opsmantik_stream.config import Settings
from opsmantik_stream.privacy.retention import last_run
from opsmantik_stream.queries import Q
from opsmantik_stream.uploads.delivery import sites_delivery
from opsmantik_stream.watchtower import LAST_RUN_KEY

# beyond this many sites, status prints counts instead of one line per site
_SITE_LINES = 20


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show database, Ray, actors, routing, queue and breaker status",
        description="Connect to the database and to the running Ray cluster (OPSMANTIK_RAY_ADDRESS, "
        "else the local one started by `opsmantik serve`) and report partitions, uploaders, the "
        "routing version, queue depth by state, breaker states and the ingest rate of the last "
        "minute. Exits 1 when Ray or an actor is not healthy.",
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_status)


def local_ray_address(settings: Settings) -> str | None:
    """The address `opsmantik serve` wrote for its local Ray, when it is running."""
    path = settings.data_path / "ray.address"
    if not path.exists():
        return None
    return path.read_text().strip() or None


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
        from actors.registry import REGISTRY_NAME
        from actors.runtime import actor_status, get_actor

        actors = asyncio.run(actor_status(timeout_s=3.0, namespace=settings.ray_namespace))
        routing = None
        if actors.get(REGISTRY_NAME) == "ok":
            routing = ray.get(get_actor(REGISTRY_NAME, settings.ray_namespace).routing.remote(), timeout=5)
        return {
            "ray": "ok",
            "address": address,
            "nodes": len(ray.nodes()),  # type: ignore[no-untyped-call]
            "actors": actors,
            "routing": routing,
        }
    finally:
        ray.shutdown()


def cmd_status(args: argparse.Namespace) -> int:
    async def body(conn: asyncpg.Connection, settings: Settings) -> dict[str, Any]:
        return {
            "database": "ok",
            "migrations": int(await conn.fetchval("SELECT count(*) FROM schema_migrations")),
            "sites": int(await conn.fetchval("SELECT count(*) FROM sites")),
            "queue": {r["status"]: r["n"] for r in await conn.fetch(Q.ops.queue_by_status)},
            "breakers": {r["state"]: r["n"] for r in await conn.fetch(Q.ops.breakers_by_state)},
            "ingest_last_minute": int(await conn.fetchval(Q.ops.ingest_last_minute)),
            "dead_letters_pending": int(await conn.fetchval(Q.ops.dead_letters_pending)),
            "destinations": await sites_delivery(conn),
            "privacy_retention": await last_run(conn),
            "alerts": {
                "open": [
                    {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dict(r).items()}
                    for r in await conn.fetch(Q.watchtower.open_alerts_list, 20)
                ],
                "by_kind": {r["kind"]: r["n"] for r in await conn.fetch(Q.watchtower.open_alerts_by_kind)},
                "last_checked_at": ((await conn.fetchval(Q.runtime.get_state, LAST_RUN_KEY)) or {}).get("checked_at"),
            },
        }

    result: dict[str, Any] = run_with_db(body, migrate=False)
    result.update(_ray_status(settings_or_exit()))
    emit(args, result, _text(result))
    healthy = result["ray"] == "ok" and all(v == "ok" for v in result["actors"].values())
    return 0 if healthy else 1


def _text(r: dict[str, Any]) -> str:
    queue = ", ".join(f"{k} {v}" for k, v in sorted(r["queue"].items())) or "empty"
    breakers = ", ".join(f"{k} {v}" for k, v in sorted(r["breakers"].items())) or "none"
    lines = [
        f"database:  {r['database']} ({r['migrations']} migrations, {r['sites']} sites)",
        f"ingest:    {r['ingest_last_minute']} events in the last minute; "
        f"{r['dead_letters_pending']} dead letters pending",
        f"queue:     {queue}",
        f"breakers:  {breakers}",
        *_destination_lines(r["destinations"]),
        f"privacy:   {_retention_text(r.get('privacy_retention'))}",
        _alerts_line(r["alerts"]),
        f"ray:       {r['ray']}" + (f" ({r['nodes']} node(s) at {r['address']})" if r.get("nodes") else ""),
    ]
    routing = r.get("routing")
    if routing:
        lines.append(
            f"routing:   v{routing['version']}: {len(routing['actors'])} partition(s), "
            f"{len(routing['uploaders'])} uploader(s)"
        )
    for name, state in sorted(r["actors"].items()):
        lines.append(f"  {name:<24} {state}")
    return "\n".join(lines)


def _destination_lines(sites: list[dict[str, Any]]) -> list[str]:
    """Where each site's conversions go, and whether that destination has credentials."""
    if not sites:
        return []
    if len(sites) > _SITE_LINES:
        counts: dict[str, int] = {}
        for s in sites:
            counts[s["destination"]] = counts.get(s["destination"], 0) + 1
        missing = sum(1 for s in sites if not s["ready"])
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        return [f"delivery:  {summary} site(s); {missing} without credentials for their destination"]
    return ["delivery:"] + [
        f"  {s['public_id']}  -> {s['destination']}"
        + ("" if s["ready"] else " (no credentials: conversions wait BLOCKED)")
        for s in sites
    ]


def _retention_text(run: dict[str, Any] | None) -> str:
    if not run:
        return "retention has not run yet"
    changed = ", ".join(f"{k} {v}" for k, v in run["counts"].items() if v) or "nothing anonymised"
    return f"retention last run {run['finished_at']} ({run['days']} days): {changed}"


def _alerts_line(alerts: dict[str, Any]) -> str:
    total = sum(alerts["by_kind"].values())
    checked = alerts["last_checked_at"] or "never"
    if not total:
        return f"alerts:    none open (watchtower last ran {checked})"
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(alerts["by_kind"].items()))
    lines = [f"alerts:    {total} open ({kinds}); watchtower last ran {checked}"]
    lines += [f"  {a['kind']:<16} {a['summary']}" for a in alerts["open"]]
    return "\n".join(lines)
