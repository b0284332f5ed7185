"""The ``opsmantik`` command line. Each command group lives in its own module with a
``register(subparsers)`` function; ``COMMAND_MODULES`` lists them in help order."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from opsmantik_stream.cli import (
    _common,
    console,
    database,
    emulator,
    ingest_key,  # noqa: F401  (registers `site ingest-key rotate` via SITE_EXTENSIONS)
    jobs,
    privacy,
    sales,
    scale,
    serve,
    site,
    status,
    token,
    uploads,  # registers `site credentials set` via SITE_EXTENSIONS
)

__all__ = ["main"]

COMMAND_MODULES = [serve, database, site, token, console, status, scale, jobs, uploads, sales, privacy, emulator]


def build_parser() -> argparse.ArgumentParser:
    parser = _common.Parser(
        prog="opsmantik",
        description="OpsMantik Stream: tracker ingest, leads and sales, offline conversion uploads.",
        epilog="Configuration comes from OPSMANTIK_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_common.Parser)
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from opsmantik_stream.ray_runtime import prepare_ray_environment

    prepare_ray_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _common.CliError as exc:
        print(f"opsmantik: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
