"""What a periodic job receives (``JobContext``), apart from the job table in
``opsmantik_stream.jobs``: the job modules (billing, privacy retention, auto-approve, upload
rescue) import this, and the table imports them, without an import circle.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from opsmantik_stream.config import Settings

__all__ = ["JobContext"]


@dataclass(frozen=True)
class JobContext:
    """A job's pool (the schema owner's), the settings, and the time it runs at."""

    pool: asyncpg.Pool
    settings: Settings
    now: dt.datetime
