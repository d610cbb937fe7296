"""QuickScorer gives exactly LightGBM's raw scores, on every kernel this CPU has.

Each model is small (tens of trees) but covers one of LightGBM's decision rules; inputs mix
random values with NaN, +-0.0, 1e-40 (which LightGBM's dense path zeroes), huge and infinite
values, and the probe rows (every threshold, its neighbours, every category).
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from ranking.scoring.quickscorer import QuickScorer, _parse_model
from tests.scoring.conftest import assert_parity, load_letor, nasty, train


def _inputs(text: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Training-like rows, nasty random rows and probe rows, with a row count that leaves a
    partial block for the kernel."""
    rng = np.random.default_rng(seed)
    probe = QuickScorer.from_model_text(text).probe_matrix(301, seed=seed)
    scale = float(np.nanstd(x)) or 1.0
    return np.ascontiguousarray(
        np.vstack([x[:97], nasty(rng, 203, x.shape[1], scale), probe]), dtype=np.float64
    )


def test_letor_lambdarank() -> None:
    x, y, groups = load_letor()
    text = train(
        {"objective": "lambdarank", "num_leaves": 31, "min_data_in_leaf": 5}, x, y, 30, group=groups
    )
    assert_parity(text, x)
    assert_parity(text, _inputs(text, x))
    # Sparse rows: most values are exactly zero.
    assert_parity(text, np.ascontiguousarray(x[::7]))


def test_letor_zero_as_missing() -> None:
    x, y, groups = load_letor()
    text = train(
        {"objective": "lambdarank", "num_leaves": 15, "zero_as_missing": True},
        x,
        y,
        15,
        group=groups,
    )
    assert "decision_type=" in text
    assert_parity(text, _inputs(text, x))


@pytest.fixture(scope="module")
def numeric_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 12))
    y = x[:, 0] * 2 - x[:, 1] + np.sin(x[:, 2] * 3) + rng.normal(scale=0.1, size=2000)
    return x, y


def test_regression(numeric_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = numeric_data
    text = train({"objective": "regression", "num_leaves": 63, "min_data_in_leaf": 3}, x, y, 20)
    assert_parity(text, _inputs(text, x))


def test_binary(numeric_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = numeric_data
    text = train({"objective": "binary", "num_leaves": 31}, x, (y > 0).astype(int), 20)
    assert_parity(text, _inputs(text, x))


def test_multiclass(numeric_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = numeric_data
    labels = np.digitize(y, [-1.0, 0.0, 1.0])
    text = train({"objective": "multiclass", "num_class": 4, "num_leaves": 15}, x, labels, 10)
    scorer = QuickScorer.from_model_text(text)
    assert scorer.num_outputs == 4
    assert scorer.score(x[:5].copy()).shape == (5, 4)
    assert_parity(text, _inputs(text, x))


def test_random_forest_average_output(numeric_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = numeric_data
    params = {
        "objective": "regression",
        "boosting": "rf",
        "bagging_fraction": 0.6,
        "bagging_freq": 1,
        "feature_fraction": 0.8,
        "num_leaves": 31,
    }
    text = train(params, x, y, 15)
    assert "\naverage_output\n" in text
    assert_parity(text, _inputs(text, x))
    # LightGBM's raw scores of a forest are the sum of its trees; only the transformed
    # prediction averages them. QuickScorer follows raw_score=True.
    booster = lgb.Booster(model_str=text)
    rows = np.ascontiguousarray(x[:50])
    np.testing.assert_allclose(
        QuickScorer.from_model_text(text).score(rows) / 15, booster.predict(rows), rtol=1e-12
    )


def test_multiclass_random_forest(numeric_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = numeric_data
    params = {
        "objective": "multiclass",
        "num_class": 3,
        "boosting": "rf",
        "bagging_fraction": 0.5,
        "bagging_freq": 1,
        "num_leaves": 7,
    }
    text = train(params, x, np.digitize(y, [-0.5, 0.5]), 6)
    assert_parity(text, _inputs(text, x))


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({}, id="nan-missing"),
        pytest.param({"zero_as_missing": True}, id="zero-as-missing"),
        pytest.param({"use_missing": False}, id="no-missing"),
    ],
)
def test_missing_values(params: dict[str, object]) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 8))
    y = x[:, 0] + x[:, 1] ** 2 + rng.normal(scale=0.1, size=3000)
    x[rng.random(x.shape) < 0.2] = np.nan
    x[rng.random(x.shape) < 0.2] = 0.0
    # Missingness that carries signal, so default directions matter.
    y[np.isnan(x[:, 2])] += 3.0
    y[x[:, 3] == 0.0] -= 3.0
    text = train({"objective": "regression", "num_leaves": 31, **params}, x, y, 25)
    assert_parity(text, _inputs(text, x))


def test_categorical_features() -> None:
    rng = np.random.default_rng(3)
    n = 4000
    x = rng.normal(size=(n, 6))
    x[:, 0] = rng.integers(0, 40, n)  # bitsets of two words
    x[:, 1] = rng.integers(0, 5, n)
    x[:, 4] = rng.integers(0, 300, n)  # many words
    x[rng.random(n) < 0.1, 0] = np.nan
    effect0 = rng.normal(size=40)
    effect4 = rng.normal(size=300)
    y = effect0[np.nan_to_num(x[:, 0]).astype(int)] + x[:, 1] * 0.5 + effect4[x[:, 4].astype(int)]
    y += x[:, 2] + rng.normal(scale=0.1, size=n)
    params = {
        "objective": "regression",
        "num_leaves": 31,
        "min_data_per_group": 5,
        "cat_smooth": 1.0,
        "max_cat_to_onehot": 4,
        "max_cat_threshold": 64,
    }
    text = train(params, x, y, 25, categorical_feature=[0, 1, 4])
    # The model must really split on categories, with bitsets of more than one 32-bit word
    # (feature 4 has 300 categories), or this test would not test categorical decisions.
    model = _parse_model(text)
    cat_nodes = [
        (tree, n)
        for tree in model.trees
        for n in range(tree.num_leaves - 1)
        if tree.decision_type[n] & 1
    ]
    assert len(cat_nodes) >= 10
    assert {tree.split_feature[n] for tree, n in cat_nodes} >= {0, 4}
    words = [
        tree.cat_boundaries[int(tree.threshold[n]) + 1]
        - tree.cat_boundaries[int(tree.threshold[n])]
        for tree, n in cat_nodes
    ]
    assert max(words) >= 2
    extra = rng.normal(size=(200, 6))
    # Categories: unseen, negative, fractional, huge, NaN, 1e-40 (rounded to category 0).
    extra[:, 0] = rng.choice(
        [-3.0, -0.5, -0.0, 0.0, 1e-40, 2.7, 39.9, 45.0, 1e10, 2.0**31, np.nan], 200
    )
    extra[:, 4] = rng.choice([0.0, 31.0, 32.0, 63.5, 299.0, 500.0, -1.0, np.nan, np.inf], 200)
    assert_parity(text, np.vstack([_inputs(text, x), extra]))


def test_single_leaf_model() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 3))
    text = train({"objective": "regression", "min_data_in_leaf": 80}, x, rng.normal(size=100), 3)
    assert "num_leaves=1\n" in text
    assert_parity(text, _inputs(text, x))


def test_single_leaf_tree_between_others() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 4))
    y = x[:, 0] + rng.normal(scale=0.1, size=500)
    text = train({"objective": "regression", "num_leaves": 7}, x, y, 3)
    stump = train({"objective": "regression", "min_data_in_leaf": 400}, x, y, 1)
    stump_tree = stump[stump.index("Tree=0") : stump.index("end of trees")].replace(
        "Tree=0", "Tree=1"
    )
    start, end = text.index("Tree=1"), text.index("Tree=2")
    mixed = text[:start] + stump_tree + text[end:]
    # Without tree_sizes LightGBM parses the trees one after another.
    mixed = "\n".join(line for line in mixed.split("\n") if not line.startswith("tree_sizes="))
    assert_parity(mixed, _inputs(mixed, x))


def test_exact_threshold_values(numeric_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = numeric_data
    text = train({"objective": "regression", "num_leaves": 15}, x, y, 10)
    scorer = QuickScorer.from_model_text(text)
    # Every row sits exactly on some threshold in every feature, or just next to it.
    assert_parity(text, scorer.probe_matrix(2000, seed=11))


def test_more_trees_than_one_segment() -> None:
    """Over 512 trees the numerical lists are split into tree blocks."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(600, 4))
    y = x[:, 0] + np.sin(x[:, 1] * 2) + rng.normal(scale=0.1, size=600)
    text = train({"objective": "regression", "num_leaves": 4, "learning_rate": 0.01}, x, y, 1100)
    assert "Tree=1099\n" in text
    assert_parity(text, _inputs(text, x))


@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 200, 1000])
def test_row_counts(rows: int, numeric_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = numeric_data
    text = train({"objective": "regression", "num_leaves": 15}, x, y, 5)
    assert_parity(text, nasty(np.random.default_rng(rows), rows, x.shape[1]))


def test_values_lightgbm_rounds_to_zero() -> None:
    """|x| <= 1e-35f reads as 0.0 in LightGBM's dense predict path; a threshold between 0 and
    such a value tells the rule apart from a plain comparison."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(400, 3))
    text = train({"objective": "regression", "num_leaves": 7}, x, x[:, 0] + x[:, 1], 4)
    lines = []
    for line in text.split("\n"):
        if line.startswith("threshold="):
            count = len(line.split("=", 1)[1].split())
            tiny = ["1e-37", "-1e-37", "1.0000000180025095e-35", "-1e-36"]
            line = "threshold=" + " ".join(tiny[i % 4] for i in range(count))
        if not line.startswith("tree_sizes="):
            lines.append(line)
    edited = "\n".join(lines)
    kzero = float(np.float32(1e-35))
    values = [
        0.0,
        -0.0,
        1e-36,
        -1e-36,
        1e-37,
        -1e-37,
        5e-38,
        kzero,
        -kzero,
        np.nextafter(kzero, 1.0),
        np.nextafter(-kzero, -1.0),
        1e-35,
        np.nan,
    ]
    rows = np.array(
        [[a, b, c] for a in values for b in values for c in values[::3]], dtype=np.float64
    )
    assert_parity(edited, rows)
