"""The demo world: deterministic, shaped like the reference scenario, and learnable."""

from __future__ import annotations

import hashlib
import time

import lightgbm as lgb
import numpy as np
import pytest

from ranking.demo.world import (
    CONTEXT_COLUMNS,
    ITEM_COLUMNS,
    USER_COLUMNS,
    World,
    example_request,
    make_world,
)
from ranking.train import ndcg_at_k

# sha256 over make_world(200, 1000, seed=0) and one query sample (see `_digest`). When a change
# to the world is intended, update it here and bump CODE_VERSION in ranking/demo/model.py so
# that cached demo bundles are rebuilt.
GOLDEN_DIGEST = "1771f2cb50b787a9550ed1e2048d0eac5523970f7a93be9af871db811c9efbb8"


def _digest(world: World) -> str:
    sample = world.sample_queries(20, 50, seed=7)
    h = hashlib.sha256()
    for part in (world.user_matrix, world.item_matrix, sample.user_idx, sample.item_idx):
        h.update(np.ascontiguousarray(part).tobytes())
    for part in (sample.context, sample.relevance):
        h.update(np.ascontiguousarray(part).tobytes())
    h.update("|".join(world.feature_row_order()).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(n_users=500, n_items=3000, seed=0)


def test_same_seed_gives_identical_bytes() -> None:
    a, b = make_world(300, 2000, seed=3), make_world(300, 2000, seed=3)
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids
    assert _digest(a) == _digest(b)
    ea, eb = example_request(a, seed=1), example_request(b, seed=1)
    assert ea == eb


def test_different_seed_differs() -> None:
    a, b = make_world(300, 2000, seed=3), make_world(300, 2000, seed=4)
    assert a.user_matrix.tobytes() != b.user_matrix.tobytes()
    assert a.item_matrix.tobytes() != b.item_matrix.tobytes()
    sa, sb = a.sample_queries(5, 20, seed=0), a.sample_queries(5, 20, seed=1)
    assert sa.item_idx.tobytes() != sb.item_idx.tobytes()


def test_golden_digest() -> None:
    """Pins the bytes across machines and numpy versions (no BLAS, no transcendental functions)."""
    assert _digest(make_world(200, 1000, seed=0)) == GOLDEN_DIGEST


def test_shapes_names_and_dtypes(world: World) -> None:
    assert len(USER_COLUMNS) == 24 and len(ITEM_COLUMNS) == 32 and len(CONTEXT_COLUMNS) == 8
    order = world.feature_row_order()
    assert len(order) == len(set(order)) == 64
    assert order == USER_COLUMNS + ITEM_COLUMNS + CONTEXT_COLUMNS
    assert all(c.startswith("u_") for c in USER_COLUMNS)
    assert all(c.startswith("i_") for c in ITEM_COLUMNS)
    assert all(c.startswith("c_") for c in CONTEXT_COLUMNS)
    assert "i_popularity" in ITEM_COLUMNS
    assert world.user_matrix.shape == (500, 24) and world.item_matrix.shape == (3000, 32)
    for m in (world.user_matrix, world.item_matrix):
        assert m.dtype == np.float32 and m.flags.c_contiguous
    assert world.user_ids[:3] == ("u0", "u1", "u2") and world.item_ids[-1] == "i2999"
    pop = world.item_matrix[:, ITEM_COLUMNS.index("i_popularity")]
    assert np.all((pop > 0) & (pop < 1))
    assert np.all(np.diff(pop) < 0), "i0 is the most popular item"


def test_missing_values_and_integer_codes(world: World) -> None:
    sample = world.sample_queries(200, 20, seed=0)
    for matrix, columns, name in (
        (world.user_matrix, USER_COLUMNS, "u_age"),
        (world.user_matrix, USER_COLUMNS, "u_pref_0"),
        (world.item_matrix, ITEM_COLUMNS, "i_rating"),
        (sample.context, CONTEXT_COLUMNS, "c_days_since_visit"),
    ):
        rate = np.isnan(matrix[:, columns.index(name)]).mean()
        assert 0.01 < rate < 0.5, name
    for matrix, columns, name, n in (
        (world.user_matrix, USER_COLUMNS, "u_tier", 4),
        (world.item_matrix, ITEM_COLUMNS, "i_category", 12),
        (sample.context, CONTEXT_COLUMNS, "c_device", 3),
        (sample.context, CONTEXT_COLUMNS, "c_hour", 24),
    ):
        values = matrix[:, columns.index(name)]
        assert set(np.unique(values).tolist()) <= set(range(n)), name
        assert len(np.unique(values)) > 1, name


def test_sample_queries(world: World) -> None:
    s = world.sample_queries(30, 200, seed=5)
    assert s.user_idx.shape == (30,) and s.item_idx.shape == (30, 200)
    assert s.context.shape == (30, 8) and s.relevance.shape == (30, 200)
    assert all(len(set(row.tolist())) == 200 for row in s.item_idx)
    assert s.item_idx.min() >= 0 and s.item_idx.max() < world.n_items
    assert set(np.unique(s.relevance).tolist()) == {0, 1, 2, 3, 4}
    x = world.feature_matrix(s)
    assert x.shape == (6000, 64)
    np.testing.assert_array_equal(x[201, :24], world.user_matrix[s.user_idx[1]])
    np.testing.assert_array_equal(x[201, 24:56], world.item_matrix[s.item_idx[1, 1]])
    np.testing.assert_array_equal(x[201, 56:], s.context[1])
    # A world smaller than the candidate count it is asked for still gets distinct candidates.
    tiny = make_world(5, 60, seed=1)
    assert all(len(set(r.tolist())) == 50 for r in tiny.sample_queries(4, 50).item_idx)
    with pytest.raises(ValueError, match="items"):
        tiny.sample_queries(1, 61)


def test_relevance_is_learnable(world: World) -> None:
    """A small LambdaRank model beats both random order and the popularity prior."""
    train, valid = world.sample_queries(150, 100, seed=1), world.sample_queries(60, 100, seed=2)
    params = {"objective": "lambdarank", "num_leaves": 15, "learning_rate": 0.1}
    params |= {"verbosity": -1, "num_threads": 1, "deterministic": True, "force_row_wise": True}
    data = lgb.Dataset(
        world.feature_matrix(train), train.relevance.ravel(), group=train.group_sizes()
    )
    booster = lgb.train(params, data, num_boost_round=30)
    x = world.feature_matrix(valid).astype(np.float64)
    labels, sizes = valid.relevance.ravel(), valid.group_sizes()
    model = ndcg_at_k(booster.predict(x), labels, sizes)
    prior = ndcg_at_k(x[:, world.feature_row_order().index("i_popularity")], labels, sizes)
    rand = ndcg_at_k(np.random.default_rng(0).random(x.shape[0]), labels, sizes)
    assert rand + 0.05 < prior < model - 0.03, (rand, prior, model)


def test_example_request(world: World) -> None:
    req = example_request(world, seed=3)
    assert req.user_id in world.user_ids
    assert len(req.candidate_ids) == len(set(req.candidate_ids)) == 200
    assert set(req.candidate_ids) <= set(world.item_ids)
    assert set(req.context) <= set(CONTEXT_COLUMNS) and "c_hour" in req.context
    assert all(np.isfinite(v) for v in req.context.values())
    assert example_request(world, seed=3) == req != example_request(world, seed=4)


def test_default_world_is_fast() -> None:
    started = time.perf_counter()
    world = make_world()
    elapsed = time.perf_counter() - started
    assert world.user_matrix.shape == (10_000, 24) and world.item_matrix.shape == (50_000, 32)
    assert elapsed < 10, f"make_world() took {elapsed:.1f} s (about 0.3 s when the CPU is free)"
