"""Arrival schedules: the intended send time of every request of an open-loop run.

A schedule is computed in full before the run, as offsets in seconds from the run's start, so
the send loop only compares clocks. Latency is measured from these intended times, not from
when the client managed to send (see `_engine`), which is what keeps a stalled server or a
stalled client from hiding slow requests ("coordinated omission").

Several client processes split one schedule's rate between them. Independent Poisson streams
add up to a Poisson stream of the summed rate, so each process draws its own with its own seed;
constant streams are staggered (process k of n starts k/rate later) so that together they are
evenly spaced at the total rate.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Arrivals", "arrival_offsets"]

Arrivals = Literal["poisson", "constant"]


def arrival_offsets(
    *,
    arrivals: Arrivals,
    rate_rps: float,
    duration_s: float,
    max_requests: int | None = None,
    seed: int = 0,
    process_index: int = 0,
    processes: int = 1,
) -> npt.NDArray[np.float64]:
    """Intended send offsets (seconds from start, ascending) for one client process.

    `rate_rps` is the total rate of all `processes`; this process gets `rate_rps / processes`.
    The schedule stops at `duration_s` or after `max_requests` (this process's share), whichever
    comes first.
    """
    if rate_rps <= 0:
        raise ValueError("rate_rps must be > 0")
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    if not 0 <= process_index < processes:
        raise ValueError("process_index must be in [0, processes)")
    own_rate = rate_rps / processes
    expected = own_rate * duration_s
    cap = None if max_requests is None else _share(max_requests, process_index, processes)
    if arrivals == "constant":
        n = int(np.ceil(expected)) + 1
        if cap is not None:
            n = min(n, cap)
        offsets = (np.arange(n, dtype=np.float64) + process_index / processes) / own_rate
    elif arrivals == "poisson":
        rng = np.random.default_rng([seed, process_index])
        # Draw a margin above the mean so one draw almost always covers the duration; top up
        # in the rare case it does not.
        n = int(expected + 6 * np.sqrt(expected) + 16)
        if cap is not None:
            n = min(n, cap)
        gaps = rng.exponential(1.0 / own_rate, size=n)
        offsets = np.cumsum(gaps)
        while offsets.size and offsets[-1] < duration_s and (cap is None or offsets.size < cap):
            more = np.cumsum(rng.exponential(1.0 / own_rate, size=max(16, n // 4)))
            offsets = np.concatenate([offsets, offsets[-1] + more])
            if cap is not None:
                offsets = offsets[:cap]
    else:
        raise ValueError(f"unknown arrivals {arrivals!r}; expected 'poisson' or 'constant'")
    return np.asarray(offsets[offsets < duration_s], dtype=np.float64)


def _share(total: int, index: int, parts: int) -> int:
    """Split `total` into `parts` near-equal integers; the first ones take the remainder."""
    return total // parts + (1 if index < total % parts else 0)
