"""Per-stage CPU of the server under test, from a py-spy sampling profile of one run.

py-spy samples the server's Python stacks (all worker processes) while the load runs; each
sample is put in one bucket by its innermost frame from the service's own package (so numpy or
LightGBM time called from the scorer counts as "score"), else by the library it is in. Bucket
shares times the server's measured CPU per request (from /proc) give the CPU each stage costs
per request. Native threads that never hold a Python frame (gRPC's C-core pollers) are not
sampled, so the split is of the Python-visible CPU; stacks of waiting threads are dropped.
Known limit: in worker processes started with multiprocessing's spawn, py-spy 0.4 often sees no
frame above the event loop's `Runner.run`, so most samples land in "event loop + gRPC core";
per-stage CPU timed by the service itself would be the better source.

py-spy pauses the process for each sample (its non-blocking mode loses most coroutine stacks),
which slows the server a little: the runner profiles in a run of its own, after the measured
ones, and reports no latency from it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

__all__ = ["BUCKETS", "classify", "start_profile", "summarize_profile"]

#: Frames of the process's start-up and supervision, below the event loop: never a stage.
_SKIP = ("ranking/cli.py", "ranking/server/app.py", "ranking/server/workers.py")
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


def start_profile(
    pids: list[int], duration_s: float, out_prefix: Path
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """One py-spy per process (its `--subprocesses` mode loses most samples of spawned
    workers); [] when py-spy is not installed."""
    exe = shutil.which("py-spy")
    if exe is None:
        return []
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    spies = []
    for pid in pids:
        out = out_prefix.with_name(f"{out_prefix.name}-{pid}.txt")
        proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--duration",
                str(max(1, int(duration_s))),
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        spies.append((proc, out))
    return spies


#: Leaf frames of threads that wait rather than work (py-spy does not always see the wait).
_IDLE_LEAVES = (
    "Thread.run (threading.py",
    "_worker (concurrent/futures/thread.py",
    "(multiprocessing/resource_tracker.py",
    "(ranking/server/workers.py",  # the supervisor's poll loop
)


def classify(stack: str) -> str:
    """The bucket of one sampled stack ("idle" for a waiting thread)."""
    frames = stack.split(";")
    if any(needle in frames[-1] for needle in _IDLE_LEAVES):
        return "idle"
    for frame in reversed(frames):
        if (
            "ranking/" in frame
            and "ranking/api/" not in frame
            and not any(k in frame for k in _SKIP)
        ):
            for needle, bucket in BUCKETS:
                if needle in frame:
                    return bucket
    for frame in reversed(frames):
        for needle, bucket in _LIBRARIES:
            if needle in frame:
                return bucket
    return "other"


def summarize_profile(paths: list[Path]) -> dict[str, float]:
    """Bucket -> share of the sampled (on-CPU) Python time over all the processes' profiles;
    {} when there is none."""
    counts: Counter[str] = Counter()
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            stack, _, n = line.rpartition(" ")
            if stack and n.isdigit():
                bucket = classify(stack)
                if bucket != "idle":
                    counts[bucket] += int(n)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.most_common()} if total else {}
