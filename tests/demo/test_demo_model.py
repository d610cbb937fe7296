"""The cached demo bundle: trained once, valid, reused, and safe to build from two processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

import ranking.demo.model as demo_model
from ranking.demo.model import PRIOR, build_demo_bundle, demo_bundle_name
from ranking.demo.world import make_world
from ranking.scoring.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[2]
# One thread: on a busy shared machine OpenMP threads spinning against each other can make
# a tiny build ten times slower.
SMALL = {"trees": 5, "leaves": 7, "n_users": 300, "n_items": 2000, "num_threads": 1}


@pytest.fixture(autouse=True)
def few_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train on 40 requests (8,000 rows) instead of 300: the recipe is the same, only faster."""
    monkeypatch.setattr(demo_model, "TRAIN_QUERIES", 40)
    monkeypatch.setattr(demo_model, "VALID_QUERIES", 10)


def test_build_then_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = build_demo_bundle(tmp_path, progress=False, **SMALL)
    assert path == tmp_path / demo_bundle_name(5, 7, 300, 2000) == tmp_path / "demo-5x7-300x2000-v1"
    bundle = load_bundle(path)
    world = make_world(300, 2000, seed=demo_model.DEMO_SEED)
    assert bundle.feature_names == world.feature_row_order()
    assert [f.source for f in bundle.features] == ["user"] * 24 + ["item"] * 32 + ["context"] * 8
    assert all(np.isnan(f.default) for f in bundle.features)
    assert bundle.prior == PRIOR
    assert re.fullmatch(r"demo-5x7-[0-9a-f]{8}", bundle.version)
    # Every tree really has `leaves` leaves.
    assert re.findall(r"^num_leaves=(\d+)$", bundle.model_text, re.M) == ["7"] * 5
    booster = lgb.Booster(model_str=bundle.model_text)
    sample = world.sample_queries(2, 200, seed=9)
    assert booster.predict(world.feature_matrix(sample).astype(np.float64)).shape == (400,)

    mtime = (path / "model.txt").stat().st_mtime_ns

    def no_training(*args: object) -> None:
        raise AssertionError("the cached bundle should have been reused")

    monkeypatch.setattr(demo_model, "_train_into", no_training)
    assert build_demo_bundle(tmp_path, progress=False, **SMALL) == path
    assert (path / "model.txt").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{path.name}.lock", path.name]


def test_progress_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_demo_bundle(tmp_path, progress=True, **SMALL)
    out, err = capsys.readouterr()
    assert out == ""
    assert "training demo model 5x7" in err and "5/5" in err
    assert re.search(r"NDCG@10 0\.\d{4} on 10 held-out requests", err)


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_then_fail(folder: Path, *args: object) -> None:
        (folder / "schema.json").write_text("{}")
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(demo_model, "_train_into", half_then_fail)
    with pytest.raises(RuntimeError, match="mid-build"):
        build_demo_bundle(tmp_path, progress=False, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == [".demo-5x7-300x2000-v1.lock"]


def test_incomplete_folder_is_rebuilt(tmp_path: Path) -> None:
    stale = tmp_path / demo_bundle_name(5, 7, 300, 2000)
    stale.mkdir()
    (stale / "schema.json").write_text("{}")
    assert load_bundle(build_demo_bundle(tmp_path, progress=False, **SMALL)).prior == PRIOR


def test_concurrent_builds_train_once(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import logging, sys, time
        from pathlib import Path
        import ranking.demo.model as m
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        m.TRAIN_QUERIES, m.VALID_QUERIES = 40, 10
        train = m._train_into
        def slow_train(*args):  # hold the lock long enough for the other process to arrive
            time.sleep(1.5)
            train(*args)
        m._train_into = slow_train
        print(m.build_demo_bundle(Path(sys.argv[1]), progress=False, **{SMALL!r}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    paths = {out.strip() for out, _ in results}
    assert paths == {str(tmp_path / "demo-5x7-300x2000-v1")}
    logs = "".join(err for _, err in results)
    assert logs.count("building demo bundle") == 1, logs
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".demo-5x7-300x2000-v1.lock",
        "demo-5x7-300x2000-v1",
    ]
    load_bundle(paths.pop())
