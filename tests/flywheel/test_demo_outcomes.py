"""The demo's outcome generator grades served rows from the world's hidden preference."""

from __future__ import annotations

import numpy as np

from ranking.demo.world import make_world


def test_grade_follows_the_hidden_preference() -> None:
    world = make_world(n_users=300, n_items=2000)
    sample = world.sample_queries(60, 50, seed=3)
    grades = world.grade(sample.user_idx, sample.item_idx, sample.context, seed=1)
    assert grades.shape == sample.relevance.shape and grades.dtype == np.int8
    assert set(np.unique(grades).tolist()) <= {0, 1, 2, 3, 4}
    again = world.grade(sample.user_idx, sample.item_idx, sample.context, seed=1)
    np.testing.assert_array_equal(grades, again)  # deterministic for a seed
    # Same utility, fresh noise: strongly related to the world's own labels, not equal.
    r = np.corrcoef(grades.ravel().astype(float), sample.relevance.ravel().astype(float))[0, 1]
    assert 0.5 < r < 0.99, r
    # Row by row (one candidate per row) grades exactly like the batch: what `outcomes` does.
    flat = world.grade(
        np.repeat(sample.user_idx, 50), sample.item_idx.reshape(-1, 1),
        np.repeat(sample.context, 50, axis=0), seed=1,
    )  # fmt: skip
    np.testing.assert_array_equal(flat[:, 0], grades.ravel())
