"""Start the product the way a user does, for one scenario.

``opsmantik serve`` runs as a subprocess with its own temporary ``OPSMANTIK_DATA_DIR`` (so
its own embedded PostgreSQL and local Ray), port, partitions and uploaders; sites are made
with ``opsmantik site create`` (high monthly limits). The benchmark then talks to the
embedded PostgreSQL that ``serve`` started (pgserver shares one running server per data
folder) for the few things a user would do with SQL: raising the per-site rate limit and
counting what was stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from benchmarks import memory
from benchmarks.payloads import SiteRef
from opsmantik_stream.routing import partition_for

__all__ = ["ServeStack", "free_port", "wait_http"]

REPO = Path(__file__).resolve().parents[1]
OPSMANTIK = [sys.executable, "-m", "opsmantik_stream.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll ``url`` until it answers 200 (or raise, with the reason)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s ({last})")


class ServeStack:
    """``opsmantik serve`` in a temporary data folder. Use as a context manager."""

    def __init__(
        self, *, partitions: int = 2, uploaders: int = 0, env: dict[str, str] | None = None, label: str = "stack"
    ) -> None:
        self.partitions = partitions
        self.uploaders = uploaders
        self.label = label
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="opsm-bench-"))
        self.env = {
            **os.environ,
            "OPSMANTIK_DATA_DIR": str(self.data_dir),
            "OPSMANTIK_PORT": str(self.port),
            "OPSMANTIK_HOST": "127.0.0.1",
            "OPSMANTIK_PARTITIONS": str(partitions),
            "OPSMANTIK_UPLOADERS": str(uploaders),
            "OPSMANTIK_RAY_NAMESPACE": f"bench-{self.port}",
            **(env or {}),
        }
        self.env.pop("OPSMANTIK_DATABASE_URL", None)
        self.env.pop("OPSMANTIK_RAY_ADDRESS", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self._pg: Any = None
        self.db_url = ""
        self.log_path = self.data_dir / "serve.log"
        # where to keep serve's log when it logged warnings or errors (the data folder goes)
        self.keep_log_as: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ServeStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 180.0) -> None:
        memory.watch(self.data_dir)  # its PostgreSQL server counts as this benchmark's
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*OPSMANTIK, "serve"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(self.base_url + "/health", timeout_s, self.proc)
        from opsmantik_stream.db import EmbeddedPostgres

        # the server `serve` started: pgserver hands out the running one for this folder
        self._pg = EmbeddedPostgres(self.data_dir)
        self.db_url = self._pg.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # Ctrl-C, like a user: serve stops the actors, Ray and PostgreSQL cleanly
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        if self._pg is not None:
            self._pg.stop()  # the last handle stops the server
            self._pg = None
        if self.keep_log_as is not None and self.log_path.exists():
            text = self.log_path.read_text(errors="replace")
            if '"level":"WARNING"' in text or '"level":"ERROR"' in text or "Traceback" in text:
                self.keep_log_as.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.log_path, self.keep_log_as)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        memory.unwatch(self.data_dir)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ user actions
    def cli(self, *args: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """``opsmantik <args> --json`` against this stack's data folder."""
        out = subprocess.run(
            [*OPSMANTIK, *args, "--json"],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if out.returncode != 0:
            raise RuntimeError(f"opsmantik {' '.join(args)} failed: {out.stderr.strip()[-500:]}")
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    def create_sites(self, n: int, prefix: str = "bench", rate_limit_per_min: int = 100_000_000) -> list[SiteRef]:
        """``n`` sites via the CLI (4 at a time), then their rate limit raised with SQL.

        The sites are spread evenly over the stack's partitions: a site's partition is a hash
        of its (random) id, and a handful of random sites often lands 6 to 2 or 7 to 1 on two
        partitions, which measures one partition's limit instead of the stack's and made the
        batch figures swing by a fifth between runs. A deployment with many sites spreads
        evenly by itself; the benchmark creates sites until every partition has its share
        (sites beyond a partition's share are left unused)."""
        quota = [n // self.partitions + (1 if k < n % self.partitions else 0) for k in range(self.partitions)]
        sites: list[dict[str, Any]] = []
        made = 0
        while sum(quota) > 0:
            if made > 20 * n + 20:
                raise RuntimeError(f"could not spread {n} sites over {self.partitions} partitions")
            wave = list(range(made, made + min(4, sum(quota))))
            made += len(wave)
            procs = [
                subprocess.Popen(
                    [
                        *OPSMANTIK,
                        "site",
                        "create",
                        "--name",
                        f"{prefix} {i}",
                        "--domain",
                        f"{prefix}{i}.example.com",
                        "--monthly-limit",
                        "1000000000",
                        "--json",
                    ],
                    cwd=REPO,
                    env=self.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in wave
            ]
            for p in procs:
                out, err = p.communicate(timeout=120)
                if p.returncode != 0:
                    raise RuntimeError(f"opsmantik site create failed: {err.strip()[-500:]}")
                site = json.loads(out.strip().splitlines()[-1])
                owner = partition_for(site["site_id"], self.partitions)
                if quota[owner] > 0:
                    quota[owner] -= 1
                    sites.append(site)
        refs = [SiteRef(public_id=s["public_id"], origin=s["origins"][0]) for s in sites]
        self.sql(
            "UPDATE site_plans SET rate_limit_per_min = $1 WHERE site_id = ANY($2::uuid[])",
            rate_limit_per_min,
            [s["site_id"] for s in sites],
        )
        self.site_ids = {r.public_id: s["site_id"] for r, s in zip(refs, sites, strict=True)}
        return refs

    def sql(self, query: str, *args: Any) -> str:
        return asyncio.run(self._sql("execute", query, *args))  # type: ignore[no-any-return]

    def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        rows = asyncio.run(self._sql("fetch", query, *args))
        return [dict(r) for r in rows]

    def fetchval(self, query: str, *args: Any) -> Any:
        return asyncio.run(self._sql("fetchval", query, *args))

    async def _sql(self, method: str, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.db_url)
        try:
            return await getattr(conn, method)(query, *args)
        finally:
            await conn.close()

    def pids(self) -> Sequence[int]:
        return [] if self.proc is None else [self.proc.pid]
