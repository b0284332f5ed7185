"""The benchmark report: ratio and goal computation, JSON and Markdown output, charts.

No load is generated and no speed is asserted here; `make bench` measures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.openloop import percentile
from benchmarks.report import (
    label_near,
    make_result,
    percent_near,
    render_markdown,
    write_charts,
    write_json,
    write_markdown,
)

pytestmark = pytest.mark.integration


def test_ratio_and_goal_are_computed_from_the_given_figures() -> None:
    r = make_result("ingest", 1200.0, "requests/s", ceiling="HTTP ceiling", ceiling_value=4000.0, goal_ratio=0.6)
    assert r.ratio == 0.3
    assert r.met is False
    r = make_result("ingest", 2400.0, "requests/s", ceiling="HTTP ceiling", ceiling_value=4000.0, goal_ratio=0.6)
    assert r.ratio == 0.6
    assert r.met is True


def test_a_failed_condition_fails_the_goal_even_when_the_ratio_is_met() -> None:
    r = make_result(
        "uploads",
        19.5,
        "requests/s",
        ceiling="configured bucket",
        ceiling_value=20.0,
        goal_ratio=0.95,
        conditions={"never above the bucket in any 1 s window": False},
    )
    assert r.ratio == 0.975
    assert r.met is False


def test_no_goal_and_no_ceiling_give_no_verdict() -> None:
    r = make_result("HTTP ceiling", 4500.0, "requests/s")
    assert r.ratio is None and r.met is None
    r = make_result("scaling", 3000.0, "events/s", ceiling="store ceiling", ceiling_value=0.0)
    assert r.ratio is None and r.met is None


def test_reports_carry_every_required_field(tmp_path: Path) -> None:
    results = [
        make_result("HTTP ceiling", 4500.0, "requests/s"),
        make_result("ingest", 1200.0, "requests/s", ceiling="HTTP ceiling", ceiling_value=4500.0, goal_ratio=0.6),
    ]
    write_json(tmp_path / "2026-01-01.json", results, {"date": "2026-01-01", "command": "make bench"})
    data = json.loads((tmp_path / "2026-01-01.json").read_text())
    assert isinstance(data, list) and len(data) == 2
    for item in data:
        assert {"scenario", "value", "unit", "ceiling", "ceiling_value", "ratio", "goal_ratio", "met"} <= set(item)
    assert data[1]["ratio"] == pytest.approx(0.2667, abs=1e-4)
    assert json.loads((tmp_path / "2026-01-01.meta.json").read_text())["command"] == "make bench"

    write_markdown(tmp_path / "2026-01-01.md", results, {"date": "2026-01-01", "command": "make bench"})
    table = (tmp_path / "2026-01-01.md").read_text()
    assert "| ingest | 1,200 | requests/s | HTTP ceiling | 4,500 | 27 % | ≥ 60 % | **no** |" in table
    assert "`make bench`" in table
    rows = [line for line in render_markdown(results).splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # header + 2 results


def test_charts_are_written_as_png(tmp_path: Path) -> None:
    sweeps = {
        "ingest": [{"offered": o, "achieved": o * 0.9, "p50_ms": 5.0 + o / 100, "p99_ms": 20.0} for o in (1, 2, 4)]
    }
    files = write_charts(tmp_path, "d", sweeps, {"By partitions": [("1", 100.0), ("2", 180.0)]})
    assert len(files) == 2
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_never_round_a_miss_into_the_goal() -> None:
    assert label_near(18.96, 19.0) == "18.96"
    assert label_near(18.9, 19.0) == "18.9"
    assert label_near(999.6, 1000.0) == "999.6"
    assert label_near(1200.0, 1000.0) == "1,200"
    assert percent_near(0.5996, 0.6) == "59.96 %"
    assert percent_near(0.6004, 0.6) == "60.04 %"
    assert percent_near(0.27, 0.6) == "27 %"
    missed = make_result("batches", 599.6, "events/s", ceiling="store ceiling", ceiling_value=1000.0, goal_ratio=0.6)
    assert "| 59.96 % | ≥ 60 % | **no** |" in render_markdown([missed])


def test_charts_draw_goals_and_ceilings(tmp_path: Path) -> None:
    results = [
        make_result("1 partition", 599.6, "events/s", ceiling="store ceiling", ceiling_value=1000.0, goal_ratio=0.6),
        make_result("2 partitions", 700.0, "events/s", ceiling="store ceiling", ceiling_value=1000.0, goal_ratio=0.6),
        make_result("HTTP ceiling", 4500.0, "requests/s"),
    ]
    results.append(
        make_result("ingest", 30.0, "ms", conditions={"p99 <= 50 ms": True}),
    )
    sweeps = {"ingest": [{"offered": o, "achieved": o, "p50_ms": 3.0, "p99_ms": 30.0} for o in (100.0, 200.0)]}
    files = write_charts(tmp_path, "g", sweeps, {"By partitions": [("1", 599.6), ("2", 700.0)]}, results)
    assert [f.name for f in files] == ["g-load.png", "g-by-partitions.png", "g-goals.png"]
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_percentile_is_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 99) == 0.0


def test_events_per_call_come_from_the_batch_histogram() -> None:
    from benchmarks.probes import Snapshot, cpu_ms_per_unit, diff

    before = Snapshot(calls=10, events=100, buckets={1: 0, 16: 10, 32: 10, float("inf"): 10}, commits=5)
    # 100 more calls: 50 of 1-16 events, 50 of 17-32; 2,000 events in all
    after = Snapshot(calls=110, events=2100, buckets={1: 0, 16: 60, 32: 110, float("inf"): 110}, commits=105)
    out = diff(before, after, seconds=10.0)
    assert out["partition_calls_per_s"] == 10.0
    assert out["events_per_call_mean"] == 20.0
    assert out["events_per_call_p50"] == 16.0
    assert 31.0 <= out["events_per_call_p99"] <= 32.0
    assert out["commits_per_s"] == 10.0
    # 50 % of a core at 1,000 requests/s is 0.5 ms of CPU per request
    assert cpu_ms_per_unit({"gateway": 50.0, "total (100 % = one core, 2 cores)": 50.0}, 1000.0) == {"gateway": 0.5}
