"""The LightGBM scorer: `Booster.predict(raw_score=True)`, the reference and the fallback.

Used when QuickScorer cannot take a model (linear trees, more than 256 leaves) or fails its
parity check, and as the reference every other scorer is held to.

LightGBM's loader trusts its input (a malformed file can abort or crash the process), so the
text is parsed and checked in full by `model_text.parse_model_text` before LightGBM sees it.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from ranking.errors import BundleError
from ranking.scoring.model_text import parse_model_text

__all__ = ["LightGBMScorer", "check_matrix"]


def check_matrix(matrix: object, num_features: int) -> npt.NDArray[np.float64]:
    """Raises ValueError unless `matrix` is a C-contiguous float64 array (n, num_features).

    QuickScorer's kernel checks the same things; this keeps both engines equally strict.
    """
    if not isinstance(matrix, np.ndarray):
        raise ValueError("matrix must be a numpy.ndarray")
    if matrix.dtype != np.float64:
        raise ValueError(f"matrix must have dtype float64, got {matrix.dtype}")
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got {matrix.ndim} dimension(s)")
    if not matrix.flags.c_contiguous:
        raise ValueError("matrix must be C-contiguous and aligned")
    if matrix.shape[1] != num_features:
        raise ValueError(
            f"matrix has {matrix.shape[1]} columns; the model has {num_features} features"
        )
    return matrix


class LightGBMScorer:
    """A `Scorer` calling LightGBM; `num_threads` is LightGBM's per-call OpenMP thread count."""

    name = "lightgbm"

    def __init__(self, model_text: str, *, num_threads: int = 1) -> None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        model = parse_model_text(model_text)  # BundleError unless well-formed: never crash
        try:
            self._booster = lgb.Booster(model_str=model_text)
        except lgb.basic.LightGBMError as exc:
            raise BundleError("LightGBM could not load the model text") from exc
        self.model_hash = model.digest
        self.num_threads = num_threads
        self.num_features: int = self._booster.num_feature()
        self.num_outputs: int = self._booster.num_model_per_iteration()
        self.num_trees: int = self._booster.num_trees()

    def score(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Raw scores of a C-contiguous float64 matrix (n, num_features)."""
        check_matrix(matrix, self.num_features)
        if matrix.shape[0] == 0:
            shape = (0,) if self.num_outputs == 1 else (0, self.num_outputs)
            return np.empty(shape, dtype=np.float64)
        out = self._booster.predict(matrix, raw_score=True, num_threads=self.num_threads)
        return np.asarray(out, dtype=np.float64)

    def __repr__(self) -> str:
        return (
            f"LightGBMScorer(trees={self.num_trees}, features={self.num_features}, "
            f"outputs={self.num_outputs}, model={self.model_hash[:12]})"
        )
