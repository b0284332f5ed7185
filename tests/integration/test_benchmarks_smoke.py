"""The benchmark report: ratio and goal computation, JSON and Markdown output, charts.

No load is generated and no speed is asserted here; `make bench` measures.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------------------- the soak (issue 18)


def _samples(minutes: int, curve: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for k in range(1, minutes * 6 + 1):
        t = k * 10.0
        out.append(
            {
                "t_s": t,
                "window": k - 1,
                "rss_mb": {name: f(t) for name, f in curve.items()},
                "load": {"p50_ms": 5.0, "p99_ms": 20.0 + t / 100},
            }
        )
    return out


def test_soak_growth_is_the_last_window_mean_over_the_first_window_peak() -> None:
    from benchmarks.soak_report import growth_table

    samples = _samples(
        30,
        {
            "partition 1": lambda t: 100.0,  # flat
            "gateway": lambda t: 140.0 + t / 60.0,  # leaks 1 MB a minute
            "postgresql": lambda t: min(128.0, 60.0 + t / 3.0),  # warm-up, then flat
            "bench driver": lambda t: 90.0 + t,  # not a product component
        },
    )
    g = growth_table(samples, 300.0, 1800.0)
    assert set(g) == {"partition 1", "gateway", "postgresql"}
    assert g["partition 1"]["growth_pct"] == 0.0
    assert g["postgresql"]["growth_pct"] == pytest.approx(0.0, abs=0.1)  # warm-up is not growth
    assert g["gateway"]["growth_pct"] > 10.0
    assert g["gateway"]["first_peak_mb"] == 145.0 and g["gateway"]["peak_mb"] == 170.0


def test_postgresqls_shared_segment_is_judged_by_its_size_not_by_growth() -> None:
    from benchmarks.memory import PG_SHARED
    from benchmarks.soak_report import growth_conditions

    growth = {
        "postgresql": {"growth_pct": 2.0, "peak_mb": 30.0},
        PG_SHARED: {"growth_pct": 40.0, "peak_mb": 140.0},  # buffers filling up to the segment
    }
    assert all(growth_conditions(growth, 143.0).values())
    over = growth_conditions({**growth, PG_SHARED: {"growth_pct": 40.0, "peak_mb": 400.0}}, 143.0)
    assert [k for k, ok in over.items() if not ok] == [f"{PG_SHARED} ≤ its size 143 MB (+10 %)"]
    # without the segment's size it is judged like any other component
    assert growth_conditions(growth, None) == {"postgresql ≤ 10 %": True, f"{PG_SHARED} ≤ 10 %": False}


def test_soak_report_has_its_table_and_one_png(tmp_path: Path) -> None:
    from benchmarks.soak_report import growth_table, render_soak_markdown, write_soak_chart

    samples = _samples(3, {"partition 1": lambda t: 100.0, "postgresql": lambda t: 120.0})
    report = {
        "minutes": 3.0,
        "compare_minutes": 1.0,
        "peak_requests_per_s": 900.0,
        "offered_requests_per_s": 450.0,
        "growth": growth_table(samples, 60.0, 180.0),
        "latency": {
            "first": {"p50_ms": 5.0, "p99_ms": 20.0},
            "last": {"p50_ms": 5.0, "p99_ms": 21.0},
            "p99_ratio": 1.05,
        },
        "exactly_once": {
            "acknowledged": 10,
            "ledger_rows": 10,
            "acknowledged_with_event_row": 4,
            "event_rows": 4,
            "distinct_event_ids": 4,
            "unanswered": 0,
        },
        "uploads": {
            "sealed": 3,
            "enqueued": 2,
            "emulator_conversions": 2,
            "orders_twice": 0,
            "queue_after_drain": {"waiting": 0, "by_status": {"COMPLETED": 2}},
        },
        "samples": [{**s, "batcher_queued_events": 3 * k, "batcher_inflight_calls": 1} for k, s in enumerate(samples)],
    }
    png = write_soak_chart(tmp_path / "d-soak-memory-p99.png", report)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = render_soak_markdown(report, png.name)
    assert "![memory and p99 over time](d-soak-memory-p99.png)" in text
    assert "| partition 1 | 100.0 MB | 100.0 MB | 100.0 MB | +0.0 % | 100.0 MB |" in text
    assert "Exactly once: 10 events answered 202, 10 ledger rows" in text
    assert "events waiting max 51, mean 25.5; calls in flight max 1." in text
    assert "Upload queue after the drain, by state: {'COMPLETED': 2}." in text
    assert "## Soak: 3 min at 450 requests/s (half of the 900/s peak)" in text
    # a load fixed with --rate is not called half of the peak
    fixed = render_soak_markdown({**report, "fixed_rate": True}, png.name)
    assert "## Soak: 3 min at 450 requests/s (fixed with --rate; the peak was 900/s)" in fixed


def test_every_soak_request_is_what_its_kind_says_by_the_products_own_rules() -> None:
    """Decoded with the gateway's decoder and judged with its origin and consent rules."""
    from benchmarks.mix import EXPECTED, TrafficMix
    from benchmarks.payloads import SiteRef
    from opsmantik_stream.ingest.admission import origin_allowed
    from opsmantik_stream.ingest.schema import BodyError, consent_scopes, decode_body

    sites = [SiteRef(uuid.uuid4().hex, f"https://s{i}.example.com") for i in range(50)]
    origins = {s.public_id: s.origin for s in sites}
    mix = TrafficMix(sites, "t", 0)
    kinds: Counter[str] = Counter()
    for _ in range(20_000):
        req = mix.next()
        kinds[req.kind] += 1
        assert req.kind in EXPECTED
        if req.kind == "bad_json":
            with pytest.raises(BodyError) as exc:
                decode_body(req.body)
            assert exc.value.status == 400
            continue
        if req.kind == "schema_violation":
            with pytest.raises(BodyError) as exc:
                decode_body(req.body)
            assert exc.value.status == 422
            continue
        _envelope, (ev,) = decode_body(req.body)
        assert req.origin is not None and ev.s is not None
        if req.kind == "unknown_site":
            assert ev.s not in origins
            continue
        assert origin_allowed(req.origin, [origins[ev.s]]) is (req.kind != "foreign_origin")
        assert ("analytics" in consent_scopes(ev)) is (req.kind != "no_consent")
        assert req.stores_row is (req.kind not in ("heartbeat", "duplicate_heartbeat", "no_consent", "foreign_origin"))
    # the mix the docs promise: mostly heartbeats, page views and scrolls; clicks, resends, bad ones
    assert {"page_view", "scroll", "heartbeat", "phone_click", "whatsapp_click", "duplicate"} <= set(kinds)
    assert {"duplicate_heartbeat", "bad_json", "unknown_site", "foreign_origin", "schema_violation"} <= set(kinds)
    assert 0.005 < (kinds["duplicate"] + kinds["duplicate_heartbeat"]) / 20_000 < 0.015
    assert mix.sessions_started > 500 and mix.returning_started > 100


def test_memory_components_are_named_by_command_line() -> None:
    from benchmarks.memory import kind_of

    assert kind_of("ray::SitePartition", "ray::SitePartit") == "partition"
    assert kind_of("ray::Uploader.run_once", "ray::Uploader") == "uploader"
    assert kind_of("ray::Maintenance", "ray::Maintenanc") == "maintenance"
    assert kind_of("ray::IDLE", "ray::IDLE") == "ray: other"
    assert kind_of("postgres: user db [local] idle", "postgres") == "postgresql"
    assert kind_of("/usr/bin/python -m opsmantik_stream.cli serve", "python") == "gateway"
    assert kind_of("/usr/bin/python -m benchmarks.stream --worker {}", "python") == "load generator"


def test_postgresqls_pss_is_read_again_only_once_the_kept_one_is_old(
    pg_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory sampler keeps each PostgreSQL process's PSS for PSS_MAX_AGE_S: reading it
    walks the process's whole mapping, buffer pool included."""
    import asyncio

    import asyncpg

    from benchmarks import memory

    async def data_directory() -> str:
        conn = await asyncpg.connect(pg_server)
        try:
            return str(await conn.fetchval("SHOW data_directory"))
        finally:
            await conn.close()

    folder = asyncio.run(data_directory())
    reads: list[int] = []
    read = memory._pss

    def counted(pid: int) -> tuple[int | None, int | None]:
        reads.append(pid)
        return read(pid)

    monkeypatch.setattr(memory, "_pss", counted)

    cache: memory.PssCache = {}
    first = {p.pid: p.pss for p in memory.scan([folder], cache) if p.kind == "postgresql"}
    assert first and all(v and v > 0 for v in first.values())
    assert sorted(reads) == sorted(first)

    # within the age: every process still there keeps what was read, nothing is read again
    again = {p.pid: p.pss for p in memory.scan([folder], cache) if p.kind == "postgresql"}
    assert not set(reads) - set(first) and len(reads) == len(first)
    assert all(again[pid] == first[pid] for pid in again.keys() & first.keys())

    # past it, each is read anew; without a cache, always
    monkeypatch.setattr(memory, "PSS_MAX_AGE_S", 0.0)
    memory.scan([folder], cache)
    assert len(reads) > len(first)
    n = len(reads)
    memory.scan([folder])
    assert len(reads) > n


def test_each_single_event_peak_names_the_connections_it_ran_at(tmp_path: Path) -> None:
    from benchmarks.scenario_kit import SINGLE_CONNECTION_GRID, Context, connections_note, pick_connections

    rates = {64: 4010.4, 128: 5690.0, 256: 5540.2}
    assert connections_note(128, rates) == (
        "at 128 connections (64 / 128 / 256: 4,010 / 5,690 / 5,540 requests/s; the two fastest the mean of two runs)"
    )
    # a --quick run (3 s measurements) measures no grid: it runs at the first count
    quick = Context(quick=True, wrk="/usr/bin/wrk", out_dir=tmp_path, stem="t")
    assert pick_connections(quick, "http://127.0.0.1:9", [], seconds=3.0, markers=()) == (
        SINGLE_CONNECTION_GRID[0],
        {},
    )
    assert connections_note(64, {}) == "at 64 connections"


def test_the_batch_peak_names_its_connections_in_events_per_second(tmp_path: Path) -> None:
    from benchmarks.scenario_kit import BATCH_CONNECTION_GRID, BATCH_SIZE, Context, connections_note, pick_connections

    # requests/s of 50-event requests, shown as events/s
    assert connections_note(64, {16: 380.2, 64: 421.0}, per_request=BATCH_SIZE, unit="events/s", again=False) == (
        "at 64 connections (16 / 64: 19,010 / 21,050 events/s; one run each)"
    )
    quick = Context(quick=True, wrk="/usr/bin/wrk", out_dir=tmp_path, stem="t")
    assert pick_connections(
        quick, "http://127.0.0.1:9", [], seconds=3.0, markers=(), grid=BATCH_CONNECTION_GRID, batch=BATCH_SIZE
    ) == (BATCH_CONNECTION_GRID[0], {})


def test_a_connection_count_is_picked_by_the_mean_of_its_runs() -> None:
    from benchmarks.scenario_kit import best_connections

    # a lucky first run at 128 does not win over a count that is faster on both of its runs
    assert best_connections({64: [4_876.0], 128: [9_745.0, 6_900.0], 256: [8_986.0, 9_100.0]}) == 256
    assert best_connections({64: [4_876.0], 128: [9_745.0, 9_300.0], 256: [8_986.0, 9_100.0]}) == 128
    assert best_connections({16: [580.0, 600.0], 64: [680.0, 690.0]}) == 64
