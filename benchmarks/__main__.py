"""`make bench`: the benchmark suite of SPEC.md §11.

Each scenario is reported beside a ceiling measured in the same run on the same machine:
the HTTP ceiling (a bare FastAPI endpoint served like the gateway) and the store ceiling
(batched idempotent inserts straight into PostgreSQL). Stacks are started the way a user
starts them (`opsmantik serve` in a temporary data folder, sites via the CLI), every server
binds 127.0.0.1 and every load is bounded in count and time.

Writes benchmarks/results/<date>.json (the list of results), <date>.md (the table),
<date>.meta.json (CPU by component, profiles, notes) and PNG charts.

    python -m benchmarks                      # everything (about 15 minutes on 2 cores)
    python -m benchmarks --quick              # short runs: a smoke check of the suite
    python -m benchmarks --only ingest_single,http_ceiling
    python -m benchmarks --only soak --minutes 30   # `make soak`: see docs/soak.md
    python -m benchmarks --only soak --rate 1500    # the soak at a fixed offered load
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _parser() -> argparse.ArgumentParser:
    from benchmarks.scenarios import SCENARIOS

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n" + "\n".join(f"  {k:<16} {v}" for k, v in SCENARIOS.items()),
    )
    ap.add_argument("--quick", action="store_true", help="3 s measurements: checks the suite works, not the figures")
    ap.add_argument("--only", metavar="SCENARIO[,SCENARIO]", help="run only these scenarios (see below)")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="results folder (default benchmarks/results)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profile runs")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install wrk when it is missing")
    ap.add_argument(
        "--minutes", type=float, default=30.0, help="length of the soak's load in minutes (default 30, at least 1)"
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="REQUESTS_PER_S",
        help="the soak's offered load (default: half of its measured peak); set it to compare soak runs",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from benchmarks.report import write_charts, write_json, write_markdown
    from benchmarks.scenarios import DEFAULT_SCENARIOS, SCENARIOS, Context, run_all
    from benchmarks.wrk import ensure_wrk

    if args.minutes < 1:
        print("--minutes must be at least 1", file=sys.stderr)
        return 2
    if args.rate is not None and not args.rate >= 1:
        print("--rate must be at least 1 request per second", file=sys.stderr)
        return 2
    only = set(DEFAULT_SCENARIOS) if not args.only else {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        print(f"unknown scenario(s): {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    wrk = None
    if not args.no_install:
        wrk = ensure_wrk()
    else:
        import shutil

        wrk = shutil.which("wrk")
    started = time.monotonic()
    now = datetime.now(UTC)
    stem = now.strftime("%Y-%m-%d") + ("-quick" if args.quick else "") + ("-soak" if only == {"soak"} else "")
    ctx = Context(quick=args.quick, wrk=wrk, out_dir=args.out, stem=stem, profile=not args.no_profile)
    ctx.options["minutes"] = args.minutes
    ctx.options["rate"] = args.rate
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"benchmarks: {', '.join(s for s in SCENARIOS if s in only)}"
        f"{' (quick)' if args.quick else ''}; load generator: "
        f"{'wrk ' + wrk if wrk else 'python (wrk missing)'}",
        flush=True,
    )
    run_all(ctx, only)
    wall = round(time.monotonic() - started, 1)
    command = (
        "make bench"
        if not argv and not args.quick and not args.only
        else "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    )
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        # which build of Python ran it (the ratios depend on it: docs/operations.md)
        "machine": (
            f"{platform.machine()} {os.cpu_count()} cores, "
            f"Python {platform.python_version()} ({os.path.realpath(sys.executable)})"
        ),
        "command": command,
        "quick": args.quick,
        "wall_time_s": wall,
        "generator": (
            "wrk (closed loop, 1 thread) for peaks; Python open-loop generator (1 process, "
            "uvloop, raw HTTP/1.1) for latency at fixed offered loads"
        )
        if wrk
        else "Python open-loop generator only (wrk missing)",
        "ceilings": ctx.ceilings,
        "cpu_percent_by_component": ctx.cpu,
        "peak_rss_mb_by_scenario": ctx.peak_rss_mb,
        "profiles": ctx.profiles,
        "notes": ctx.notes,
    }
    extra = ""
    charts = []
    if ctx.soak is not None:
        from benchmarks.soak_report import render_soak_markdown, write_soak_chart

        meta["soak"] = ctx.soak
        png = write_soak_chart(args.out / f"{stem}-memory-p99.png", ctx.soak)
        charts += [png] if png else []
        extra = render_soak_markdown(ctx.soak, png.name if png else None)
    write_json(args.out / f"{stem}.json", ctx.results, meta)
    write_markdown(args.out / f"{stem}.md", ctx.results, meta, extra=extra)
    charts += write_charts(args.out, stem, ctx.sweeps, ctx.bars, ctx.results)
    print(
        f"\nwrote {args.out / (stem + '.json')}, {stem}.md, {stem}.meta.json" + "".join(f", {c.name}" for c in charts)
    )
    for note in ctx.notes:
        print(f"note: {note}")
    print((args.out / f"{stem}.md").read_text())
    print(f"wall time {wall} s")
    failed = [n for n in ctx.notes if " failed: " in n]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
