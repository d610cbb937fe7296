"""Per-stage CPU of the server under test, from a py-spy sampling profile of one run.

py-spy samples the server's Python stacks (all worker processes) while the load runs; each
sample is put in one bucket by its innermost frame from the service's own package (so numpy or
LightGBM time called from the scorer counts as "score"), else by the library it is in. Bucket
shares times the server's measured CPU per request (from /proc) give the CPU each stage costs
per request. Native threads that never hold a Python frame (gRPC's C-core pollers) are not
sampled; their CPU falls in "unattributed".
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

__all__ = ["BUCKETS", "classify", "start_profile", "summarize_profile"]

#: (substring of a frame's file, bucket), first match on the innermost ranking/ frame wins.
BUCKETS: tuple[tuple[str, str], ...] = (
    ("ranking/features/", "fetch (store, cache, hedging)"),
    ("ranking/core/assemble", "assemble"),
    ("ranking/scoring/", "score"),
    ("ranking/server/converters", "convert (protobuf <-> domain)"),
    ("ranking/limits/", "admission (limiter)"),
    ("ranking/telemetry/", "telemetry"),
    ("ranking/server/", "servicer"),
    ("ranking/core/", "core (deadline, plan, sort)"),
    ("ranking/", "other ranking code"),
)
_LIBRARIES: tuple[tuple[str, str], ...] = (
    ("opentelemetry/", "telemetry"),
    ("grpc/", "gRPC (Python side)"),
    ("redis/", "fetch (store, cache, hedging)"),
    ("asyncio/", "event loop + gRPC core"),
    ("uvloop/", "event loop + gRPC core"),
    # A thread with no Python frame below Thread.run: gRPC's poller, executor idle loops.
    ("threading.py", "threads (gRPC poller, executors)"),
)


def start_profile(pid: int, duration_s: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Start py-spy on `pid` and its subprocesses for `duration_s`; None when py-spy is absent."""
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--rate",
            "250",
            "--duration",
            str(max(1, int(duration_s))),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def classify(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        if "ranking/" in frame and "ranking/api/" not in frame:
            for needle, bucket in BUCKETS:
                if needle in frame:
                    return bucket
    for frame in reversed(frames):
        for needle, bucket in _LIBRARIES:
            if needle in frame:
                return bucket
    return "other"


def summarize_profile(path: Path) -> dict[str, float]:
    """Bucket -> share of the sampled (on-CPU) Python time; {} when there is no profile."""
    counts: Counter[str] = Counter()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[classify(stack)] += int(n)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.most_common()} if total else {}
