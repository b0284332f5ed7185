"""uvicorn's httptools protocol with one ``send()`` per response instead of two.

uvicorn writes a response's status line and headers, then its body, as two transport
writes; uvloop sends each at once, so a small JSON answer costs two system calls, and on
the loopback interface each one also runs the receiving side's TCP work. For the gateway's
hot route (``POST /api/sync``, a few hundred bytes each way) that was a quarter of the
server's CPU per request (measured with a bare uvicorn app under wrk: 42 -> 32 µs per
request). uvicorn has no setting for it, hence this small wrapper, written here:

``OneSendPerTurn`` wraps the connection's transport and keeps what is written during one
turn of the event loop, then writes it at once at the start of the next turn. Order is
kept (everything passes through the same buffer), ``close()`` writes what is pending first,
and flow control is the real transport's (``pause_writing`` still reaches the protocol).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["OneSendHttpToolsProtocol", "OneSendPerTurn"]


class OneSendPerTurn(asyncio.Transport):
    """A transport that joins the writes of one event-loop turn into one write."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(p) for p in self._pending or ())

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class OneSendHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.Config(http=OneSendHttpToolsProtocol)``: httptools with ``OneSendPerTurn``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneSendPerTurn(transport, self.loop))
