"""The log writer, the shared ring and the log process: rolling, atomic completion, drops when
full, drain on close, a log process that dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ranking.flywheel.hook import Flywheel
from ranking.flywheel.logproc import LogProcess
from ranking.flywheel.logwriter import LogRecord, LogWriter, log_schema
from ranking.scoring.bundle import Bundle, load_bundle, parse_bundle
from tests.conftest import SmallWorld


def served(bundle: Bundle, ts: float, k: int, n: int = 4) -> LogRecord:
    """Request k as the log process decodes it: the returned rows (reversed), in order."""
    matrix = np.arange(n * len(bundle.features), dtype=np.float64).reshape(n, -1) + k
    rows = np.arange(n, dtype=np.intp)[::-1].copy()
    scores = np.arange(n, 0, -1, dtype=np.float64)
    return LogRecord(
        ts, f"r{k}", "u1", log_schema(bundle), matrix[rows], [f"i{j}" for j in rows], scores, 0,
        [],
    )  # fmt: skip


def observe(fly: Flywheel, bundle: Bundle, rid: str, n: int = 4) -> str:
    matrix = np.arange(n * len(bundle.features), dtype=np.float64).reshape(n, -1)
    rows = np.arange(n, dtype=np.intp)[::-1].copy()
    scores = np.arange(n, 0, -1, dtype=np.float64)
    ids = [f"i{j}" for j in range(n)]
    return fly.observe(rid, "u1", bundle, matrix, ids, rows, scores, 0, [], None, scores)


def files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.parquet"))


def hidden(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.is_file()]


def test_rows_roll_and_complete_atomically(small_world: SmallWorld, tmp_path: Path) -> None:
    bundle = load_bundle(small_world.bundle)
    writer = LogWriter(tmp_path, roll_rows=10, group_rows=4)
    now = time.time()
    writer.write([served(bundle, now, 0)])
    assert files(tmp_path) == [] and len(hidden(tmp_path)) == 1  # open: invisible to readers
    writer.write([served(bundle, now, 1), served(bundle, now, 2)])  # 12 rows >= 10: roll
    assert len(files(tmp_path)) == 1 and hidden(tmp_path) == []
    writer.write([served(bundle, now, 3)])
    writer.close()
    done = files(tmp_path)
    assert len(done) == 2 and hidden(tmp_path) == []
    table = pq.ParquetFile(done[0]).read()
    assert table.num_rows == 12
    assert table.column("item_id").to_pylist()[:4] == ["i3", "i2", "i1", "i0"]
    assert table.column("position").to_pylist()[:4] == [0, 1, 2, 3]
    # feature rows are the matrix rows of the returned items, in response order
    np.testing.assert_array_equal(table.column("u_a").to_numpy()[:4], [27.0, 18.0, 9.0, 0.0])
    assert writer.rows_written == 16 and writer.files_written == 2


def test_roll_on_age_hour_and_features(small_world: SmallWorld, tmp_path: Path) -> None:
    bundle = load_bundle(small_world.bundle)
    writer = LogWriter(tmp_path, roll_s=60)
    hour = 3600 * (int(time.time()) // 3600)
    writer.write([served(bundle, hour + 10, 0)])
    writer.write([served(bundle, hour + 3600 + 10, 1)])  # next hour: a new partition
    assert len(files(tmp_path)) == 1
    inline = [{"name": f.name, "source": "inline"} for f in bundle.features]
    other = parse_bundle(bundle.model_text, {"features": inline})
    writer.write([served(other, hour + 3600 + 20, 2)])  # other feature schema: a new file
    assert len(files(tmp_path)) == 2
    writer.tick(time.time() + 61)  # age
    assert len(files(tmp_path)) == 3 and hidden(tmp_path) == []
    hours = {p.parent.name for p in files(tmp_path)}
    assert len(hours) == 2


def test_full_ring_drops_and_counts(small_world: SmallWorld, tmp_path: Path) -> None:
    bundle = load_bundle(small_world.bundle)
    # The smallest ring (4 KB) holds a few 4-row records; the process is not started, so
    # nothing drains it: the rest are dropped by the copy thread and counted, and observe
    # never waits (it only queues).
    log = LogProcess(tmp_path, capacity=4096)
    fly = Flywheel(log=log)
    for k in range(40):
        assert observe(fly, bundle, f"r{k}") == f"r{k}"
    assert log.ring.sync(10.0)
    kept = log.ring.offered
    assert 0 < kept < 40 and fly.dropped_total == 40 - kept == log.ring.refused
    assert fly.metrics()["flywheel_dropped"] == 40 - kept == fly.metrics()["log_dropped"]
    log.start()
    fly.close()  # the log process writes out what the ring held
    table = pq.ParquetFile(files(tmp_path)[0]).read()
    assert table.column("request_id").unique().to_pylist() == [f"r{k}" for k in range(kept)]
    assert table.column("item_id").to_pylist()[:4] == ["i3", "i2", "i1", "i0"]


def test_close_drains_everything_queued(small_world: SmallWorld, tmp_path: Path) -> None:
    bundle = load_bundle(small_world.bundle)
    fly = Flywheel(log=LogProcess(tmp_path, roll_s=3600), poll_s=1.0)
    assert fly.log is not None
    fly.log.start()
    fly.start()
    ids = [observe(fly, bundle, "") for _ in range(3000)]
    assert len(set(ids)) == 3000 and all(ids)  # generated ids, unique
    fly.close()
    assert fly.dropped == 0
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files(tmp_path))
    assert rows == 3000 * 4 and hidden(tmp_path) == []


def test_ring_wraps_around(small_world: SmallWorld, tmp_path: Path) -> None:
    """Many more records than the ring holds, flushed as they go: every one arrives intact
    across the wrap (records never straddle the end)."""
    bundle = load_bundle(small_world.bundle)
    log = LogProcess(tmp_path, capacity=8192, roll_s=3600)
    log.start()
    fly = Flywheel(log=log)
    for k in range(300):
        observe(fly, bundle, f"r{k}", n=1 + k % 7)
        if k % 5 == 4:
            assert log.flush()
    fly.close()
    assert fly.dropped == 0 and log.ring.offered == 300
    table = pq.ParquetFile(files(tmp_path)[0]).read()
    assert table.num_rows == sum(1 + k % 7 for k in range(300))
    by_rid: dict[str, list[float]] = {}
    for rid, x in zip(table.column("request_id").to_pylist(), table.column("u_a").to_pylist(),
                      strict=True):  # fmt: skip
        by_rid.setdefault(rid, []).append(x)
    width = len(bundle.features)
    for k in range(300):
        n = 1 + k % 7
        assert by_rid[f"r{k}"] == [float(r * width) for r in range(n - 1, -1, -1)]


def test_log_process_death_is_survived(small_world: SmallWorld, tmp_path: Path) -> None:
    """SIGKILL the log process: the worker counts it, restarts it, and rows offered before
    and after are all written (the ring kept them)."""
    bundle = load_bundle(small_world.bundle)
    log = LogProcess(tmp_path, roll_s=3600)
    log.start()
    fly = Flywheel(log=log, poll_s=0.01)
    fly.start()
    try:
        for k in range(10):
            observe(fly, bundle, f"a{k}")
        assert fly.flush(roll=True)
        pid = log.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for k in range(10):
            observe(fly, bundle, f"b{k}")  # queued in the ring while no process runs
        until = time.monotonic() + 20
        while log.pid == pid and time.monotonic() < until:
            time.sleep(0.05)
        assert log.pid != pid and log.deaths == 1
        assert fly.flush(roll=True)
        assert fly.metrics()["log_writer_deaths"] == 1
    finally:
        fly.close()
    table = pa.concat_tables([pq.ParquetFile(f).read() for f in files(tmp_path)])
    got = set(table.column("request_id").to_pylist())
    assert got == {f"a{k}" for k in range(10)} | {f"b{k}" for k in range(10)}
    assert hidden(tmp_path) == []


def test_worker_death_leaves_no_orphan(small_world: SmallWorld, tmp_path: Path) -> None:
    """A worker that dies without closing its log: the log process sees the control pipe close,
    writes out what the ring held, completes its file and exits on its own."""
    script = f"""
import os, sys, numpy as np
from pathlib import Path
from ranking.flywheel.hook import Flywheel
from ranking.flywheel.logproc import LogProcess
from ranking.scoring.bundle import load_bundle
bundle = load_bundle(Path({str(small_world.bundle)!r}))
log = LogProcess(Path({str(tmp_path)!r}), roll_s=3600)
log.start()
fly = Flywheel(log=log)
m = np.zeros((3, len(bundle.features)))
rows = np.arange(3, dtype=np.intp)
for k in range(7):
    fly.observe(f"r{{k}}", "u1", bundle, m, ["a", "b", "c"], rows, np.zeros(3), 0, [], None,
                np.zeros(3))
assert log.ring.sync(10.0)  # in the ring (what a killed worker had only queued is lost)
print(log.pid, flush=True)
os._exit(0)  # no close: as if killed
"""
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, timeout=60, check=True
    )
    pid = int(done.stdout.split()[-1])
    until = time.monotonic() + 30
    while time.monotonic() < until:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the log process outlived its worker")
    table = pa.concat_tables([pq.ParquetFile(f).read() for f in files(tmp_path)])
    assert sorted(set(table.column("request_id").to_pylist())) == [f"r{k}" for k in range(7)]
    assert hidden(tmp_path) == []
