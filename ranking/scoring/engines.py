"""Choosing a scoring engine for a model: `build_scorer(model_text, engine)`.

Engines:
    "quickscorer"  the compiled QuickScorer kernel (exact; ~10x faster than LightGBM here)
    "lightgbm"     `Booster.predict(raw_score=True)`, one thread per call
    "auto"         QuickScorer when it supports the model and matches LightGBM on probe rows
                   (values on and around every threshold, NaN, +-0, 1e-40, huge values);
                   otherwise LightGBM, with the reason logged

Building is cheap (well under a second for 500 trees x 63 leaves), so a hot reload simply
builds again; nothing is cached on disk.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ranking.errors import BundleError
from ranking.scoring.lightgbm_scorer import LightGBMScorer
from ranking.scoring.model_text import parse_model_text
from ranking.scoring.quickscorer import QuickScorer
from ranking.scoring.scorer import ENGINES, Scorer

__all__ = ["ENGINES", "PARITY_TOLERANCE", "build_scorer", "parity_gap"]

logger = logging.getLogger(__name__)

#: Largest |QuickScorer - LightGBM| accepted by the parity check (in practice it is 0.0).
PARITY_TOLERANCE = 1e-9
_PROBE_ROWS = 256


def parity_gap(
    candidate: QuickScorer, reference: LightGBMScorer, num_rows: int = _PROBE_ROWS
) -> float:
    """Largest absolute score difference between the two scorers on the candidate's probe rows
    (NaN counts as infinitely far unless both are NaN)."""
    probe = candidate.probe_matrix(num_rows)
    got, want = candidate.score(probe), reference.score(probe)
    if got.shape != want.shape:
        return float("inf")
    same_nan = np.isnan(got) & np.isnan(want)
    diff = np.where(same_nan, 0.0, np.abs(got - want))
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


def build_scorer(model_text: str, engine: str = "auto") -> Scorer:
    """A scorer for `model_text`; raises BundleError when the model cannot be loaded, or when
    "quickscorer" is forced on a model it cannot score exactly; ValueError for an unknown
    engine."""
    if engine not in ENGINES:
        raise ValueError(f"unknown scoring engine {engine!r}; expected one of {ENGINES}")
    if engine == "lightgbm":
        return LightGBMScorer(model_text)
    parse_model_text(model_text)  # a malformed text is refused here, not "fallen back" on
    started = time.perf_counter()
    try:
        candidate = QuickScorer.from_model_text(model_text)
    except BundleError as exc:
        if engine == "quickscorer":
            raise
        # Unsupported (linear trees, > 256 leaves): the text itself passed the parser above.
        logger.warning("scoring with LightGBM: %s", exc.message)
        return LightGBMScorer(model_text)
    reference = LightGBMScorer(model_text)
    gap = parity_gap(candidate, reference)
    if gap > PARITY_TOLERANCE:
        if engine == "quickscorer":
            raise BundleError(
                f"QuickScorer differs from LightGBM by {gap:.3g} on probe rows; not using it"
            )
        logger.error(
            "scoring with LightGBM: QuickScorer differs from LightGBM by %.3g on probe rows "
            "(a bug; please report it with the model)",
            gap,
        )
        return reference
    logger.info(
        "scoring with QuickScorer (%s kernel, %d trees); built and checked in %.0f ms, "
        "parity gap on %d probe rows: %.3g",
        candidate.kernel,
        candidate.num_trees,
        (time.perf_counter() - started) * 1e3,
        _PROBE_ROWS,
        gap,
    )
    return candidate
