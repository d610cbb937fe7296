"""Engine choice: QuickScorer when it is exact, LightGBM otherwise, with the reason logged."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ranking.errors import BundleError
from ranking.scoring import engines
from ranking.scoring.engines import build_scorer, parity_gap
from ranking.scoring.lightgbm_scorer import LightGBMScorer
from ranking.scoring.quickscorer import QuickScorer
from ranking.scoring.scorer import Scorer
from tests.scoring.conftest import nasty, reference, train


@pytest.fixture(scope="module")
def model_text() -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 6))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = np.nan_to_num(x[:, 0]) + rng.normal(scale=0.1, size=1000)
    return train({"objective": "regression", "num_leaves": 15}, x, y, 10)


@pytest.fixture(scope="module")
def linear_text() -> str:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3))
    return train({"objective": "regression", "linear_tree": True}, x, x[:, 0], 3)


def test_auto_picks_quickscorer(model_text: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ranking.scoring.engines"):
        scorer = build_scorer(model_text)
    assert isinstance(scorer, QuickScorer)
    assert "parity gap" in caplog.text


def test_auto_falls_back_with_a_reason(linear_text: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ranking.scoring.engines"):
        scorer = build_scorer(linear_text, "auto")
    assert isinstance(scorer, LightGBMScorer)
    assert "linear" in caplog.text
    rows = nasty(np.random.default_rng(2), 50, 3)
    np.testing.assert_array_equal(scorer.score(rows), reference(linear_text, rows))


def test_auto_falls_back_when_parity_fails(
    model_text: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engines, "parity_gap", lambda candidate, reference: 0.5)
    with caplog.at_level(logging.ERROR, logger="ranking.scoring.engines"):
        scorer = build_scorer(model_text)
    assert isinstance(scorer, LightGBMScorer)
    assert "differs" in caplog.text
    with pytest.raises(BundleError, match="differs"):
        build_scorer(model_text, "quickscorer")


def test_forced_engines(model_text: str, linear_text: str) -> None:
    assert isinstance(build_scorer(model_text, "lightgbm"), LightGBMScorer)
    assert isinstance(build_scorer(model_text, "quickscorer"), QuickScorer)
    assert isinstance(build_scorer(linear_text, "lightgbm"), LightGBMScorer)
    with pytest.raises(BundleError, match="linear"):
        build_scorer(linear_text, "quickscorer")


def test_unknown_engine(model_text: str) -> None:
    with pytest.raises(ValueError, match="unknown scoring engine"):
        build_scorer(model_text, "xgboost")


def test_unloadable_model_is_a_bundle_error() -> None:
    with pytest.raises(BundleError):
        build_scorer("tree\nthis is not a model\n")
    with pytest.raises(BundleError):
        build_scorer("nonsense", "lightgbm")


def test_parity_gap_is_zero(model_text: str) -> None:
    assert parity_gap(QuickScorer.from_model_text(model_text), LightGBMScorer(model_text)) == 0.0


def test_lightgbm_scorer_contract(model_text: str) -> None:
    scorer = LightGBMScorer(model_text)
    assert isinstance(scorer, Scorer)
    assert (scorer.name, scorer.num_features, scorer.num_outputs) == ("lightgbm", 6, 1)
    assert scorer.num_threads == 1
    assert scorer.score(np.empty((0, 6))).shape == (0,)
    rows = nasty(np.random.default_rng(3), 20, 6)
    np.testing.assert_array_equal(
        scorer.score(rows), QuickScorer.from_model_text(model_text).score(rows)
    )
    for bad in (np.zeros((2, 6), np.float32), np.zeros((2, 5)), np.zeros(6), np.zeros((6, 2)).T):
        with pytest.raises(ValueError):
            scorer.score(bad)
    with pytest.raises(ValueError):
        LightGBMScorer(model_text, num_threads=0)


def test_multiclass_shapes() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 4))
    text = train(
        {"objective": "multiclass", "num_class": 3}, x, np.digitize(x[:, 0], [-0.5, 0.5]), 3
    )
    for engine in ("lightgbm", "quickscorer"):
        scorer = build_scorer(text, engine)
        assert scorer.num_outputs == 3
        assert scorer.score(x[:7].copy()).shape == (7, 3)
        assert scorer.score(np.empty((0, 4))).shape == (0, 3)


def test_a_load_hashes_the_model_text_once(
    model_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle hashes the text when it is loaded; the scorers reuse that digest."""
    import hashlib

    from ranking.scoring.bundle import parse_bundle

    schema = {"features": [{"name": f"Column_{i}", "source": "item"} for i in range(6)]}
    calls: list[int] = []
    real = hashlib.sha256

    def counting(data: bytes = b"") -> hashlib._Hash:
        calls.append(len(data))
        return real(data)

    text = model_text + "\n"  # not memoised by an earlier test
    monkeypatch.setattr(hashlib, "sha256", counting)
    bundle = parse_bundle(text, schema)
    for engine in ("auto", "lightgbm"):
        scorer = build_scorer(bundle.model_text, engine, model_hash=bundle.model_hash)
        assert scorer.model_hash == bundle.model_hash  # type: ignore[attr-defined]
    assert len(calls) == 1


def test_parity_check_covers_every_default_kernel(model_text: str) -> None:
    scorer = QuickScorer.from_model_text(model_text)
    assert scorer.kernels[scorer.kernel] in scorer.default_kernels
    assert scorer.kernels[scorer.small_kernel] in scorer.default_kernels
