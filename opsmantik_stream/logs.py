"""One logging set-up for every process of the stack: JSON lines on stderr.

The gateway (``opsmantik serve``) calls :func:`configure_logging`; every Ray worker process
(partitions, uploaders, the Registry, Maintenance) runs :func:`setup_ray_worker` when it
starts, because :func:`ray_runtime_env` names it as Ray's ``worker_process_setup_hook`` where
Ray is initialised (``opsmantik_stream/ray_runtime.py``). So an actor's line looks like a
gateway's line, with the same fields, plus the actor's name:

    {"ts": "2026-12-01T10:00:00.123Z", "level": "ERROR", "logger": "actors.maintenance",
     "msg": "job rescue failed", "actor": "maintenance", "exc": "Traceback ..."}

Fields: ``ts`` (UTC, milliseconds), ``level``, ``logger``, ``msg``, ``request_id`` (gateway,
inside a request), ``actor`` (inside a Ray actor), the record's ``extra`` fields, ``exc``.
Log records carry ids, counts and codes only: never phone numbers, emails, fingerprints,
tokens or secrets (no request bodies, no headers).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
from typing import Any

import msgspec

__all__ = [
    "LEVEL_ENV",
    "JsonFormatter",
    "configure_logging",
    "ray_runtime_env",
    "request_id_var",
    "setup_ray_worker",
]

# The variable a Ray worker reads its level from (set for it through the runtime env).
LEVEL_ENV = "OPSMANTIK_LOG_LEVEL"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
# extras that only repeat a field with terminal colours (uvicorn)
_DROP = {"color_message"}
# libraries that narrate every step at INFO (pgserver prints each pg_ctl command line)
_CHATTY = ("pgserver",)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def __init__(self) -> None:
        super().__init__()
        self._actor: str | None = None
        self._in_ray_worker = False

    def watch_ray_actor(self) -> None:
        """Add the Ray actor's name to every line once this worker process hosts an actor."""
        self._in_ray_worker = True

    def _actor_name(self) -> str | None:
        if self._actor is None and self._in_ray_worker:
            try:
                import ray

                # None until the worker hosts an actor; a worker hosts at most one, so keep it
                self._actor = ray.get_runtime_context().get_actor_name() or None
            except Exception:  # pragma: no cover - Ray not initialised in this worker yet
                return None
        return self._actor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        actor = self._actor_name()
        if actor:
            entry["actor"] = actor
        for key, value in vars(record).items():
            if key not in _STD and key not in _DROP and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry, enc_hook=str).decode()


def configure_logging(level: str = "INFO") -> JsonFormatter:
    """Send every log record of this process to stderr as JSON lines, at ``level``."""
    formatter = JsonFormatter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    for name in _CHATTY:
        logging.getLogger(name).setLevel(quiet)
    # uvicorn's access log prints client addresses and paths with query strings; ours is enough.
    logging.getLogger("uvicorn.access").disabled = True
    return formatter


def setup_ray_worker() -> None:
    """Ray's ``worker_process_setup_hook``: JSON logs in a worker process (actors included)."""
    configure_logging(os.environ.get(LEVEL_ENV) or "INFO").watch_ray_actor()


def ray_runtime_env(level: str) -> dict[str, Any]:
    """The job-wide Ray runtime env: every worker sets up logging like the gateway."""
    return {
        "worker_process_setup_hook": f"{__name__}.{setup_ray_worker.__name__}",
        "env_vars": {LEVEL_ENV: level.upper()},
    }
