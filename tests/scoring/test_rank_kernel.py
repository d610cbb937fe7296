"""The rank kernel (64 documents per pass, rank-indexed thresholds) against LightGBM.

Property tests over random model texts (tests/scoring/random_models.py) and random rows hold
every kernel this CPU runs, and the rank kernel with tiny tree blocks (many blocks, every
boundary), to `np.array_equal` with `Booster.predict(raw_score=True)`. The rest covers what the
property test does not reach by chance: every CPU kernel present, batch sizes around the 64-row
pass, the fallback for features with more than 255 thresholds, and the constructor's checks.

Memory safety: build both extensions with sanitizers into a copy of the tree and run these tests
there (Python itself is not instrumented, hence the preload and no leak check):

    INC="-I$(python -c 'import numpy; print(numpy.get_include())') \
         -I$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    for m in _rankscorer _quickscorer; do
      gcc -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -std=c11 \
        -fno-math-errno -fPIC -shared $INC ranking/scoring/$m.c \
        -o COPY/ranking/scoring/$m.cpython-311-x86_64-linux-gnu.so
    done
    cd COPY && ASAN_OPTIONS=detect_leaks=0 \
      LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
      python -m pytest -q -p no:cacheprovider tests/scoring
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ranking.scoring import _rankscorer, rank_build
from ranking.scoring.quickscorer import (
    RANK_KERNEL_BASE,
    QuickScorer,
    _leaf_order,
    _parse_model,
    available_kernels,
)
from tests.scoring.conftest import assert_parity, nasty, reference, train
from tests.scoring.random_models import random_model, random_rows


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_every_kernel_this_cpu_has_is_offered() -> None:
    """The parity tests run `QuickScorer.kernels`; this makes sure that list is not short of
    what the CPU can run (a detection bug would otherwise skip a kernel silently)."""
    flags = _cpu_flags() if Path("/proc/cpuinfo").exists() else set()
    expected = {"scalar"}
    if "sse2" in flags:
        expected.add("sse2")
    if "avx2" in flags:
        expected |= {"avx2", "rank-avx2"}
    if {"avx512f", "avx512bw"} <= flags:
        expected |= {"avx512", "rank-avx512"}
    assert expected <= set(available_kernels())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    text = train({"objective": "regression", "num_leaves": 15}, x, x[:, 0], 5)
    scorer = QuickScorer.from_model_text(text)
    assert set(scorer.kernels) == set(available_kernels())
    assert scorer.rank_reason == ""
    if "rank-avx512" in expected:
        assert scorer.kernel == "rank-avx512"


def _check_all(text: str, x: np.ndarray, block_bytes: int) -> None:
    want = reference(text, x)
    scorer = QuickScorer.from_model_text(text)
    for name, kernel in scorer.kernels.items():
        got = scorer.score(x, kernel=kernel).reshape(want.shape)
        np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(scorer.score(x).reshape(want.shape), want, err_msg="auto")
    # The same model cut into tree blocks of block_bytes (down to one tree per block).
    model = _parse_model(text)
    small, reason = rank_build.build_rank(
        model, [_leaf_order(t) for t in model.trees], block_bytes=block_bytes
    )
    assert small is not None, reason
    for name, kernel in _rankscorer.available_kernels().items():
        got = small.predict(x, kernel).reshape(want.shape)
        np.testing.assert_array_equal(got, want, err_msg=f"{name}, blocks of {block_bytes} B")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
    # No "explain" phase: it imports libcst, which warns (an error under filterwarnings).
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_features=st.integers(1, 8),
    num_trees=st.integers(1, 12),
    max_leaves=st.sampled_from([1, 2, 5, 8, 9, 33, 64, 65, 130, 256]),
    num_class=st.sampled_from([1, 1, 3]),
    rows=st.integers(1, 150),
    block_bytes=st.sampled_from([64, 256, 4096]),
)
def test_random_models_and_rows(
    seed: int,
    num_features: int,
    num_trees: int,
    max_leaves: int,
    num_class: int,
    rows: int,
    block_bytes: int,
) -> None:
    rng = np.random.default_rng(seed)
    text, thresholds = random_model(rng, num_features, num_trees, max_leaves, num_class)
    _check_all(text, random_rows(rng, rows, thresholds), block_bytes)


@pytest.fixture(scope="module")
def wide_model() -> tuple[str, list[list[float]]]:
    """More trees than one tree block holds (32 KiB = 64 trees of 63 leaves), every feature
    shared by many trees."""
    return random_model(np.random.default_rng(42), 16, 300, 63)


@pytest.mark.parametrize("rows", [1, 7, 15, 16, 17, 50, 63, 64, 65, 79, 80, 128, 200, 1000])
def test_batch_sizes_around_the_64_row_pass(
    rows: int, wide_model: tuple[str, list[list[float]]]
) -> None:
    text, thresholds = wide_model
    x = random_rows(np.random.default_rng(rows), rows, thresholds)
    assert_parity(text, x)
    np.testing.assert_array_equal(QuickScorer.from_model_text(text).score(x), reference(text, x))


def test_rows_from_training_data_with_missing_values() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4000, 10))
    x[rng.random(x.shape) < 0.15] = np.nan
    x[rng.random(x.shape) < 0.15] = 0.0
    y = np.nan_to_num(x[:, 0]) + np.isnan(x[:, 1]) - (x[:, 2] == 0) + rng.normal(size=4000) * 0.1
    for params in ({}, {"zero_as_missing": True}, {"use_missing": False}):
        text = train({"objective": "regression", "num_leaves": 63, **params}, x, y, 40)
        assert_parity(text, np.ascontiguousarray(x[:333]))
        assert_parity(text, nasty(rng, 257, 10))


def test_more_than_255_thresholds_falls_back_to_quickscorer() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20_000, 2))
    y = np.sin(x[:, 0] * 3) + x[:, 1] + rng.normal(scale=0.05, size=20_000)
    text = train(
        {"objective": "regression", "num_leaves": 63, "max_bin": 1023, "min_data_in_leaf": 2},
        x,
        y,
        60,
    )
    scorer = QuickScorer.from_model_text(text)
    assert "distinct thresholds" in scorer.rank_reason
    assert all(kid < RANK_KERNEL_BASE for kid in scorer.kernels.values())
    assert not scorer.kernel.startswith("rank")
    with pytest.raises(ValueError, match="not available for this model"):
        scorer.score(np.zeros((2, 2)), kernel=RANK_KERNEL_BASE)
    rows = nasty(rng, 200, 2)
    np.testing.assert_array_equal(scorer.score(rows), reference(text, rows))


@pytest.fixture(scope="module")
def good_arrays() -> dict[str, Any]:
    """The constructor arguments of a small valid rank ensemble with categorical nodes and
    NaN / zero lists, captured from build_rank."""
    text, _ = random_model(np.random.default_rng(7), 4, 6, 20)
    model = _parse_model(text)
    captured: dict[str, Any] = {}
    real = _rankscorer.RankEnsemble

    class Capture:
        def __init__(self, **kwargs: Any) -> None:
            captured.update(kwargs)

    rank_build._rankscorer.RankEnsemble = Capture  # type: ignore[misc]
    try:
        rank_build.build_rank(model, [_leaf_order(t) for t in model.trees])
    finally:
        rank_build._rankscorer.RankEnsemble = real  # type: ignore[misc]
    real(**captured)  # valid as captured
    return captured


def _bump_last(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b[-1] += 1
    return b


@pytest.mark.parametrize(
    ("field", "mutate", "message"),
    [
        ("rec_vec", lambda a: a + 10_000, "outside its tree block"),
        (
            "nan_vec",
            lambda a: a + 10_000 if len(a) else np.array([10_000], np.uint32),
            "RankEnsemble",
        ),
        ("seg_off", lambda a: a[::-1].copy(), "entries from 0"),
        ("seg_off", _bump_last, "entries from 0"),
        ("rec_rank", lambda a: np.full_like(a, 255), "ascending threshold ranks"),
        ("thr", lambda a: a[::-1].copy(), "strictly ascending"),
        ("thr", lambda a: np.full_like(a, np.nan), "strictly ascending"),
        ("leaf_value", lambda a: a[:-1].copy(), "8 slots"),
        ("tree_vec", lambda a: np.zeros_like(a), "1 to 32 byte vectors"),
        ("block_tree", lambda a: np.array([0, 0, a[-1]], np.int64), "must hold a tree"),
        ("cat_bits_off", _bump_last, "cat_bits_off"),
        ("rec_clear", lambda a: a[:-1].copy(), "same length"),
        ("scan_zero", lambda a: a[:-1].copy(), "scan_zero"),
        ("rec_vec", lambda a: a.astype(np.float64), "right dtype"),
    ],
)
def test_constructor_rejects_inconsistent_arrays(
    good_arrays: dict[str, Any], field: str, mutate: Any, message: str
) -> None:
    kwargs = dict(good_arrays)
    kwargs[field] = mutate(np.asarray(kwargs[field]))
    with pytest.raises(ValueError, match=message):
        _rankscorer.RankEnsemble(**kwargs)


def test_unknown_rank_kernel_is_refused(good_arrays: dict[str, Any]) -> None:
    ensemble = _rankscorer.RankEnsemble(**good_arrays)
    with pytest.raises(ValueError, match="not available"):
        ensemble.predict(np.zeros((1, 4)), 7)
    with pytest.raises(ValueError, match="columns"):
        ensemble.predict(np.zeros((1, 5)))
    assert ensemble.predict(np.zeros((0, 4))).shape == (0, 1)


def test_rank_kernel_of_a_lambdarank_model_matches_booster() -> None:
    """A model shaped like the service's (64 features, 63 leaves), trained as LambdaRank."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3000, 64))
    x[rng.random(x.shape) < 0.05] = np.nan
    y = np.clip(np.round(np.nan_to_num(x[:, :8]).sum(axis=1) / 3 + 2), 0, 4).astype(int)
    booster = lgb.train(
        {"objective": "lambdarank", "num_leaves": 63, "verbose": -1, "num_threads": 1, "seed": 1},
        lgb.Dataset(x, y, group=[100] * 30),
        num_boost_round=40,
    )
    text = booster.model_to_string()
    assert_parity(text, np.ascontiguousarray(x[:200]))
