"""The log writer and the hook's queue: rolling, atomic completion, drops, drain on close."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ranking.flywheel.hook import Flywheel
from ranking.flywheel.logwriter import LogWriter
from ranking.flywheel.served import Served
from ranking.scoring.bundle import Bundle, load_bundle, parse_bundle
from tests.conftest import SmallWorld


def served(bundle: Bundle, ts: float, k: int, n: int = 4) -> Served:
    matrix = np.arange(n * len(bundle.features), dtype=np.float64).reshape(n, -1) + k
    rows = np.arange(n, dtype=np.intp)[::-1].copy()
    scores = [float(v) for v in range(n, 0, -1)]
    return Served(
        ts, f"r{k}", "u1", bundle, matrix, [f"i{j}" for j in range(n)], rows, scores, 0, [],
        None, np.asarray(scores), True, False,
    )  # fmt: skip


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


def test_full_queue_drops_and_counts(small_world: SmallWorld, tmp_path: Path) -> None:
    bundle = load_bundle(small_world.bundle)
    fly = Flywheel(writer=LogWriter(tmp_path), queue_size=3)  # thread not started: nothing drains
    s = served(bundle, time.time(), 0)
    for k in range(5):
        rid = fly.observe(
            f"r{k}", "u1", bundle, s.matrix, s.ids, s.rows, s.scores, 0, [], None, s.scored
        )
        assert rid == f"r{k}"
    assert fly.queued == 3 and fly.dropped == 2
    fly.close()  # without a thread: drains and completes the file itself
    table = pq.ParquetFile(files(tmp_path)[0]).read()
    assert table.column("request_id").unique().to_pylist() == ["r0", "r1", "r2"]


def test_close_drains_everything_queued(small_world: SmallWorld, tmp_path: Path) -> None:
    bundle = load_bundle(small_world.bundle)
    fly = Flywheel(writer=LogWriter(tmp_path, roll_s=3600), queue_size=10_000, poll_s=1.0)
    fly.start()
    s = served(bundle, time.time(), 0)
    ids = [
        fly.observe("", "u1", bundle, s.matrix, s.ids, s.rows, s.scores, 0, [], None, s.scored)
        for _ in range(3000)
    ]
    assert len(set(ids)) == 3000 and all(ids)  # generated ids, unique
    fly.close()
    assert fly.dropped == 0
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files(tmp_path))
    assert rows == 3000 * 4 and hidden(tmp_path) == []
