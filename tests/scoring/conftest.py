"""Small LightGBM models for the scorer tests, trained once per session (a few seconds in all)."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from ranking.scoring.quickscorer import QuickScorer, available_kernels
from tests.paths import LETOR

Matrix = npt.NDArray[np.float64]


def train(
    params: dict[str, Any],
    x: Matrix,
    y: npt.NDArray[Any],
    rounds: int = 20,
    **dataset: Any,
) -> str:
    """Trains a small model and returns its text."""
    base = {"verbose": -1, "num_threads": 1, "seed": 7, "deterministic": True}
    booster = lgb.train({**base, **params}, lgb.Dataset(x, y, **dataset), num_boost_round=rounds)
    return booster.model_to_string()


def reference(model_text: str, x: Matrix) -> Matrix:
    out = lgb.Booster(model_str=model_text).predict(x, raw_score=True, num_threads=1)
    return np.asarray(out, dtype=np.float64)


def assert_parity(model_text: str, x: Matrix) -> None:
    """Every kernel available on this CPU, and the default choice, give exactly LightGBM's raw
    scores. The rank kernels are among them unless the model is outside their reach (then
    `rank_reason` says why)."""
    want = reference(model_text, x)
    scorer = QuickScorer.from_model_text(model_text)
    if not scorer.rank_reason:
        assert set(scorer.kernels) == set(available_kernels())
    np.testing.assert_array_equal(scorer.score(x), want, err_msg="default kernel")
    for name, kernel in scorer.kernels.items():
        got = scorer.score(x, kernel=kernel)
        assert got.shape == want.shape, name
        gap = float(np.max(np.abs(got - want), initial=0.0))
        assert gap <= 1e-9, f"{name}: max abs diff {gap}"
        # In fact bit-exact: same decisions, same summation order.
        np.testing.assert_array_equal(got, want, err_msg=name)


def nasty(rng: np.random.Generator, n: int, f: int, scale: float = 1.0) -> Matrix:
    """Random rows sprinkled with NaN, +-0.0, values LightGBM rounds to zero, and huge values."""
    x = rng.normal(scale=scale, size=(n, f))
    specials = np.array([np.nan, 0.0, -0.0, 1e-40, -1e-40, 1e300, -1e300, np.inf, -np.inf])
    hit = rng.random(x.shape) < 0.25
    x[hit] = rng.choice(specials, size=int(hit.sum()))
    return x


def load_letor() -> tuple[Matrix, npt.NDArray[np.float64], list[int]]:
    rows: list[dict[int, float]] = []
    labels: list[float] = []
    for line in (LETOR / "rank.train").read_text().splitlines():
        parts = line.split()
        labels.append(float(parts[0]))
        rows.append({int(k): float(v) for k, v in (p.split(":") for p in parts[1:])})
    width = max(max(r, default=0) for r in rows) + 1
    x = np.zeros((len(rows), width), dtype=np.float64)
    for i, r in enumerate(rows):
        for k, v in r.items():
            x[i, k] = v
    groups = [int(v) for v in (LETOR / "rank.train.query").read_text().split()]
    return x, np.array(labels), groups
