"""Google emulator: OAuth token endpoint, Google Ads API and Data Manager API on 127.0.0.1."""

from __future__ import annotations

from .app import create_app
from .cli import add_arguments, run
from .state import ROW_ERROR_PREFIXES, AccountRate, EmulatorConfig, EmulatorState, EmuReply

__all__ = [
    "ROW_ERROR_PREFIXES",
    "AccountRate",
    "EmuReply",
    "EmulatorConfig",
    "EmulatorState",
    "add_arguments",
    "create_app",
    "run",
]
