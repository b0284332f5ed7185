"""``opsmantik scale --partitions N --uploaders M``: resize the pools of a running stack."""

from __future__ import annotations

import argparse
from typing import Any

from opsmantik_stream.budget import BudgetError
from opsmantik_stream.cli._common import CliError, add_json_flag, emit, settings_or_exit


def register(sub: Any) -> None:
    p = sub.add_parser(
        "scale",
        help="resize the partition and uploader pools of a running stack",
        description="Connect to the running Ray cluster (OPSMANTIK_RAY_ADDRESS, else the local one "
        "started by `opsmantik serve`) and resize its pools without losing or duplicating work: the "
        "Registry prepares a new routing-table version, the new actors start (spread over the "
        "nodes) and answer, the old uploaders drain, the table is committed (gateways switch "
        "within a second), batches in flight finish on their old partition, later ones are resent "
        "to the new owner, and the old generation stops. The upload budget is re-split over the "
        "new uploaders. Omitted sizes keep their current value. A size whose PostgreSQL pools "
        "cannot fit in the server's max_connections (with room for the old generation while it "
        "drains) is refused with exit code 2 before anything changes.",
    )
    p.add_argument("--partitions", type=int, help="number of site partitions (>= 1)")
    p.add_argument("--uploaders", type=int, help="number of uploader actors (>= 0)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each step (default 120)")
    add_json_flag(p)
    p.set_defaults(func=cmd_scale)


def cmd_scale(args: argparse.Namespace) -> int:
    if args.partitions is None and args.uploaders is None:
        raise CliError("give --partitions and/or --uploaders", exit_code=2)
    if args.partitions is not None and args.partitions < 1:
        raise CliError("--partitions must be at least 1", exit_code=2)
    if args.uploaders is not None and args.uploaders < 0:
        raise CliError("--uploaders must be 0 or more", exit_code=2)
    settings = settings_or_exit()

    import ray

    from opsmantik_stream.cli.status import local_ray_address
    from opsmantik_stream.ray_runtime import init_ray, shutdown_ray

    address = settings.ray_address or local_ray_address(settings)
    if address is None:
        raise CliError("no running stack (no OPSMANTIK_RAY_ADDRESS and no local `opsmantik serve`)")
    try:
        init_ray(settings, address=address)
    except Exception as exc:
        raise CliError(f"cannot connect to Ray at {address}: {type(exc).__name__}") from None
    try:
        from actors.registry import REGISTRY_NAME
        from actors.runtime import get_actor, scale_stack

        try:
            registry = get_actor(REGISTRY_NAME, settings.ray_namespace)
            current = ray.get(registry.routing.remote(), timeout=30)
        except Exception as exc:
            raise CliError(f"no Registry in namespace {settings.ray_namespace!r}: {type(exc).__name__}") from None
        partitions = args.partitions if args.partitions is not None else len(current["actors"])
        uploaders = args.uploaders if args.uploaders is not None else len(current["uploaders"])
        try:
            result = scale_stack(settings, None, partitions, uploaders, timeout_s=args.timeout)
        except BudgetError as exc:
            raise CliError(f"refused, routing v{current['version']} stays: {exc}", exit_code=2) from None
        except Exception as exc:
            raise CliError(f"resize failed, routing v{current['version']} stays: {type(exc).__name__}: {exc}") from None
    finally:
        shutdown_ray()
    emit(args, result, _text(result))
    return 0


def _text(r: dict[str, Any]) -> str:
    old, new = r["previous"], r["routing"]
    return "\n".join(
        [
            f"routing:    v{old['version']} -> v{new['version']}",
            f"partitions: {len(old['actors'])} -> {len(new['actors'])}",
            f"uploaders:  {len(old['uploaders'])} -> {len(new['uploaders'])}"
            + (" (started)" if r["uploaders_started"] else ""),
            f"took:       {r['total_s']:.1f} s (committed after {r['commit_s']:.1f} s)",
        ]
    )
