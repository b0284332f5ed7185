"""The gateway's HTTP protocol (uvicorn httptools, one write per response) on real sockets:
keep-alive, pipelining, ``Connection: close`` and a streamed body larger than the socket
buffers all answer exactly as before, and a response's head and body leave in one write."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from gateway.http_protocol import OneSendHttpToolsProtocol

pytestmark = pytest.mark.integration

BIG = 4 * 1024 * 1024


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(BIG).encode())]})
        chunk = b"x" * (BIG // 16)
        for k in range(16):
            await send({"type": "http.response.body", "body": chunk, "more_body": k < 15})
        return
    body = scope["path"].encode()
    await send(
        {"type": "http.response.start", "status": 202, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


class _Counting(OneSendHttpToolsProtocol):
    """Counts the writes that reach the real transport (below the one-write wrapper)."""

    writes: list[int] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        real_write = transport.write

        def write(data: Any) -> None:
            _Counting.writes.append(len(data))
            real_write(data)

        transport.write = write  # type: ignore[method-assign]
        super().connection_made(transport)


@pytest.fixture
async def server() -> AsyncIterator[int]:
    config = uvicorn.Config(_app, host="127.0.0.1", port=0, http=_Counting, log_config=None, lifespan="off")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    _Counting.writes.clear()
    try:
        yield port
    finally:
        srv.should_exit = True
        await task


def _get(path: str, *, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length"))
    return head, await reader.readexactly(length)


async def test_keep_alive_and_pipelined_requests_get_their_own_answers_in_order(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(_get("/one"))
    head, body = await _response(reader)
    assert head.startswith(b"HTTP/1.1 202") and body == b"/one"
    writer.write(_get("/two") + _get("/three"))  # pipelined in one packet
    assert [(await _response(reader))[1] for _ in range(2)] == [b"/two", b"/three"]
    writer.write(_get("/last", close=True))
    head, body = await _response(reader)
    assert body == b"/last" and b"connection: close" in head.lower()
    assert await reader.read() == b""  # the server closed after writing everything
    writer.close()
    # head and body of each small response went out as one write
    assert len(_Counting.writes) == 4


async def test_a_body_larger_than_the_socket_buffers_arrives_whole(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(_get("/big"))
    await asyncio.sleep(0.2)  # let the server fill the socket buffers (flow control pauses it)
    head, body = await _response(reader)
    assert head.startswith(b"HTTP/1.1 200") and body == b"x" * BIG
    writer.close()
