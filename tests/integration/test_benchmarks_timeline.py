"""The benchmark's machine timeline: second-by-second samples of a real machine and a real
PostgreSQL, folded into an open-loop point's 10 s windows."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import asyncpg

from benchmarks.timeline import Sample, Timeline, windows, worst_window_note


def test_the_timeline_sees_a_checkpoint_and_a_busy_process(pg_server: str, db_url: str) -> None:
    timeline = Timeline(markers=(), db_url=pg_server, interval_s=0.5)
    timeline.start()
    # a child of this process (so one of the benchmark's) burns CPU for a second
    burner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.2: pass"])
    burner.wait(timeout=30)

    async def checkpoint() -> None:
        # dirty some pages of a test database, then have the server write them
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute("CREATE TABLE timeline_probe (x int)")
            await conn.execute("INSERT INTO timeline_probe SELECT generate_series(1, 10000)")
        finally:
            await conn.close()
        admin = await asyncpg.connect(pg_server)
        try:
            await admin.execute("CHECKPOINT")
        finally:
            await admin.close()

    asyncio.run(checkpoint())
    time.sleep(1.2)
    samples = timeline.stop()

    assert timeline.error is None
    assert len(samples) >= 3
    assert sum(s.checkpoints for s in samples) >= 1
    assert sum(s.checkpoint_mb for s in samples) > 0
    # this process's descendants are the benchmark's: the burner shows as a busy component
    assert max(sum(v for k, v in s.cpu.items() if k != "background (not this benchmark)") for s in samples) >= 40
    for s in samples:
        assert set(s.host) == {"busy", "idle", "iowait", "steal"}
        assert abs(sum(s.host.values()) - 100.0) <= 1.0


def test_a_timeline_without_a_database_still_samples_the_machine() -> None:
    timeline = Timeline(markers=(), db_url=None, interval_s=0.2)
    timeline.start()
    time.sleep(0.7)
    samples = timeline.stop()
    assert timeline.error is None
    assert len(samples) >= 2
    assert all(s.checkpoints == 0 and s.autovacuum == 0 for s in samples)


def test_a_timeline_that_cannot_reach_its_database_reports_it_and_never_raises() -> None:
    timeline = Timeline(markers=(), db_url=f"postgresql://nobody@/postgres?host={os.devnull}", interval_s=0.2)
    timeline.start()
    time.sleep(0.3)
    assert timeline.stop() == []
    assert timeline.error is not None


def _sample(t: float, pg: float, steal: float = 0.0, checkpoints: int = 0) -> Sample:
    return Sample(
        t=t,
        cpu={"postgresql": pg, "gateway (opsmantik serve)": 40.0},
        host={"busy": 70.0, "idle": 30.0 - steal, "iowait": 0.0, "steal": steal},
        checkpoints=checkpoints,
        checkpoint_mb=8.0 * checkpoints,
    )


def test_samples_fold_into_the_points_windows_and_the_worst_one_is_told_apart() -> None:
    start = 1_000.0
    # three 10 s windows; the second has a checkpoint and steal, the third no samples at all
    samples = [_sample(start + s, 50.0) for s in range(1, 11)]
    samples += [_sample(start + s, 90.0, steal=20.0, checkpoints=1 if s == 15 else 0) for s in range(11, 21)]
    folded = windows(samples, start, count=3)

    assert folded[0]["seconds"] == 10 and folded[0]["cpu"]["postgresql"] == 50.0
    assert folded[1]["cpu"]["postgresql"] == 90.0
    assert folded[1]["host"]["steal"] == 20.0
    assert folded[1]["checkpoints"] == 1 and folded[1]["checkpoint_mb"] == 8.0
    assert folded[2] == {}

    note = worst_window_note([20.0, 300.0, 25.0], [*folded[:2], folded[0]])
    assert note is not None
    assert note.startswith("worst 10 s window (no. 2, p99 300 ms): postgresql 90 %")
    assert "steal 20 %" in note and "1 checkpoint(s) started" in note
    assert "Median window (no. 3, p99 25 ms)" in note
    # no stretch stands out: nothing to say
    assert worst_window_note([20.0, 30.0, 25.0], [*folded[:2], folded[0]]) is None
