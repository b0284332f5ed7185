"""Request ids and the request log; a pure ASGI middleware stamps ``x-request-id``.

The JSON log format and its set-up are shared with every Ray worker and live in
``opsmantik_stream/logs.py`` (re-exported here for the gateway's callers). The gateway logs
no request bodies and no headers.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

from gateway.metrics import HTTP_LATENCY
from opsmantik_stream.logs import JsonFormatter, configure_logging, request_id_var

__all__ = ["JsonFormatter", "RequestIdMiddleware", "configure_logging", "new_request_id", "request_id_var"]

_RID_PREFIX = os.urandom(10).hex()
_RID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A fresh request id, unique without a syscall: a random per-process prefix and a counter."""
    return f"{_RID_PREFIX}{next(_RID_COUNTER):012x}"


class RequestIdMiddleware:
    """Gives every request a fresh id (an incoming one is not trusted) and logs its outcome."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log = logging.getLogger("opsmantik.http")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
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
