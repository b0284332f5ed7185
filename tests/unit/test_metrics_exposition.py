"""The gateway renders actors' figures as Prometheus families, and the shipped alert rules and
Grafana dashboard name only metrics that exist (``deploy/``)."""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics as gm
from opsmantik_stream import telemetry
from opsmantik_stream.telemetry import UPLOADER_METRICS, Histogram, Stats, lru_cache_figures
from tests.debian import ensure_tool

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "opsmantik-stream.json"
_NAME = re.compile(r"\bopsmantik_[a-z0-9_]+\b")


def _uploader_answer() -> dict[str, Any]:
    stats = Stats(UPLOADER_METRICS)
    stats.observe("opsmantik_upload_request_duration_seconds", ("google_ads",), 0.003)
    stats.observe("opsmantik_upload_request_duration_seconds", ("google_ads",), 100.0)
    stats.inc("opsmantik_upload_responses", ("google_ads", "200", "none"), 2)
    stats.inc("opsmantik_upload_rows", ("google_ads", "completed"), 7)
    stats.observe("opsmantik_upload_bucket_wait_seconds", ("google_ads",), 0.0)
    stats.inc("opsmantik_upload_breaker_transitions", ("google_ads", "CLOSED", "OPEN"))
    return stats.snapshot()


@pytest.fixture
def rendered() -> Iterator[list[tuple[str, dict[str, str], float]]]:
    """The exposition with every collector filled (as after a scrape of a running stack)."""
    parts, ups = gm._ACTOR_FIGURES.partitions, gm._ACTOR_FIGURES.uploaders
    state = gm.MetricsState()  # one gateway's database figures
    figures, registry = state.figures, state.registry
    figures.snapshot = {
        "queue": {"QUEUED": 3},
        "breakers": {"OPEN": 1},
        "uploads": {"completed": 5},
        "dead_letters": 0,
        "oldest_due": {"google_ads": {"age_s": 42.5, "n": 3}},
        "privacy_retention": None,
        "alerts": {},
    }
    gm._ACTOR_FIGURES.partitions = {
        "partition-v1-0": {
            "ingest": {"batches": 4, "events": 9, "accepted": 8, "duplicate": 1, "retried_batches": 1},
            "caches": {"opsmantik_stream.x.f": (5, 2, 2, 64)},
        },
        "partition-v1-1": None,  # did not answer
    }
    gm._ACTOR_FIGURES.uploaders = {"uploader-v1-0": _uploader_answer()}
    gm.PARTITION_CALL_SECONDS.observe(0.01)
    gm.BATCH_SIZE.observe(3)
    gm.HTTP_LATENCY.labels("GET", "/health", "200").observe(0.001)
    events: Any = gm.INGEST_EVENTS
    if hasattr(events, "labels"):  # a prometheus-client Counter (or a plain dict read at scrape time)
        events.labels("accepted").inc(0)
    else:
        events.setdefault("accepted", 0)
    try:
        text = (generate_latest(gm.REGISTRY) + generate_latest(registry)).decode()
        yield [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]
    finally:
        gm._ACTOR_FIGURES.partitions, gm._ACTOR_FIGURES.uploaders = parts, ups


def _value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    [v] = [v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())]
    return v


def test_actor_figures_render_as_prometheus_families(rendered: list[tuple[str, dict[str, str], float]]) -> None:
    s = rendered
    up = "uploader-v1-0"
    assert _value(s, "opsmantik_upload_rows_total", uploader=up, outcome="completed") == 7
    assert _value(s, "opsmantik_upload_responses_total", uploader=up, status="200", code="none") == 2
    assert _value(s, "opsmantik_upload_breaker_transitions_total", from_state="CLOSED", to_state="OPEN") == 1
    # histogram buckets are cumulative, +Inf holds everything, sum is kept
    h = "opsmantik_upload_request_duration_seconds"
    assert _value(s, f"{h}_bucket", uploader=up, le="0.005") == 1
    assert _value(s, f"{h}_bucket", uploader=up, le="30.0") == 1
    assert _value(s, f"{h}_bucket", uploader=up, le="+Inf") == 2
    assert _value(s, f"{h}_count", uploader=up) == 2
    assert _value(s, f"{h}_sum", uploader=up) == pytest.approx(100.003)
    assert _value(s, "opsmantik_upload_bucket_wait_seconds_count", uploader=up) == 1
    # partitions: calls, events by outcome; one that did not answer is down and has no figures
    assert _value(s, "opsmantik_partition_batches_total", partition="partition-v1-0") == 4
    assert _value(s, "opsmantik_partition_events_total", partition="partition-v1-0", outcome="duplicate") == 1
    assert _value(s, "opsmantik_partition_batch_redos_total", partition="partition-v1-0", kind="retried") == 1
    assert _value(s, "opsmantik_actor_metrics_up", actor="partition-v1-1") == 0
    assert _value(s, "opsmantik_actor_metrics_up", actor="partition-v1-0") == 1
    assert not [lab for n, lab, _ in s if lab.get("partition") == "partition-v1-1"]
    cache = {"process": "partition-v1-0", "cache": "opsmantik_stream.x.f"}
    assert _value(s, "opsmantik_cache_hits_total", **cache) == 5
    assert _value(s, "opsmantik_cache_misses_total", **cache) == 2
    assert _value(s, "opsmantik_cache_capacity_entries", **cache) == 64
    # the oldest due row per destination; a destination without due rows reads 0
    assert _value(s, "opsmantik_upload_oldest_due_age_seconds", destination="google_ads") == 42.5
    assert _value(s, "opsmantik_upload_oldest_due_age_seconds", destination="data_manager") == 0
    assert _value(s, "opsmantik_upload_due_rows", destination="google_ads") == 3


def test_histogram_and_stats_snapshot() -> None:
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 9.0):
        h.observe(v)
    assert h.counts == [2, 1, 1] and h.count == 4 and h.sum == 12.0  # a bound is inclusive (le)
    stats = Stats(UPLOADER_METRICS)
    stats.inc("opsmantik_upload_rows", ("data_manager", "failed"), 2)
    stats.inc("opsmantik_upload_rows", ("data_manager", "failed"))
    assert stats.snapshot()["counters"] == [("opsmantik_upload_rows", ("data_manager", "failed"), 3)]


@functools.lru_cache(maxsize=8)
def _cached_square(x: int) -> int:
    return x * x


def test_lru_cache_figures_reads_the_process_caches() -> None:
    _cached_square.cache_clear()
    for x in (1, 1, 1, 2):
        _cached_square(x)
    figures = lru_cache_figures(packages=("tests.unit.test_metrics_exposition",))
    assert figures["tests.unit.test_metrics_exposition._cached_square"] == (2, 2, 2, 8)
    # a cache imported into another module is reported once, under its own module
    assert all(not name.startswith("opsmantik_stream.telemetry.") for name in lru_cache_figures())
    assert telemetry.lru_cache_figures is lru_cache_figures


def _names(text: str) -> set[str]:
    return set(_NAME.findall(text))


def test_alerts_and_dashboard_name_only_existing_metrics(rendered: list[tuple[str, dict[str, str], float]]) -> None:
    exposed = {n for n, _, _ in rendered}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    used_by_dashboard = _names("\n".join(exprs))
    used_by_alerts = _names(ALERTS.read_text())
    assert used_by_dashboard - exposed == set()
    assert used_by_alerts - exposed == set()
    # the dashboard shows every figure issue 17 asks for
    for family in (
        "opsmantik_upload_oldest_due_age_seconds",
        "opsmantik_upload_request_duration_seconds_bucket",
        "opsmantik_upload_responses_total",
        "opsmantik_upload_rows_total",
        "opsmantik_upload_bucket_wait_seconds_bucket",
        "opsmantik_upload_breaker_transitions_total",
        "opsmantik_ingest_batch_events_bucket",
        "opsmantik_partition_call_duration_seconds_bucket",
        "opsmantik_cache_hits_total",
    ):
        assert family in used_by_dashboard, family
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_rules_pass_promtool() -> None:
    # Debian's prometheus package carries promtool (installed like chromium, never skipped)
    promtool, reason = ensure_tool(("promtool",), "prometheus")
    if promtool is None:
        pytest.fail(f"promtool unavailable, the alert rules cannot be checked: {reason}")
    done = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
