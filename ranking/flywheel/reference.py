"""Reference distributions of a model's features, and the population stability index.

At training time each feature's distribution is summarised as quantile bins (decile edges of
its non-missing values) plus a missing bin, and written beside the model as `reference.json`
(optional: bundles without it stay valid, they just have no drift report). The server and
`ranking drift` count served values into the same bins and compare with

    PSI = sum over bins of (p - q) * ln(p / q)

where p is the served share and q the reference share of a bin (shares below `EPS` are raised
to it, so an empty bin does not make the index infinite). The missing bin takes part, so a
feature that starts arriving missing drifts like one whose values moved. Rules of thumb: below
0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a large one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "EPS",
    "REFERENCE_FILE",
    "Reference",
    "bin_counts",
    "build_reference",
    "load_reference",
    "psi",
    "write_reference",
]

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.json"
EPS = 1e-4
DEFAULT_BINS = 10
_FORMAT = 1

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Reference:
    """Per feature: bin edges (padded with +inf to one width) and reference shares.

    edges: (n_features, n_bins - 1); value x falls in bin #(edges < x), NaN in bin n_bins.
    shares: (n_features, n_bins + 1) reference share of each bin, the last is the missing bin.
    """

    names: tuple[str, ...]
    edges: F64
    shares: F64
    rows: int

    @property
    def n_bins(self) -> int:
        return int(self.edges.shape[1]) + 1

    def missing_rate(self) -> F64:
        return np.asarray(self.shares[:, -1], dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        features = []
        for j, name in enumerate(self.names):
            finite = [float(e) for e in self.edges[j] if math.isfinite(e)]
            features.append(
                {
                    "name": name,
                    "edges": finite,
                    "shares": [float(s) for s in self.shares[j, : len(finite) + 1]],
                    "missing": float(self.shares[j, -1]),
                }
            )
        return {"format": _FORMAT, "rows": self.rows, "bins": self.n_bins, "features": features}

    @staticmethod
    def from_json(data: Any) -> Reference:
        """Parse `to_json` output; raises ValueError naming what is wrong."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("not a reference.json of format 1")
        n_bins = int(data["bins"])
        entries = data["features"]
        edges = np.full((len(entries), n_bins - 1), np.inf)
        shares = np.zeros((len(entries), n_bins + 1))
        names = []
        for j, entry in enumerate(entries):
            e, s = entry["edges"], entry["shares"]
            if len(e) > n_bins - 1 or len(s) != len(e) + 1:
                raise ValueError(f"feature {entry.get('name')!r}: edges and shares do not match")
            names.append(str(entry["name"]))
            edges[j, : len(e)] = e
            shares[j, : len(s)] = s
            shares[j, -1] = float(entry["missing"])
        return Reference(tuple(names), edges, shares, int(data["rows"]))


def bin_counts(matrix: F64, edges: F64) -> I64:
    """Counts (n_features, n_bins + 1) of the rows of `matrix` in each feature's bins.

    One vectorised pass (a comparison per row, feature and edge), cheap enough to run on every
    served batch in the background thread.
    """
    n_features, width = edges.shape
    index = (matrix[:, :, None] > edges[None, :, :]).sum(axis=2)
    index[np.isnan(matrix)] = width + 1
    flat = index + (np.arange(n_features) * (width + 2))[None, :]
    counts = np.bincount(flat.ravel(), minlength=n_features * (width + 2))
    return counts.reshape(n_features, width + 2).astype(np.int64)


def build_reference(
    matrix: F64, names: Sequence[str], bins: int = DEFAULT_BINS, max_rows: int = 200_000
) -> Reference:
    """The reference of a training matrix (rows x features in model order)."""
    if matrix.shape[0] > max_rows:  # quantiles of a seeded sample are as good and bounded
        pick = np.random.default_rng(0).choice(matrix.shape[0], max_rows, replace=False)
        matrix = matrix[np.sort(pick)]
    n, n_features = matrix.shape
    edges = np.full((n_features, bins - 1), np.inf)
    levels = np.linspace(0, 1, bins + 1)[1:-1]
    for j in range(n_features):
        column = matrix[:, j]
        finite = column[~np.isnan(column)]
        if finite.size:
            cuts = np.unique(np.quantile(finite, levels))
            # The top edge equal to the maximum would leave the last bin empty by construction.
            cuts = cuts[cuts < finite.max()]
            edges[j, : cuts.size] = cuts
    counts = bin_counts(matrix, edges)
    shares = counts / max(n, 1)
    return Reference(tuple(names), edges, shares, n)


def psi(counts: npt.NDArray[np.integer[Any]], reference: Reference) -> F64:
    """PSI per feature of served bin counts (n_features, n_bins + 1) against the reference."""
    total = counts.sum(axis=1, keepdims=True)
    p = np.maximum(counts / np.maximum(total, 1), EPS)
    q = np.maximum(reference.shares, EPS)
    out = ((p - q) * np.log(p / q)).sum(axis=1)
    out[total[:, 0] == 0] = np.nan
    return np.asarray(out, dtype=np.float64)


def write_reference(folder: str | Path, reference: Reference) -> Path:
    """Write `reference.json` into a bundle folder (atomically: temp file, rename)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{REFERENCE_FILE}.tmp"
    tmp.write_text(json.dumps(reference.to_json()) + "\n")
    target = out / REFERENCE_FILE
    tmp.replace(target)
    return target


def load_reference(folder: str | Path | None, names: Sequence[str]) -> Reference | None:
    """The bundle's reference for features `names` (model order), or None.

    None when the folder has no reference.json (old bundles stay valid), or when it cannot be
    used (unreadable, or not for these features): that is logged, never raised, since drift
    monitoring must not stop a model from serving.
    """
    if folder is None:
        return None
    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        reference = Reference.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: ignored, cannot be read (%s)", path, type(exc).__name__)
        return None
    if reference.names != tuple(names):
        log.warning("%s: ignored, its features are not the model's", path)
        return None
    return reference
