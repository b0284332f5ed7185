"""Serve an ASGI app on a real uvicorn at 127.0.0.1 (ephemeral port) in a background thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

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


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for servers started in another process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
