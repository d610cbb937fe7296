"""benchmarks.score_cold: the ensemble it hands both builds is the one QuickScorer serves."""

from __future__ import annotations

import numpy as np
import pytest

import ranking.scoring._rankscorer as rankscorer
from benchmarks.score_cold import ensemble_arrays
from ranking.scoring.quickscorer import QuickScorer
from tests.scoring.conftest import train
from tests.scoring.random_models import random_model, random_rows

pytestmark = pytest.mark.skipif(
    not rankscorer.available_kernels(), reason="the CPU has neither AVX2 nor AVX-512"
)


def test_captured_arrays_rebuild_an_ensemble_that_scores_like_quickscorer() -> None:
    text, thresholds = random_model(np.random.default_rng(7), 12, 80, 31)
    arrays = ensemble_arrays(text)
    assert arrays["num_trees"] == 80 and arrays["num_features"] == 12
    assert isinstance(rankscorer.RankEnsemble, type)  # the capture is undone
    x = random_rows(np.random.default_rng(8), 200, thresholds)
    rebuilt = rankscorer.RankEnsemble(**arrays).predict(x).reshape(-1)
    np.testing.assert_array_equal(rebuilt, QuickScorer.from_model_text(text).score(x))


def test_a_model_the_rank_kernel_cannot_take_is_refused_plainly() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20_000, 2))
    y = np.sin(x[:, 0] * 3) + x[:, 1] + rng.normal(scale=0.05, size=20_000)
    params = {"objective": "regression", "num_leaves": 63, "max_bin": 1023, "min_data_in_leaf": 2}
    text = train(params, x, y, 60)  # more than 255 distinct thresholds on a feature
    with pytest.raises(SystemExit, match="does not take the rank kernel"):
        ensemble_arrays(text)
