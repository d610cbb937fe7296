"""Processes the runner starts: the servers under test, each stopped by its own process group.

Every process is started in a new session (its own process group), so that a server which
spawns workers (`ranking serve --workers 2`, MLServer's inference pool) is stopped whole: first
SIGTERM to the group the runner created, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = [
    "ManagedProcess",
    "machine_busy_cpu_s",
    "process_tree_cpu_s",
    "process_tree_pids",
    "wait_ready",
]


class ManagedProcess:
    """A subprocess with its output in a log file, stopped by process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        else:
            # The leader exited; make sure no worker it started lingers in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_ready(
    proc: ManagedProcess,
    target: str,
    *,
    probe: str = "grpc-health",
    timeout_s: float = 120.0,
    oip_model: str = "",
) -> None:
    """Block until the server answers its readiness probe; raise RuntimeError with its log."""
    deadline = time.monotonic() + timeout_s
    channel = grpc.insecure_channel(target)
    try:
        while True:
            if not proc.alive():
                raise RuntimeError(
                    f"{proc.name} exited with {proc.proc.returncode} before it was ready:\n"
                    + proc.tail()
                )
            if _probe(channel, probe, oip_model):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{proc.name} not ready after {timeout_s:g} s on {target}:\n" + proc.tail()
                )
            time.sleep(0.2)
    finally:
        channel.close()


def _probe(channel: grpc.Channel, probe: str, oip_model: str) -> bool:
    try:
        if probe == "grpc-health":
            stub = health_pb2_grpc.HealthStub(channel)
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
        if probe == "oip":
            from benchmarks.baselines.mlserver import MODEL_READY_METHOD, model_ready_request

            call = channel.unary_unary(MODEL_READY_METHOD)
            raw: bytes = call(model_ready_request(oip_model), timeout=1.0)
            return raw == b"\x08\x01"
    except grpc.RpcError:
        return False
    raise ValueError(f"unknown readiness probe {probe!r}")


def _proc_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    """(parent -> children, pid -> CPU seconds) for every process, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # Fields after the command (which may hold spaces) start after the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return children, cpu


def machine_busy_cpu_s() -> float:
    """CPU seconds the machine's cores have been busy since boot, all processes and the kernel
    (/proc/stat: user, nice, system, irq, softirq; not idle, iowait, or steal, the time the
    hypervisor gave to other guests)."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def process_tree_pids(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    children, _ = _proc_table()
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, ()))
    return out


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and all its live descendants (Linux /proc)."""
    children, cpu = _proc_table()
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        total += cpu.get(p, 0.0)
        stack.extend(children.get(p, ()))
    return total
