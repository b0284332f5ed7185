"""`opsmantik serve` (what `make run` runs): embedded PostgreSQL + Ray + actors + gateway,
/health 200 on 127.0.0.1, clean stop on Ctrl-C, and the data survives a restart."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.serving import free_port, wait_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "opsmantik_stream.cli", "serve"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _interrupt(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"serve did not stop on Ctrl-C:\n{log.read_text()[-3000:]}") from None
    assert code == 0, log.read_text()[-3000:]


def test_serve_health_stop_and_restart_keeps_data(tmp_path: Path) -> None:
    port = free_port()
    # not under tmp_path: pytest makes that 0700, and the embedded server runs as its own user
    data = Path(tempfile.mkdtemp(prefix="opsm-serve-")) / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSMANTIK_")}
    env.update(
        {
            "OPSMANTIK_DATA_DIR": str(data),
            "OPSMANTIK_PORT": str(port),
            "OPSMANTIK_PARTITIONS": "1",
            "OPSMANTIK_UPLOADERS": "1",
        }
    )
    log = tmp_path / "serve.log"

    proc = _start(env, log)
    try:
        health = wait_healthy(port, proc, log)
        assert health["checks"]["database"] == "ok"
        assert all(v == "ok" for v in health["checks"]["actors"].values())
        assert f"serving on http://127.0.0.1:{port}" in log.read_text()
        # a keep-alive connection that sits idle (as a reverse proxy's upstream connections do)
        # is still open later: the proxy, not the gateway, decides when to close it
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        idle.request("GET", "/health")
        idle.getresponse().read()
        idle_since = time.monotonic()
        # a CLI command shares the running embedded server
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "opsmantik_stream.cli",
                "site",
                "create",
                "--name",
                "Kept",
                "--domain",
                "kept.example.com",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        public_id = json.loads(created.stdout)["public_id"]
        status = subprocess.run(
            [sys.executable, "-m", "opsmantik_stream.cli", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout)["ray"] == "ok"
        assert json.loads(status.stdout)["routing"]["version"] == 1
        # a size whose pools cannot fit in the server's connections is refused, nothing changes
        refused = subprocess.run(
            [sys.executable, "-m", "opsmantik_stream.cli", "scale", "--partitions", "40", "--uploaders", "40"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "refused, routing v1 stays" in refused.stderr and "max_connections" in refused.stderr
        # resize the running stack from another shell
        scaled = subprocess.run(
            [sys.executable, "-m", "opsmantik_stream.cli", "scale", "--partitions", "2", "--uploaders", "1", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert scaled.returncode == 0, scaled.stdout + scaled.stderr
        health = wait_healthy(port, proc, log)
        assert sum(1 for name in health["checks"]["actors"] if name.startswith("partition-v2-")) == 2
        time.sleep(max(0.0, 8.0 - (time.monotonic() - idle_since)))  # past uvicorn's default 5 s
        idle.request("GET", "/health")
        assert idle.getresponse().status == 200
        idle.close()
    finally:
        if proc.poll() is None:
            _interrupt(proc, log)
    assert "stopped" in log.read_text()
    assert not (data / "ray.address").exists()

    proc = _start(env, log)
    try:
        wait_healthy(port, proc, log)
        listed = subprocess.run(
            [sys.executable, "-m", "opsmantik_stream.cli", "site", "list", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert public_id in [s["public_id"] for s in json.loads(listed.stdout)["sites"]]
    finally:
        if proc.poll() is None:
            _interrupt(proc, log)
        shutil.rmtree(data.parent, ignore_errors=True)  # the embedded database, once stopped
