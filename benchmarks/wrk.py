"""Closed-loop peak load with ``wrk`` (C, epoll): it outruns any one Python server process.

The Lua script builds the same bodies as ``payloads.py`` (unique ``eid`` per event from a run
id, thread id and counter; session ids from a pool of 500 per run), spreads requests over
the given sites with each site's own Origin, counts answers by status, and prints one JSON
line (requests, duration, statuses, latency percentiles) from ``done()``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.payloads import SESSIONS_PER_SITE, SiteRef

__all__ = ["WrkResult", "ensure_wrk", "run_wrk"]

_LUA = r"""
local sites = {__SITES__}
local origins = {__ORIGINS__}
local batch = __BATCH__
local run = "__RUN__"
local sessions = __SESSIONS__
local path = "__PATH__"
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  statuses = {}
end

-- session ids are per site (a browser's session id never spans sites)
local function sid(k, n)
  return string.format("%08x-%04x-4%03x-8000-%012x", tid, k, 0, n % sessions)
end

local function event(k, n)
  return string.format(
    '{"s":"%s","u":"%s/products/%d?utm_source=google&utm_medium=organic","eid":"%s-%d-%d",' ..
    '"sid":"%s","ec":"interaction","ea":"view","el":"product page","r":"https://www.google.com/",' ..
    '"consent":["analytics"],"meta":{"fp":"fp-%s-%d-%d","lan":"tr-TR","sw":1920,"sh":1080}}',
    sites[k], origins[k], n % 97, run, tid, n, sid(k, n), run, tid, n % sessions)
end

function request()
  counter = counter + 1
  local k = ((counter + tid) % #sites) + 1
  local body
  if batch == 0 then
    body = event(k, counter)
  else
    local parts = {}
    for i = 1, batch do
      parts[i] = event(k, counter * batch + i)
    end
    body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  end
  return wrk.format("POST", path, {["Content-Type"] = "application/json", ["Origin"] = origins[k]}, body)
end

function response(status, headers, body)
  local key = tostring(status)
  if status >= 300 then
    local code = headers["x-opsmantik-error-code"] or headers["X-OpsMantik-Error-Code"]
    if code then key = key .. ":" .. code end
  end
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local agg = {}
  for _, t in ipairs(threads) do
    local st = t:get("statuses")
    for k, v in pairs(st) do agg[k] = (agg[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(agg) do table.insert(parts, string.format('"%s":%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"statuses":{%s},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%f}\n',
    summary.requests, summary.duration, summary.bytes, table.concat(parts, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    statuses: dict[str, int]
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def count(self, *codes: int) -> int:
        return sum(self.statuses.get(str(c), 0) for c in codes)

    @property
    def ok_rps(self) -> float:
        """Answers 2xx per second (the throughput that counts)."""
        ok = sum(v for k, v in self.statuses.items() if k.startswith("2"))
        return ok / self.duration_s if self.duration_s else 0.0


def ensure_wrk() -> str | None:
    """The wrk binary; installed with apt-get when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: apt-get install -y wrk ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.call(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
            subprocess.call(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.call(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return shutil.which("wrk")


def _lua(sites: Sequence[SiteRef], batch: int, run: str, path: str) -> str:
    return (
        _LUA.replace("__SITES__", ", ".join(json.dumps(s.public_id) for s in sites))
        .replace("__ORIGINS__", ", ".join(json.dumps(s.origin) for s in sites))
        .replace("__BATCH__", str(batch))
        .replace("__RUN__", run)
        .replace("__SESSIONS__", str(SESSIONS_PER_SITE))
        .replace("__PATH__", path)
    )


def run_wrk(
    wrk: str,
    url_base: str,
    sites: Sequence[SiteRef],
    *,
    run: str,
    batch: int = 0,
    seconds: float = 10.0,
    connections: int = 64,
    threads: int = 1,
    path: str = "/api/sync",
    timeout_s: float = 10.0,
) -> WrkResult:
    """One wrk run against ``url_base`` (``http://127.0.0.1:PORT``); bounded by ``seconds``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_lua(sites, batch, run, path))
        script = fh.name
    try:
        cmd = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            script,
            url_base + path,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    finally:
        Path(script).unlink(missing_ok=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (exit {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")
    data = json.loads(line[len("WRKJSON ") :])
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        statuses={str(k): int(v) for k, v in data["statuses"].items()},
        errors=data["errors"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        raw=data,
    )
