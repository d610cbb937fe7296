"""The scorer seam: `Scorer.score(matrix) -> raw scores`, built from a LightGBM model.

Every scorer must give exactly the scores of `lightgbm.Booster.predict(X, raw_score=True)` on
the same float64 matrix; the parity tests hold each one to that.
"""

from __future__ import annotations

from typing import Final, Literal, Protocol, get_args, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["ENGINES", "Engine", "Scorer"]

#: Scoring engines a server can be told to use (RANKING_ENGINE, `--engine`); see
#: `ranking.scoring.engines.build_scorer` for what each means.
Engine = Literal["auto", "quickscorer", "lightgbm"]
ENGINES: Final[tuple[Engine, ...]] = get_args(Engine)


@runtime_checkable
class Scorer(Protocol):
    """Scores rows of a feature matrix already in the model's feature order."""

    #: Engine name reported in logs, metrics and the benchmark ("quickscorer", "lightgbm").
    name: str
    #: Number of model features; `score` takes matrices of shape (n, num_features).
    num_features: int
    #: Outputs per row: 1, or num_class for multiclass models.
    num_outputs: int

    def score(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Raw scores of C-contiguous float64 `matrix` (n, num_features).

        Returns shape (n,) when num_outputs == 1, else (n, num_outputs), like
        `Booster.predict(matrix, raw_score=True)`. Safe to call from several threads at once;
        compiled engines release the GIL while they work.
        """
        ...
