"""SitePartition: the single writer for the sites hashed to it (see docs/architecture.md).

A thin shell around ``IngestStore`` (ingest batches, dead-letter replay) and the call-event
processor. It owns its database connections: ingest batches run on connections that are
never reset (a batch is one statement, it leaves no session state behind), so a batch costs
exactly one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from typing import TYPE_CHECKING, Any

import ray

from opsmantik_stream.config import Settings

if TYPE_CHECKING:
    import asyncpg

    from opsmantik_stream.ingest.store import IngestStore

__all__ = ["SitePartition", "remove_stale_sockets", "socket_folder"]


def socket_folder() -> str:
    """Where partitions on this machine open their Unix sockets (one per actor incarnation)."""
    return os.path.join(tempfile.gettempdir(), "opsmantik-sockets")


def remove_stale_sockets(folder: str) -> int:
    """Remove the sockets of partition processes that are gone; return how many.

    A partition is stopped with ``ray.kill`` or dies with its node, so it never removes its own
    socket; without this a file per incarnation piles up for as long as the machine runs. A
    socket's name starts with the pid of the process that opened it, and a file whose process
    no longer exists has no server behind it. (A pid reused by another process keeps its file
    until that process is gone too.)
    """
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        pid_text, _, rest = name.partition("-")
        if not pid_text.isdigit() or not rest.endswith(".sock"):
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # alive (or not ours to signal): keep
        except ProcessLookupError:
            pass
        except OSError:
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
            removed += 1
    return removed


async def _keep(conn: asyncpg.Connection) -> None:
    """No reset on release: an ingest batch is one statement and leaves nothing behind."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class SitePartition:
    def __init__(self, db_url: str, settings: Settings, name: str) -> None:
        self._db_url = db_url
        self._settings = settings
        self._name = name
        # resize support (see retire): calls running now, and whether a newer routing
        # table took this partition's sites away
        self._retired = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._init_lock = asyncio.Lock()
        self._store: IngestStore | None = None
        self._pool: asyncpg.Pool | None = None
        # the local data path (opsmantik_stream/channel.py): a Unix socket, opened on request
        self._socket_path: str | None = None
        self._server: asyncio.AbstractServer | None = None

    async def ping(self) -> str:
        return "ok"

    async def metrics(self) -> dict[str, object]:
        """Figures for the gateway's /metrics: the store's counters (``ingest_stats``) and the
        ``lru_cache`` statistics of this process. Read at scrape time: nothing per event."""
        from opsmantik_stream.telemetry import lru_cache_figures

        return {"ingest": await self.ingest_stats(), "caches": lru_cache_figures()}

    async def node(self) -> str:
        """The Ray node this actor runs on (placement checks, ``opsmantik status``)."""
        return str(ray.get_runtime_context().get_node_id())

    async def retire(self) -> dict[str, int]:
        """A resize moved this partition's sites to a new generation: from now on every call
        raises ``PartitionRetired`` (nothing written; the gateway resends to the new owner),
        and this returns once the calls already running have committed (drained)."""
        self._retired = True
        await self._idle.wait()
        return {"inflight": self._inflight}

    def _enter(self) -> None:
        if self._retired:
            from opsmantik_stream.routing import PartitionRetired

            raise PartitionRetired(self._name)
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def ingest(self, payload: bytes, timeout_s: float | None = None) -> bytes:
        """A micro-batch of tracker events (msgpack ``list[WireEvent]``) -> msgpack
        ``list[WireResult]``, answered only after the batch's transaction committed.

        ``timeout_s`` is the gateway's: a call that could not start writing within it is
        dropped unwritten (``CallExpired``) instead of queueing behind newer batches."""
        from opsmantik_stream.ingest.schema import decode_wire, encode_results

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._enter()
        try:
            store = self._store or await self._make_store()
            return encode_results(await store.ingest(decode_wire(payload), deadline=deadline))
        finally:
            self._leave()

    async def data_address(self) -> str | None:
        """The Unix socket a gateway on this node sends batches to (opened on first request;
        ``None`` when sockets are switched off). A new actor incarnation has a new path."""
        if not self._settings.partition_local_socket:
            return None
        async with self._init_lock:
            if self._server is None:
                folder = socket_folder()
                os.makedirs(folder, mode=0o700, exist_ok=True)
                remove_stale_sockets(folder)
                path = os.path.join(folder, f"{os.getpid()}-{uuid.uuid4().hex[:12]}.sock")
                self._server = await asyncio.start_unix_server(self._serve_connection, path=path)
                os.chmod(path, 0o600)  # the gateway runs as the same user; nobody else
                self._socket_path = path
        return self._socket_path

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from opsmantik_stream.channel import read_frame

        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                frame = await read_frame(reader)
                # each request on its own task: a connection carries several calls at once
                task = asyncio.create_task(self._serve_frame(frame, writer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # the gateway went away (or spoke nonsense): its calls are answered as far as possible
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_frame(self, frame: list[Any], writer: asyncio.StreamWriter) -> None:
        from opsmantik_stream.channel import EXPIRED, FAILED, OK, RETIRED, write_frame
        from opsmantik_stream.ingest.store import CallExpired
        from opsmantik_stream.routing import PartitionRetired

        call_id, method, timeout_s, payload = frame
        try:
            if method != "ingest":
                raise ValueError(f"unknown method {method!r}")
            reply: list[Any] = [call_id, OK, await self.ingest(payload, timeout_s)]
        except PartitionRetired:
            reply = [call_id, RETIRED, b""]
        except CallExpired:
            reply = [call_id, EXPIRED, b""]
        except Exception as exc:
            reply = [call_id, FAILED, type(exc).__name__.encode()]
        with contextlib.suppress(ConnectionError, RuntimeError):
            write_frame(writer, reply)

    async def replay_dead_letter(self, dead_letter_id: int, site_id: str) -> dict[str, object]:
        """Replay one ingest dead letter of a site this partition owns."""
        self._enter()
        try:
            store = self._store or await self._make_store()
            return await store.replay_dead_letter(dead_letter_id, site_id)
        finally:
            self._leave()

    async def memory(self) -> dict[str, Any]:
        """This process's memos (entries, bound), the store's session hints among them, and
        resident bytes (``/metrics``, the soak): the partition keeps nothing else between
        batches."""
        from opsmantik_stream.bounds import lru_report, resident_bytes

        memos = lru_report()
        if self._store is not None:
            memos["store.session_hints"] = self._store.hint_report()
        return {"memos": memos, "rss_bytes": resident_bytes()}

    async def ingest_stats(self) -> dict[str, int]:
        store = self._store
        return {} if store is None else dict(store.stats)

    async def _make_store(self) -> IngestStore:
        from opsmantik_stream.ingest.store import IngestStore, use_row_encoder

        async with self._init_lock:
            if self._store is None:
                import asyncpg

                size = self._settings.partition_db_connections
                # each connection sends its batch rows through the C encoder when it can
                pool = await asyncpg.create_pool(
                    self._db_url, min_size=size, max_size=size, reset=_keep, command_timeout=60, init=use_row_encoder
                )
                assert pool is not None
                self._store = IngestStore(pool, encoded_rows=True)
                from opsmantik_stream.bounds import settle_heap

                settle_heap()  # ready to write: the start-up objects leave the collector's walks
        return self._store

    async def call_event(self, payload: bytes) -> bytes:
        """A signed call event of one of this partition's sites (the leads package)."""
        from opsmantik_stream.leads.call_events import process_call_event

        self._enter()
        try:
            pool = self._pool
            if pool is None:
                async with self._init_lock:
                    if self._pool is None:
                        from opsmantik_stream.db import create_pool

                        self._pool = await create_pool(self._db_url, min_size=0, max_size=self._settings.db_pool_max)
                    pool = self._pool
            return await process_call_event(pool, payload, self._settings, getattr(self, "_caches", None))
        finally:
            self._leave()
