"""Structured JSON logs with the request id; a pure ASGI middleware stamps ``x-request-id``.

Log records carry ids, counts and codes only: never phone numbers, fingerprints, tokens or
secrets (the gateway logs no request bodies and no headers).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import sys
import time
from typing import Any

import msgspec

from gateway.metrics import HTTP_LATENCY

__all__ = ["JsonFormatter", "RequestIdMiddleware", "configure_logging", "request_id_var"]

_RID_PREFIX = os.urandom(10).hex()
_RID_COUNTER = itertools.count(1)

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
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
        for key, value in vars(record).items():
            if key not in _STD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log prints client addresses and paths with query strings; ours is enough.
    logging.getLogger("uvicorn.access").disabled = True


class RequestIdMiddleware:
    """Gives every request a fresh id (an incoming one is not trusted) and logs its outcome."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log = logging.getLogger("opsmantik.http")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # unique without a syscall per request: a random per-process prefix and a counter
        rid = f"{_RID_PREFIX}{next(_RID_COUNTER):012x}"
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            HTTP_LATENCY.labels(scope.get("method", ""), template, str(status)).observe(elapsed)
            if status >= 500 or self.log.isEnabledFor(logging.DEBUG):
                self.log.log(
                    logging.WARNING if status >= 500 else logging.DEBUG,
                    "request",
                    extra={
                        "method": scope.get("method"),
                        # the route template, never the path itself: ids in a path can be
                        # anything a client typed (a phone number, an address)
                        "path": template,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(token)
