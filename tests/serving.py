"""Serve an ASGI app on a real uvicorn at 127.0.0.1 (ephemeral port) in a background thread;
wait for a server started in another process."""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn


@contextlib.contextmanager
def serve_in_thread(
    app: Any, *, lifespan: Literal["auto", "on", "off"] = "off", start_timeout_s: float = 30, **config: Any
) -> Iterator[str]:
    """Yields the base URL once the server accepts connections; stops it on exit."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_config=None,
            access_log=False,
            lifespan=lifespan,
            proxy_headers=False,
            **config,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for servers started in another process).

    It is taken below the kernel's ephemeral range and above Ray's worker ports (10002-19999):
    ``opsmantik serve`` starts Ray before it binds, and a port from the ephemeral range can be
    handed to one of Ray's own sockets in between."""
    low, high = 20000, min(_ephemeral_low(), 65536)
    for port in random.sample(range(low, high), min(200, max(high - low, 0))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # no room below the ephemeral range: any free port
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> dict[str, Any]:
    """Poll ``/health`` of a server started in another process until it answers 200; fail
    with the tail of its log when it exits or does not get there in time."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited early:\n{log.read_text()[-3000:]}")
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=3)
            if answer.status_code == 200:
                return dict(answer.json())
            last = answer.text
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise AssertionError(f"not healthy in time (last answer: {last}):\n{log.read_text()[-3000:]}")


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 30) -> Any:
    """Poll ``check`` (e.g. a PostgreSQL query) until it returns something truthy; a server or a
    browser works on its own, so tests wait for its effect instead of sleeping."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
