"""``opsmantik jobs list|run NAME``: the periodic jobs the Maintenance actor runs."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

import asyncpg

from opsmantik_stream.cli._common import CliError, add_json_flag, emit, run_with_pool
from opsmantik_stream.config import Settings
from opsmantik_stream.jobs import JOBS, run_job


def register(sub: Any) -> None:
    jobs = sub.add_parser(
        "jobs",
        help="periodic jobs (rescue, auto-approve, partitions, ...)",
        description="List or run the periodic jobs once.",
    )
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND")
    jsub.required = True
    p = jsub.add_parser("list", help="list the jobs and their intervals", description="List the jobs.")
    add_json_flag(p)
    p.set_defaults(func=cmd_list)
    p = jsub.add_parser("run", help="run one job now", description="Run one job now and print its summary.")
    p.add_argument("name", help=f"one of: {', '.join(sorted(JOBS))}")
    add_json_flag(p)
    p.set_defaults(func=cmd_run)


def cmd_list(args: argparse.Namespace) -> int:
    jobs = [{"name": j.name, "interval_s": j.interval_s, "description": j.description} for j in JOBS.values()]
    text = "\n".join(f"{j['name']:<16} every {j['interval_s']:>7.0f} s  {j['description']}" for j in jobs)
    emit(args, {"jobs": jobs}, text)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.name not in JOBS:
        raise CliError(f"no job named {args.name!r} (one of: {', '.join(sorted(JOBS))})")

    async def body(pool: asyncpg.Pool, settings: Settings) -> dict[str, Any]:
        return await run_job(args.name, pool, settings, now=dt.datetime.now(dt.UTC))

    result = run_with_pool(body)
    emit(args, {"job": args.name, "result": result}, f"{args.name}: {result}")
    return 0
