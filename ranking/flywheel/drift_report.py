"""`ranking drift --log DIR --bundle BUNDLE`: the served distribution against the reference.

Counts the features of the rows the bundle's model served (`--all-versions`: every logged
row of the bundle's features) into the bundle's reference bins and prints, per feature, the
population stability index and the missing rate served and at training time, largest PSI
first. Exit status: 0 when every PSI is
at most the threshold, 1 when one is above it, 2 when the report cannot be made (no
reference.json in the bundle, no log rows for its features).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ranking.errors import BundleError
from ranking.flywheel.drift import FeatureDrift, drift_report
from ranking.flywheel.reference import bin_counts, load_reference
from ranking.scoring.bundle import load_bundle
from ranking.train import TrainDataError

__all__ = ["drift_command", "log_drift"]


def log_drift(log_dir: Path, bundle_dir: Path, all_versions: bool = False) -> list[FeatureDrift]:
    """Per-feature drift of a log folder against a bundle's reference; raises ValueError.

    Counts the rows the bundle's own model served (its `model_version`): what it has met since
    it went live against what it was trained on. `all_versions` counts every logged row.
    """
    import pyarrow.compute as pc

    from ranking.flywheel.train_log import read_log

    bundle = load_bundle(bundle_dir)
    reference = load_reference(bundle_dir, bundle.feature_names)
    if reference is None:
        raise ValueError(f"{bundle_dir}: no usable reference.json (retrain to record one)")
    served = read_log(log_dir)
    where = {name: j for j, name in enumerate(served.feature_names)}
    missing = [n for n in bundle.feature_names if n not in where]
    if missing:
        raise ValueError(f"{log_dir}: the newest log files lack features {missing[:5]}")
    table = served.table
    if not all_versions:
        table = table.filter(pc.equal(table.column("model_version"), bundle.version))
        if table.num_rows == 0:
            raise ValueError(
                f"{log_dir}: no rows served by model {bundle.version} "
                "(--all-versions compares every logged row)"
            )
    matrix = served.matrix(table)[:, [where[n] for n in bundle.feature_names]]
    counts = np.zeros((len(reference.names), reference.n_bins + 1), dtype=np.int64)
    for start in range(0, matrix.shape[0], 100_000):  # bounded memory for the comparisons
        counts += bin_counts(matrix[start : start + 100_000], reference.edges)
    return drift_report(counts, reference)


def drift_command(
    log_dir: Path, bundle_dir: Path, threshold: float = 0.2, all_versions: bool = False
) -> int:
    """Print the report; the exit status says whether any feature drifted past `threshold`."""
    try:
        report = log_drift(log_dir, bundle_dir, all_versions)
    except (ValueError, BundleError, TrainDataError) as exc:
        message = exc.message if isinstance(exc, BundleError) else str(exc)
        print(f"drift: {message}", file=sys.stderr)
        return 2
    report.sort(key=lambda f: -np.nan_to_num(f.psi, nan=-1.0))
    print(f"{'feature':<24} {'PSI':>8} {'missing':>8} {'ref miss':>8} {'rows':>10}")
    for f in report:
        flag = "  DRIFT" if f.psi > threshold else ""
        print(
            f"{f.name:<24} {f.psi:8.4f} {f.missing_rate:8.3f} "
            f"{f.reference_missing_rate:8.3f} {f.rows:10d}{flag}"
        )
    drifted = [f.name for f in report if f.psi > threshold]
    if drifted:
        print(f"{len(drifted)} features above PSI {threshold}: {', '.join(drifted[:10])}")
        return 1
    print(f"no feature above PSI {threshold}")
    return 0
