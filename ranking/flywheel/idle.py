"""How much of the machine is idle: the shadow model only uses CPU that nobody else wants.

A shadow score costs what a live score costs. On a small machine the live p99 rises well
before the CPUs are all busy (calls queue behind each other and behind the load generator or
the neighbours), so a per-worker CPU budget alone let a shadow at sample 1.0 push R200's p99
over its budget at 500 req/s (`ranking/flywheel/README.md`). `IdleMeter` reads the kernel's
CPU counters (`/proc/stat`: every process on the machine, not only ours) every `every_s` on
the flywheel's thread and keeps the idle share of the last interval; the hook skips the shadow
while it is below `RANKING_SHADOW_MIN_IDLE` (counted as `shadow_skipped_idle`).

Where /proc/stat cannot be read (not Linux) the meter reports the machine as idle, and only
the other bounds apply. In a container with a CPU quota /proc/stat shows the host's CPUs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["IdleMeter", "read_proc_stat"]


def read_proc_stat(path: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(idle + iowait ticks, all ticks) over every CPU since boot, or None when unreadable."""
    try:
        with open(path, "rb") as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != b"cpu":
        return None
    ticks = [int(v) for v in first[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    # guest and guest_nice (fields 9 and 10) are already counted in user and nice.
    return idle, sum(ticks[:8])


class IdleMeter:
    """The idle share (0..1) of the machine's CPUs over the last interval."""

    def __init__(
        self,
        *,
        every_s: float = 0.1,
        read: Callable[[], tuple[int, int] | None] = read_proc_stat,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_s = every_s
        self._read = read
        self._clock = clock
        self._last = read()
        self._at = clock()
        #: The idle share of the last completed interval (1.0 until one is measured).
        self.idle = 1.0

    def tick(self) -> None:
        """Take a new reading when `every_s` has passed (call it often; it is cheap when not)."""
        now = self._clock()
        if now - self._at < self.every_s:
            return
        reading = self._read()
        self._at = now
        if reading is None or self._last is None:
            self._last = reading
            return
        d_idle, d_all = reading[0] - self._last[0], reading[1] - self._last[1]
        self._last = reading
        if d_all > 0:
            self.idle = min(1.0, max(0.0, d_idle / d_all))
