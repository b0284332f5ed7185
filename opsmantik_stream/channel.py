"""The local data path between a gateway and a partition on the same machine.

Ray places, restarts and finds the partitions; every ingest batch could also travel as a
Ray actor call, but on a small machine the call's own machinery (task submission,
serialisation, the core worker's threads on both sides) costs more CPU than the batch's
Python work. So when a gateway and a partition share a node, batches travel over a Unix
socket the partition opens (readable by its user only), and Ray remains the control path:
the gateway asks the actor for the socket's path, and falls back to Ray calls whenever the
socket is not there (another node, a restart in progress).

Why hand-written: the protocol is one request/one reply with an id, on asyncio streams,
between two processes of this project; an RPC framework (gRPC, ...) would add a dependency,
a schema compiler and more CPU per call than the calls it replaces.

A frame is a 4-byte big-endian length and a msgpack array. Requests:
``[id, method, timeout_s, payload]``; replies: ``[id, status, body]`` with ``status`` one of
``OK`` (body: the method's bytes), ``RETIRED`` (a resize took the partition's sites: nothing
written, resend to the new owner), ``EXPIRED`` (the call waited past its timeout: nothing
written) or ``FAILED`` (body: the exception's class name).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgspec

__all__ = ["EXPIRED", "FAILED", "MAX_FRAME", "OK", "RETIRED", "read_frame", "write_frame"]

OK = 0
RETIRED = 1
EXPIRED = 2
FAILED = 3

# a batch is at most ~250 KB (see OPSMANTIK_BATCH_MAX_BYTES); anything far larger is a bug
MAX_FRAME = 16 * 1024 * 1024

_HEADER = struct.Struct(">I")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[Any]).decode


def write_frame(writer: asyncio.StreamWriter, items: list[Any]) -> None:
    """Queue one frame on ``writer`` (one write call: frames of concurrent senders never
    interleave)."""
    body = _encode(items)
    writer.write(_HEADER.pack(len(body)) + body)


async def read_frame(reader: asyncio.StreamReader) -> list[Any]:
    """The next frame; ``asyncio.IncompleteReadError`` when the peer closed the socket."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    return _decode(await reader.readexactly(size))
