"""QuickScorer's contract around the parity: refusals, input validation, threads, the protocol."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ranking.errors import BundleError
from ranking.scoring import _quickscorer
from ranking.scoring.quickscorer import QuickScorer, available_kernels, supports
from ranking.scoring.scorer import Scorer
from tests.scoring.conftest import nasty, reference, train


@pytest.fixture(scope="module")
def model_text() -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 10))
    y = x[:, 0] - 2 * x[:, 1] + rng.normal(scale=0.1, size=1500)
    return train({"objective": "regression", "num_leaves": 31}, x, y, 30)


def test_is_a_scorer(model_text: str) -> None:
    scorer = QuickScorer.from_model_text(model_text)
    assert isinstance(scorer, Scorer)
    assert scorer.name == "quickscorer"
    assert scorer.num_features == 10
    assert scorer.num_outputs == 1
    assert scorer.kernel in available_kernels()
    assert supports(model_text) is None


def test_builds_are_memoised_by_model_hash(model_text: str) -> None:
    assert QuickScorer.from_model_text(model_text) is QuickScorer.from_model_text(model_text)


def test_empty_matrix(model_text: str) -> None:
    out = QuickScorer.from_model_text(model_text).score(np.empty((0, 10)))
    assert out.shape == (0,)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.zeros((3, 10), dtype=np.float32), "float64"),
        (np.zeros((3, 10), dtype=np.int64), "float64"),
        (np.zeros(10), "2-D"),
        (np.zeros((2, 3, 10)), "2-D"),
        (np.zeros((3, 9)), "columns"),
        (np.zeros((3, 11)), "columns"),
        (np.asfortranarray(np.zeros((3, 10))), "C-contiguous"),
        (np.zeros((3, 20))[:, ::2], "C-contiguous"),
        ([[0.0] * 10], "numpy"),
        (np.zeros((3, 10), dtype=">f8"), "float64"),
    ],
)
def test_bad_inputs_raise_value_error(model_text: str, matrix: object, message: str) -> None:
    scorer = QuickScorer.from_model_text(model_text)
    with pytest.raises(ValueError, match=message):
        scorer.score(matrix)  # type: ignore[arg-type]


def test_unknown_kernel_is_refused(model_text: str) -> None:
    with pytest.raises(ValueError, match="kernel"):
        QuickScorer.from_model_text(model_text).score(np.zeros((1, 10)), kernel=99)


def test_linear_trees_are_refused() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3))
    text = train({"objective": "regression", "linear_tree": True}, x, x[:, 0] * 3, 3)
    reason = supports(text)
    assert reason is not None
    assert "linear" in reason
    with pytest.raises(BundleError, match="linear"):
        QuickScorer.from_model_text(text)


def test_trees_with_more_than_256_leaves_are_refused() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 5))
    y = np.sin(x[:, 0] * 3) + x[:, 1] * x[:, 2] + rng.normal(scale=0.01, size=4000)
    text = train({"objective": "regression", "num_leaves": 300, "min_data_in_leaf": 2}, x, y, 1)
    assert "num_leaves=300\n" in text
    reason = supports(text)
    assert reason is not None
    assert "256" in reason
    with pytest.raises(BundleError, match="256"):
        QuickScorer.from_model_text(text)


@pytest.mark.parametrize("leaves", [64, 65, 128, 129, 256])
def test_word_boundaries(leaves: int) -> None:
    """Trees of up to 64 leaves use one bitvector word; larger ones several."""
    rng = np.random.default_rng(leaves)
    x = rng.normal(size=(3000, 5))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[:, 3] = rng.integers(0, 50, 3000)
    y = np.sin(np.nan_to_num(x[:, 0]) * 3) + np.nan_to_num(x[:, 1] * x[:, 2])
    y += rng.normal(size=50)[x[:, 3].astype(int)] + rng.normal(scale=0.01, size=3000)
    params = {"objective": "regression", "num_leaves": leaves, "min_data_in_leaf": 2}
    text = train(params, x, y, 3, categorical_feature=[3])
    assert "cat_threshold=" in text
    assert f"num_leaves={leaves}\n" in text
    scorer = QuickScorer.from_model_text(text)
    rows = np.vstack([nasty(rng, 300, 5), scorer.probe_matrix(300)])
    want = reference(text, rows)
    for kernel in available_kernels().values():
        np.testing.assert_array_equal(scorer.score(rows, kernel=kernel), want)


@pytest.mark.parametrize(
    "text",
    ["", "not a model", "tree\nversion=v4\nmax_feature_idx=3\n\nTree=0\nnum_leaves=3\n"],
)
def test_malformed_text_is_refused(text: str) -> None:
    assert supports(text) is not None
    with pytest.raises(BundleError):
        QuickScorer.from_model_text(text)


def test_inconsistent_tree_is_refused(model_text: str) -> None:
    broken = model_text.replace("left_child=", "left_child=5 ", 1)
    assert supports(broken) is not None
    with pytest.raises(BundleError):
        QuickScorer.from_model_text(broken)


def test_kernel_rejects_malformed_arrays() -> None:
    """The C constructor checks indices itself rather than trusting its Python caller."""
    i64, u32, u64 = np.int64, np.uint32, np.uint64
    ok = {
        "num_features": 1,
        "num_trees": 1,
        "num_outputs": 1,
        "words": 1,
        "average_output": False,
        "num_off": np.array([0, 1], i64),
        "num_thr": np.array([np.inf]),
        "num_tree": np.array([0], u32),
        "num_mask": np.array([0], u64),
        "nan_off": np.array([0, 0], i64),
        "nan_tree": np.array([], u32),
        "nan_mask": np.array([], u64),
        "zero_off": np.array([0, 0], i64),
        "zero_tree": np.array([], u32),
        "zero_mask": np.array([], u64),
        "cat_off": np.array([0, 0], i64),
        "cat_tree": np.array([], u32),
        "cat_mask": np.array([], u64),
        "cat_bits_off": np.array([0], i64),
        "cat_bits": np.array([], u32),
        "leaf_value": np.zeros(64),
        "scan_zero": np.zeros(1, np.uint8),
    }
    ensemble = _quickscorer.Ensemble(**ok)
    assert ensemble.predict(np.zeros((2, 1))).tolist() == [[0.0], [0.0]]
    bad = [
        {"num_thr": np.array([1.0])},  # no +inf sentinel
        {"num_tree": np.array([1], u32)},  # tree out of range
        {"num_off": np.array([0, 2], i64)},  # past the end
        {"leaf_value": np.zeros(10)},
        {"nan_off": np.array([0, 1], i64)},
        {"num_outputs": 2},
        {"scan_zero": np.zeros(2, np.uint8)},
        {"words": 0},
        {"words": 2},  # leaf_value too short for two words
    ]
    for change in bad:
        with pytest.raises(ValueError):
            _quickscorer.Ensemble(**{**ok, **change})


def test_concurrent_calls_agree(model_text: str) -> None:
    """Several threads score at once (the GIL is released) and all get the exact answer."""
    scorer = QuickScorer.from_model_text(model_text)
    rows = [nasty(np.random.default_rng(i), 200, 10) for i in range(8)]
    want = [reference(model_text, r) for r in rows]
    barrier = threading.Barrier(4)

    def work(i: int) -> bool:
        barrier.wait()
        return all(
            np.array_equal(scorer.score(rows[j]), want[j])
            for j in range(i, 8, 2)
            for _ in range(20)
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(work, range(4)))


def test_scoring_releases_the_gil(model_text: str) -> None:
    """A Python thread keeps running while another thread is inside the kernel."""
    scorer = QuickScorer.from_model_text(model_text)
    big = nasty(np.random.default_rng(9), 200_000, 10)
    ticks = 0
    done = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        before = ticks
        scorer.score(big)
        during = ticks - before
    finally:
        done.set()
        ticker.join()
    assert during > 1000
