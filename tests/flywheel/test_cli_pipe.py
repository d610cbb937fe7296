"""`ranking drift ... | head -1`: a reader that goes away ends the command quietly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ranking.flywheel.logwriter import LogRecord, LogWriter, log_schema
from ranking.flywheel.reference import build_reference, write_reference
from ranking.scoring.bundle import load_bundle
from tests.conftest import SmallWorld

REPO = Path(__file__).resolve().parents[2]


def drift_world(small_world: SmallWorld, tmp_path: Path) -> tuple[Path, Path]:
    """A bundle with a reference and a log of rows it served."""
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(small_world.bundle, bundle_dir)
    bundle = load_bundle(bundle_dir)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, len(bundle.features)))
    write_reference(bundle_dir, build_reference(x, bundle.feature_names))
    writer = LogWriter(tmp_path / "log")
    schema = log_schema(bundle)
    records = [
        LogRecord(
            time.time(),
            f"r{k}",
            "u1",
            schema,
            x[k * 10 : k * 10 + 10] + 2.0,
            [f"i{j}" for j in range(10)],
            np.zeros(10),
            0,
            [],
        )
        for k in range(50)
    ]
    writer.write(records)
    writer.close()
    return tmp_path / "log", bundle_dir


def drift(log_dir: Path, bundle_dir: Path, stdout: int) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "ranking.cli", "drift", "--log", str(log_dir), "--bundle",
           str(bundle_dir)]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, timeout=120)


def test_drift_into_a_closed_pipe_exits_quietly(small_world: SmallWorld, tmp_path: Path) -> None:
    log_dir, bundle_dir = drift_world(small_world, tmp_path)
    # Open: the report, exit 1 (every feature shifted by 2 standard deviations).
    r, w = os.pipe()
    done = drift(log_dir, bundle_dir, w)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read().decode()
    assert done.returncode == 1, done.stderr
    assert report.startswith("feature") and "above PSI" in report
    # The reader is gone before the first write (what `| head -1` does to a longer report).
    r, w = os.pipe()
    os.close(r)
    done = drift(log_dir, bundle_dir, w)
    os.close(w)
    assert done.returncode == 128 + signal.SIGPIPE
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr
