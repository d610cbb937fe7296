"""The benchmark world: MLServer is sent exactly the matrix the service would assemble."""

from __future__ import annotations

import numpy as np

from benchmarks.scenario import find_scenario, load_scenario
from benchmarks.world import MatrixBuilder, prepare_world
from ranking.demo.world import CONTEXT_COLUMNS, make_world
from ranking.scoring.bundle import load_bundle


def test_matrix_builder_matches_the_demo_world() -> None:
    spec = load_scenario(find_scenario("smoke")).world  # small; cached after the first build
    bench = prepare_world(spec)
    world = make_world(spec.n_users, spec.n_items, seed=spec.seed)
    sample = world.sample_queries(3, 40, seed=5)
    expected = world.feature_matrix(sample).astype(np.float64).reshape(3, 40, -1)
    builder = MatrixBuilder(bench)
    assert builder.n_features == expected.shape[2] == len(bench.feature_names)
    for q in range(3):
        context = {
            name: float(v)
            for name, v in zip(CONTEXT_COLUMNS, sample.context[q], strict=True)
            if not np.isnan(v)
        }
        got = builder.matrix(
            world.user_ids[int(sample.user_idx[q])],
            [world.item_ids[int(i)] for i in sample.item_idx[q]],
            context,
        )
        np.testing.assert_array_equal(got, expected[q])
    # Unknown entities and absent context take the schema's defaults, as in the service.
    unknown = builder.matrix("u-nobody", ["i-nothing"], {})
    np.testing.assert_array_equal(unknown[0], load_bundle(bench.bundle).defaults())
