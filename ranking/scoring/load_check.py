"""Load a candidate model in a short-lived child process before the server process does.

Defence in depth behind `model_text.parse_model_text`: should a text the parser accepted still
make LightGBM's native loader or its predict abort or crash (a LightGBM bug, a case the
parser does not know), only the child dies and the model is refused; the serving process and
its current model are untouched. The child is a fresh interpreter running a small script that
imports only lightgbm and numpy (no fork of a process holding gRPC threads), loads the text,
predicts a few rows that take every missing-value path, and reports what it loaded.

Cost, measured on the 2-core machine: ~0.35 s per check (0.31-0.35 s of that is starting Python
and importing lightgbm; loading the 500-tree x 63-leaf model takes ~15 ms), paid once per model
load or reload, off the event loop, next to ~0.3 s of QuickScorer build and parity check.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

from ranking.errors import BundleError
from ranking.scoring.model_text import _Model

__all__ = ["check_in_child"]

log = logging.getLogger(__name__)

# Reads the model text on stdin; prints one JSON line. Exit 0: loaded; 3: LightGBM refused it
# (a LightGBMError, its message in "error"); anything else: it crashed.
_CHILD = r"""
import json, sys
import numpy as np
import lightgbm as lgb
text = sys.stdin.buffer.read().decode("utf-8")
try:
    booster = lgb.Booster(model_str=text)
    n = booster.num_feature()
    rows = np.zeros((4, n))
    rows[1] = np.nan
    rows[2] = np.random.default_rng(0).normal(size=n)
    rows[3] = 1e300
    booster.predict(rows, raw_score=True, num_threads=1)
except lgb.basic.LightGBMError as exc:
    print(json.dumps({"error": str(exc)[:500]}))
    sys.exit(3)
print(json.dumps({
    "num_trees": booster.num_trees(),
    "num_features": booster.num_feature(),
    "num_outputs": booster.num_model_per_iteration(),
}))
"""


def check_in_child(model_text: str, model: _Model, *, timeout_s: float = 120.0) -> None:
    """Raise BundleError unless a child process loads `model_text` with LightGBM, predicts with
    it, and sees the trees, features and outputs `model` (its parse) says it has."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=model_text.encode("utf-8"),
            capture_output=True,
            timeout=timeout_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BundleError(
            f"LightGBM did not load the model within {timeout_s:.0f} s in a check process"
        ) from exc
    except OSError as exc:
        raise BundleError("could not start the model check process") from exc
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        log.error(
            "LightGBM crashed (%s) loading a candidate model in a check process: %s",
            name,
            proc.stderr.decode(errors="replace")[-1000:],
        )
        raise BundleError(f"LightGBM crashed ({name}) loading the model in a check process")
    try:
        report = json.loads(proc.stdout.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        report = None
    if proc.returncode == 3 and isinstance(report, dict):
        log.error("LightGBM refused a candidate model: %s", report.get("error"))
        raise BundleError("LightGBM refused the model (details in the server log)")
    if proc.returncode != 0 or not isinstance(report, dict):
        log.error(
            "the model check process failed (exit %s): %s",
            proc.returncode,
            proc.stderr.decode(errors="replace")[-1000:],
        )
        raise BundleError(f"the model check process failed (exit {proc.returncode})")
    want = {
        "num_trees": len(model.trees),
        "num_features": model.num_features,
        "num_outputs": model.num_outputs,
    }
    got = {key: report.get(key) for key in want}
    if got != want:
        raise BundleError(f"LightGBM reads the model differently: {got}, the parser {want}")
