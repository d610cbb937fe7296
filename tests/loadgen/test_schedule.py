"""The arrival schedule: rates, spacing, caps, and splitting across client processes."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.loadgen import arrival_offsets


def test_poisson_has_the_target_mean_rate_and_exponential_gaps() -> None:
    rate, duration = 1000.0, 20.0
    offsets = arrival_offsets(arrivals="poisson", rate_rps=rate, duration_s=duration, seed=3)
    n = offsets.size
    expected = rate * duration
    assert abs(n - expected) < 4 * np.sqrt(expected)  # Poisson count: sd = sqrt(mean)
    gaps = np.diff(offsets)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    # Exponential gaps: coefficient of variation 1 (a constant schedule has 0).
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)
    assert np.all(gaps >= 0) and offsets[-1] < duration


def test_poisson_is_deterministic_per_seed_and_process() -> None:
    a = arrival_offsets(arrivals="poisson", rate_rps=100, duration_s=2, seed=1)
    b = arrival_offsets(arrivals="poisson", rate_rps=100, duration_s=2, seed=1)
    c = arrival_offsets(arrivals="poisson", rate_rps=100, duration_s=2, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_constant_is_evenly_spaced() -> None:
    offsets = arrival_offsets(arrivals="constant", rate_rps=200, duration_s=1.0)
    assert offsets.size == 200
    assert np.allclose(np.diff(offsets), 1 / 200)


def test_processes_split_the_rate_and_interleave() -> None:
    parts = [
        arrival_offsets(
            arrivals="constant", rate_rps=300, duration_s=1.0, process_index=k, processes=3
        )
        for k in range(3)
    ]
    merged = np.sort(np.concatenate(parts))
    assert merged.size == 300
    assert np.allclose(np.diff(merged), 1 / 300)
    poisson = [
        arrival_offsets(
            arrivals="poisson", rate_rps=2000, duration_s=5, seed=9, process_index=k, processes=2
        )
        for k in range(2)
    ]
    assert not np.array_equal(poisson[0], poisson[1])
    assert sum(p.size for p in poisson) == pytest.approx(10_000, abs=4 * 100)


def test_max_requests_caps_the_schedule() -> None:
    offsets = arrival_offsets(arrivals="poisson", rate_rps=1000, duration_s=10, max_requests=50)
    assert offsets.size == 50
    split = [
        arrival_offsets(
            arrivals="constant",
            rate_rps=1000,
            duration_s=10,
            max_requests=7,
            process_index=k,
            processes=2,
        ).size
        for k in range(2)
    ]
    assert split == [4, 3]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_rps": 0, "duration_s": 1},
        {"rate_rps": 10, "duration_s": 0},
        {"rate_rps": 10, "duration_s": 1, "process_index": 2, "processes": 2},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        arrival_offsets(arrivals="poisson", **kwargs)  # type: ignore[arg-type]
