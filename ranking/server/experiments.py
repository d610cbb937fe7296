"""gRPC core experiments for a server process, set before grpc loads.

grpc-core reads `GRPC_EXPERIMENTS` once, when the library is loaded (`import grpc`): measured,
a value set after the import has no effect. So `ranking serve` calls `apply()` with
`Settings.grpc_experiments` before it imports anything that imports grpc, and the worker
processes it spawns inherit the environment.

Why the default turns two experiments off: since grpcio 1.6x the server's listener and its
connections' I/O run on EventEngine, whose own thread pool reads and writes the sockets and then
hands each event to the asyncio poller thread, which hands it to the event loop. With
`-event_engine_listener,-event_engine_for_all_other_endpoints` grpc-core uses its iomgr (epoll)
path, where the poller thread that waits on the completion queue does the I/O itself: one hop
less per event. Measured on this project's 2-core machine (2026-12-01, load generator on the
box, per-thread CPU from /proc):

- floor (an empty RPC with a 200-item answer), 1 process, 500 req/s: 446-464 us of server CPU
  per call with EventEngine (grpc's default), 366-378 us with iomgr (this default);
- `ranking serve`, R200 with Redis, 2 workers, 700 req/s: 1,274-1,322 us per call and p99
  10.3-14.7 ms with EventEngine, 1,201-1,225 us and p99 8.5-9.2 ms with iomgr.

The iomgr path is grpc-core's long-standing one and still built into grpcio 1.85 (the version
pinned here); the experiments exist to roll EventEngine back. When a later grpcio removes them,
grpc-core logs "Unknown experiment" and runs its default: nothing breaks, the saving is gone.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["ENV", "apply", "merged"]

log = logging.getLogger(__name__)

ENV = "GRPC_EXPERIMENTS"


def _entries(value: str) -> list[str]:
    return [e.strip() for e in value.split(",") if e.strip()]


def merged(current: str, ours: str) -> str:
    """`current` (an operator's GRPC_EXPERIMENTS) plus the entries of `ours` it does not name:
    an experiment the operator turned on or off stays as they said."""
    named = {e.lstrip("-") for e in _entries(current)}
    return ",".join(
        [*_entries(current), *(e for e in _entries(ours) if e.lstrip("-") not in named)]
    )


def apply(experiments: str) -> bool:
    """Merge `experiments` into this process's GRPC_EXPERIMENTS (children inherit it).

    Returns False, and logs a warning, when grpc is already loaded in this process: the value
    would only reach processes started later.
    """
    if not _entries(experiments):
        return True
    value = merged(os.environ.get(ENV, ""), experiments)
    os.environ[ENV] = value
    if "grpc" in sys.modules:
        log.warning(
            "grpc was loaded before %s=%s was set: it applies to new processes only", ENV, value
        )
        return False
    return True
