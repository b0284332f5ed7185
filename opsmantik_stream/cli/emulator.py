"""``opsmantik emulator``: the Google Ads / Data Manager emulator (see opsmantik_stream.emulator)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from opsmantik_stream.emulator import cli as emu

    p = sub.add_parser(
        "emulator",
        help="serve the Google Ads and Data Manager API emulator on 127.0.0.1",
        description="Serve an emulator of Google's OAuth token endpoint, the Google Ads API "
        "uploadClickConversions and the Data Manager API events:ingest, for tests and benchmarks.",
    )
    emu.add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from opsmantik_stream.emulator import cli as emu

    return int(emu.run(args) or 0)
