"""Run benchmark scenarios against the service and its baselines; write the reports.

    python -m benchmarks.run                 # the default scenarios (r200)
    python -m benchmarks.run smoke           # a few seconds, small model
    python -m benchmarks.run r200 --systems ranking,floor --quick

For each scenario: build (or reuse) the world and model, start a Redis when needed, then for
each system in turn start its server as a subprocess, wait on its readiness probe, warm it up,
run the fixed rates and the rate ladder (open loop, Poisson, latency from intended send times),
bisect between the last rate within the budget and the first one over it, and stop it. All
systems run in the same invocation so the ratios between them mean something on a noisy
machine. Reports go to benchmarks/results/: <scenario>.json (every figure), <scenario>.md, and
PNG plots. Exit status 1 when a required SLO of a scenario was missed (or its system under test
would not start), else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.profile import start_profile, summarize_profile
from benchmarks.scenario import Check, Scenario, find_scenario, load_scenario
from benchmarks.servers import (
    ManagedProcess,
    free_port,
    process_tree_cpu_s,
    process_tree_pids,
    start_redis,
    wait_ready,
)
from benchmarks.world import BenchWorld, prepare_world
from ranking.loadgen import LoadConfig, LoadGenError, LoadReport, Payload, RankPayload, run_load

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_SCENARIOS = ("r200",)
CLIENT_BEHIND = "inconclusive, client-limited: "
MLSERVER_VENV = Path(os.environ.get("MLSERVER_VENV", "/tmp/venv-mlserver"))

#: How each system is started. Scenario tables [systems_config.NAME] override any key, and
#: `args` appends to the command.
DEFAULT_SYSTEMS: dict[str, dict[str, Any]] = {
    "ranking": {
        "label": "ranking (ours)",
        "command": [
            "{python}",
            "-m",
            "ranking.cli",
            "serve",
            "--port",
            "{port}",
            "--admin-port",
            "{admin_port}",
            "--bundle",
            "{bundle}",
        ],
        "memory_args": ["--features", "user={user_features}", "--features", "item={item_features}"],
        "redis_args": ["--redis", "{redis_url}"],
        "redis_setup": [
            [
                "{python}",
                "-m",
                "ranking.cli",
                "features",
                "load",
                "--type",
                "user",
                "--file",
                "{user_features}",
                "--redis",
                "{redis_url}",
            ],
            [
                "{python}",
                "-m",
                "ranking.cli",
                "features",
                "load",
                "--type",
                "item",
                "--file",
                "{item_features}",
                "--redis",
                "{redis_url}",
            ],
        ],
        "ready": "grpc-health",
        "stats": True,
        "start_timeout_s": 600,
    },
    "floor": {
        "label": "floor (empty grpc.aio RPC)",
        "command": ["{python}", "-m", "benchmarks.baselines.floor", "--port", "{port}"],
        "ready": "grpc-health",
    },
    "naive": {
        "label": "naive (sync grpc + redis-py + Booster.predict)",
        "needs_redis": True,
        "setup": [
            [
                "{python}",
                "-m",
                "benchmarks.baselines.naive",
                "load",
                "--redis",
                "{naive_redis_url}",
                "--user-features",
                "{user_features}",
                "--item-features",
                "{item_features}",
            ],
        ],
        "command": [
            "{python}",
            "-m",
            "benchmarks.baselines.naive",
            "serve",
            "--port",
            "{port}",
            "--bundle",
            "{bundle}",
            "--redis",
            "{naive_redis_url}",
        ],
        "ready": "grpc-health",
    },
    "mlserver": {
        "label": "MLServer (OIP gRPC, LightGBM runtime, scoring only)",
        "command": [str(MLSERVER_VENV / "bin" / "mlserver"), "start", "{mlserver_dir}"],
        "ready": "oip",
        "payload": "oip",
        "start_timeout_s": 180,
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Step:
    """One load run at one rate."""

    rate: float
    report: LoadReport
    passed: bool
    why: str
    server_cpu_ms_per_request: float | None = None
    stages_us: dict[str, float] = field(default_factory=dict)
    #: py-spy bucket -> share of sampled server CPU (only with --profile).
    profile: dict[str, float] = field(default_factory=dict)

    def profile_cpu_ms(self) -> dict[str, float]:
        cpu = self.server_cpu_ms_per_request or 0.0
        return {k: share * cpu for k, share in self.profile.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "passed": self.passed,
            "why": self.why,
            "server_cpu_ms_per_request": self.server_cpu_ms_per_request,
            "server_stage_mean_us": self.stages_us,
            "profile_share": self.profile,
            "profile_cpu_ms_per_request": self.profile_cpu_ms(),
            "report": self.report.as_dict(),
        }


@dataclass
class SystemResult:
    name: str
    label: str
    status: str = "ok"  # "ok" | "not run" | "failed"
    reason: str = ""
    fixed: dict[float, Step] = field(default_factory=dict)
    ladder: list[Step] = field(default_factory=list)
    max_rps: float | None = None
    max_rps_note: str = ""
    server_info: dict[str, Any] = field(default_factory=dict)
    #: A run of its own under py-spy (--profile); its latency is perturbed and not reported.
    profile_step: Step | None = None

    def step_at(self, rate: float) -> Step | None:
        if rate in self.fixed:
            return self.fixed[rate]
        for s in self.ladder:
            if s.rate == rate:
                return s
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "status": self.status,
            "reason": self.reason,
            "max_rps_within_budget": self.max_rps,
            "max_rps_note": self.max_rps_note,
            "server_info": self.server_info,
            "fixed": {str(k): v.as_dict() for k, v in self.fixed.items()},
            "ladder": [s.as_dict() for s in self.ladder],
            "profile": self.profile_step.as_dict() if self.profile_step else None,
        }


class Runner:
    def __init__(
        self,
        scenario: Scenario,
        *,
        out: Path,
        systems: Sequence[str] | None,
        profile: bool = False,
    ) -> None:
        self.sc = scenario
        self.profile = profile
        self.out = out
        # --systems replaces the scenario's list (and may add systems it does not name).
        self.systems = list(systems) if systems else list(scenario.systems)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{scenario.name.lower()}-"))
        self.logs = out / "logs" / scenario.name.lower()
        self.redis: ManagedProcess | None = None
        self.redis_port = 0
        self.admin_port = 0  # the system under test's admin port (GetStats), per system
        self.stats_target = ""
        self.world: BenchWorld | None = None

    # --- orchestration ---------------------------------------------------------------------

    def run(self) -> list[SystemResult]:
        sc = self.sc
        log(f"scenario {sc.name}: {sc.description}")
        log(f"world {sc.world.key}; systems {', '.join(self.systems)}; work folder {self.workdir}")
        if any(s != "floor" for s in self.systems):
            self.world = prepare_world(sc.world)
        needs_redis = sc.store == "redis" or any(
            self._spec(s).get("needs_redis") for s in self.systems
        )
        results = []
        try:
            if needs_redis:
                self.redis, self.redis_port = start_redis(self.logs)
                log(f"redis-server pid {self.redis.pid} on 127.0.0.1:{self.redis_port}")
            for name in self.systems:
                results.append(self._run_system(name))
        finally:
            if self.redis is not None:
                self.redis.stop()
        return results

    def _spec(self, name: str) -> dict[str, Any]:
        spec = dict(DEFAULT_SYSTEMS.get(name, {}))
        spec.update(self.sc.system_overrides.get(name, {}))
        if "command" not in spec:
            raise ValueError(f"system {name!r} has no command (add [systems_config.{name}])")
        return spec

    def _placeholders(self, port: int) -> dict[str, str]:
        values = self.world.placeholders() if self.world is not None else {}
        values.update(
            python=sys.executable,
            port=str(port),
            admin_port=str(self.admin_port),
            redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
            naive_redis_url=f"redis://127.0.0.1:{self.redis_port}/1",
            mlserver_dir=str(self.workdir / "mlserver"),
            candidates=str(self.sc.mix.candidates.max),
        )
        return values

    def _run_system(self, name: str) -> SystemResult:
        spec = self._spec(name)
        result = SystemResult(name, spec.get("label", name))
        port = free_port()
        # GetStats is on the admin port (loopback), never on the serving port.
        self.admin_port = free_port()
        self.stats_target = f"127.0.0.1:{self.admin_port}"
        values = self._placeholders(port)

        def fmt(argv: Sequence[str]) -> list[str]:
            return [str(a).format(**values) for a in argv]

        if name == "mlserver":
            reason = self._prepare_mlserver(port)
            if reason:
                result.status, result.reason = "not run", reason
                log(f"{name}: not run: {reason}")
                return result
        command = fmt(spec["command"])
        setup = list(spec.get("setup", []))
        if name == "ranking" or "memory_args" in spec:
            if self.sc.store == "redis":
                command += fmt(spec.get("redis_args", []))
                setup += spec.get("redis_setup", [])
            else:
                command += fmt(spec.get("memory_args", []))
        command += fmt(spec.get("args", []))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        for i, argv in enumerate(setup):
            log(f"{name}: setup {' '.join(fmt(argv))}")
            with ManagedProcess(
                f"{name}-setup-{i}",
                fmt(argv),
                self.logs / f"{name}-setup-{i}.log",
                env=env,
                cwd=REPO,
            ) as p:
                code = p.proc.wait(600)
                if code != 0:
                    result.status = "failed"
                    result.reason = f"setup exited {code}: {_last_line(p.tail(5))}"
                    log(f"{name}: {result.reason}")
                    return result
        log(f"{name}: starting {' '.join(command)}")
        server = ManagedProcess(name, command, self.logs / f"{name}.log", env=env, cwd=REPO)
        target = f"127.0.0.1:{port}"
        try:
            try:
                wait_ready(
                    server,
                    target,
                    probe=spec.get("ready", "grpc-health"),
                    timeout_s=float(spec.get("start_timeout_s", 120)),
                    oip_model="ranker",
                )
            except RuntimeError as exc:
                result.status = "failed"
                result.reason = f"did not start: {_last_line(str(exc))} (log: {server.log_path})"
                log(f"{name}: failed to start: {exc}")
                return result
            log(f"{name}: ready (pid {server.pid})")
            payload = self._payload(spec)
            self._measure(result, server, target, payload, bool(spec.get("stats")))
        finally:
            server.stop()
            log(f"{name}: stopped")
        return result

    def _prepare_mlserver(self, port: int) -> str:
        """Create the MLServer venv when missing (bounded) and its folder; "" or a reason."""
        from benchmarks.baselines.mlserver import write_mlserver_folder

        exe = MLSERVER_VENV / "bin" / "mlserver"
        if not exe.exists():
            log(f"mlserver: creating {MLSERVER_VENV} (benchmarks/setup_mlserver.sh)")
            try:
                proc = subprocess.run(
                    ["bash", str(REPO / "benchmarks" / "setup_mlserver.sh"), str(MLSERVER_VENV)],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return "installing mlserver took over 10 minutes"
            if proc.returncode != 0 or not exe.exists():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                return "could not install mlserver: " + " | ".join(tail)
        assert self.world is not None
        write_mlserver_folder(self.workdir / "mlserver", self.world, port, free_port(), free_port())
        return ""

    def _payload(self, spec: dict[str, Any]) -> Payload:
        rank = RankPayload(self.sc.mix)
        if spec.get("payload") == "oip":
            from benchmarks.baselines.mlserver import OipPayload

            assert self.world is not None
            return OipPayload(rank, self.world)
        return rank

    # --- measuring ---------------------------------------------------------------------------

    def _config(
        self, target: str, payload: Payload, rate: float, duration_s: float, warmup_s: float
    ) -> LoadConfig:
        plan = self.sc.load
        processes = max(
            1, min(plan.max_client_processes, int(-(-rate // plan.rps_per_client_process)))
        )
        return LoadConfig(
            target=target,
            payload=payload,
            rate_rps=rate,
            arrivals=plan.arrivals,  # type: ignore[arg-type]
            duration_s=duration_s,
            warmup_s=warmup_s,
            deadline_ms=plan.deadline_ms,
            processes=processes,
            channels_per_process=plan.channels_per_process,
            max_send_lag_p99_ms=plan.max_send_lag_p99_ms,
            seed=int(rate),
        )

    def _one(
        self,
        target: str,
        payload: Payload,
        rate: float,
        server: ManagedProcess,
        stats: bool,
        profile_to: Path | None = None,
    ) -> Step:
        plan = self.sc.load
        attempts = 1 + plan.retries_when_client_behind
        step: Step | None = None
        for attempt in range(attempts):
            _wait_idle(server)
            before_stats = get_stats(self.stats_target) if stats else None
            cpu0 = process_tree_cpu_s(server.pid)
            cfg = self._config(target, payload, rate, plan.duration_s, plan.warmup_s)
            spies = (
                start_profile(process_tree_pids(server.pid), plan.duration_s, profile_to)
                if profile_to
                else []
            )
            report = run_async(run_load(cfg))
            cpu = process_tree_cpu_s(server.pid) - cpu0
            for spy, _ in spies:
                try:
                    spy.wait(plan.duration_s + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
            after_stats = get_stats(self.stats_target) if stats else None
            passed, why = self._judge(report)
            sent = report.sent + report.warmup_sent
            step = Step(
                rate,
                report,
                passed,
                why,
                1000.0 * cpu / sent if sent else None,
                _stage_delta(before_stats, after_stats),
            )
            if spies:
                step.profile = summarize_profile([out for _, out in spies])
            if not why.startswith(CLIENT_BEHIND) or attempt == attempts - 1:
                break
            log(f"    {why}; retrying")
        assert step is not None
        return step

    def _judge(self, report: LoadReport) -> tuple[bool, str]:
        sc = self.sc
        if not report.valid:
            # The client could not keep to its schedule, so the latency figures are not clean.
            # If even the service time (timed from the actual send, so free of the client's
            # lag) is over budget, or errors are, the rate fails on the server's account: the
            # machine is saturated. Otherwise the run is inconclusive: client-limited.
            lag = "; ".join(report.problems)
            if report.error_ratio > sc.max_error_ratio:
                return False, f"errors {report.error_ratio:.2%} (and {lag})"
            if report.service_time.p99_ms > sc.budget_p99_ms:
                return False, (
                    f"service time p99 {report.service_time.p99_ms:.2f} ms > "
                    f"{sc.budget_p99_ms:g} ms (machine saturated; {lag})"
                )
            return False, CLIENT_BEHIND + lag
        if report.error_ratio > sc.max_error_ratio:
            return False, f"errors {report.error_ratio:.2%} > {sc.max_error_ratio:.2%}"
        if report.partial_ratio > sc.max_partial_ratio:
            return False, f"partial answers {report.partial_ratio:.2%} > {sc.max_partial_ratio:.2%}"
        if not report.latency.p99_ms <= sc.budget_p99_ms:
            return False, f"p99 {report.latency.p99_ms:.2f} ms > {sc.budget_p99_ms:g} ms"
        return True, f"p99 {report.latency.p99_ms:.2f} ms <= {sc.budget_p99_ms:g} ms"

    def _measure(
        self,
        result: SystemResult,
        server: ManagedProcess,
        target: str,
        payload: Payload,
        stats: bool,
    ) -> None:
        plan = self.sc.load
        try:
            # Warm-up: connections, caches, lazy imports, the allocator. Not recorded.
            run_async(
                run_load(
                    self._config(target, payload, plan.server_warmup_rps, plan.server_warmup_s, 0.0)
                )
            )
            if stats:
                info = get_stats(self.stats_target)
                if info:
                    result.server_info = {
                        k: info[k] for k in ("engine", "workers", "model_version") if k in info
                    }

            def at(rate: float, label: str) -> Step:
                cached = result.step_at(rate)
                if cached is not None:
                    return cached
                log(f"  {result.name} @ {rate:g} req/s ({label}) ...")
                step = self._one(target, payload, rate, server, stats)
                r = step.report
                log(
                    f"    p50 {r.latency.p50_ms:.2f}  p99 {r.latency.p99_ms:.2f}  p99.9 "
                    f"{r.latency.p999_ms:.2f} ms; achieved {r.achieved_rps:.0f} req/s; "
                    f"{'PASS' if step.passed else 'FAIL'}: {step.why}"
                )
                return step

            for rate in plan.fixed_rates:
                result.fixed[rate] = at(rate, "fixed rate")
            best, worst = search_max_rate(
                lambda r, i: _append(result.ladder, at(r, f"ladder {i}")),
                plan.ladder,
                plan.bisect_steps,
            )
            result.max_rps = best
            if self.profile and result.name == self.sc.under_test and plan.fixed_rates:
                rate = plan.fixed_rates[0]
                log(f"  {result.name} @ {rate:g} req/s under py-spy (CPU per stage) ...")
                result.profile_step = self._one(
                    target,
                    payload,
                    rate,
                    server,
                    stats,
                    self.logs / f"{result.name}-{rate:g}rps.pyspy",
                )
                if not result.profile_step.profile:
                    log("    no profile (is py-spy installed? pip install py-spy)")
            if worst is None:
                result.max_rps_note = "every ladder rate passed: the maximum is higher"
            elif worst.why.startswith(CLIENT_BEHIND):
                result.max_rps_note = f"client-limited at {worst.rate:g} req/s"
        except (LoadGenError, OSError) as exc:
            result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
            log(f"{result.name}: {result.reason}")
            if not server.alive():
                log(server.tail())


def run_async(coro: Coroutine[Any, Any, LoadReport]) -> LoadReport:
    """Run one load run in a fresh event loop (uvloop when installed: less client CPU)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.run(coro)
    result: LoadReport = uvloop.run(coro)
    return result


def _wait_idle(server: ManagedProcess, timeout_s: float = 30.0) -> None:
    """Wait until the server's process tree uses under 10 % of a core: a server that fell
    behind in the previous run may still be working through calls its clients gave up on."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cpu0 = process_tree_cpu_s(server.pid)
        time.sleep(0.25)
        if process_tree_cpu_s(server.pid) - cpu0 < 0.025:
            return
    log(f"    {server.name} still busy after {timeout_s:g} s; measuring anyway")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _append(steps: list[Step], step: Step) -> Step:
    if step not in steps:
        steps.append(step)
    return step


def search_max_rate(
    run_at: Callable[[float, int], Step], ladder: Sequence[float], bisect_steps: int
) -> tuple[float | None, Step | None]:
    """Climb the ladder until a rate fails, then bisect between the last pass and the first
    failure. Returns (highest passing rate or None, the lowest failing step or None)."""
    best: float | None = None
    fail: Step | None = None
    i = 0
    for rate in ladder:
        i += 1
        step = run_at(rate, i)
        if step.passed:
            best = rate
        else:
            fail = step
            break
    low = best if best is not None else 0.0
    for _ in range(bisect_steps):
        if fail is None or fail.rate - low < max(10.0, 0.05 * fail.rate):
            break
        mid = round((low + fail.rate) / 2.0, -1) or (low + fail.rate) / 2.0
        i += 1
        step = run_at(mid, i)
        if step.passed:
            best = low = mid
        else:
            fail = step
    return best, fail


def get_stats(target: str) -> dict[str, Any] | None:
    """The service's GetStats (counters and stage means) from its admin port `target`, or
    None when it has none."""
    import grpc

    try:
        from ranking.api.v1 import admin_pb2, admin_pb2_grpc
    except ImportError:
        return None
    with grpc.insecure_channel(target) as channel:
        try:
            resp = admin_pb2_grpc.AdminServiceStub(channel).GetStats(
                admin_pb2.GetStatsRequest(), timeout=2.0
            )
        except grpc.RpcError:
            return None
    return {
        "counters": dict(resp.counters),
        # Wall time per stage, and the event loop thread's CPU time per stage ("<stage> cpu").
        "stage_mean_us": {
            **dict(resp.stage_mean_us),
            **{f"{k} cpu": v for k, v in resp.stage_cpu_mean_us.items()},
        },
        "engine": resp.engine,
        "workers": resp.workers,
        "model_version": resp.model_version,
    }


def _stage_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]:
    """Mean server time per OK request in each stage over one run, from two GetStats."""
    if not before or not after:
        return {}
    n0 = before["counters"].get("ok", 0.0)
    n1 = after["counters"].get("ok", 0.0)
    if n1 <= n0:
        return {}
    out = {}
    for stage, mean1 in after["stage_mean_us"].items():
        mean0 = before["stage_mean_us"].get(stage, 0.0)
        out[stage] = (mean1 * n1 - mean0 * n0) / (n1 - n0)
    return out


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import grpc
    import lightgbm

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "lightgbm": lightgbm.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def evaluate(scenario: Scenario, results: list[SystemResult]) -> list[dict[str, Any]]:
    """Each check as {kind, check, met, measured}; `met` is None for a check on a system that
    this invocation was asked not to run (--systems)."""
    by_name = {r.name: r for r in results}
    out = []
    for kind, checks in (("require", scenario.require), ("target", scenario.targets)):
        for check in checks:
            if check.system not in by_name:
                out.append(
                    {
                        "kind": kind,
                        "check": check.describe(),
                        "met": None,
                        "measured": "skipped: system not run in this invocation",
                    }
                )
                continue
            out.append({"kind": kind, **_evaluate(check, by_name, scenario)})
    return out


def _evaluate(check: Check, by_name: dict[str, SystemResult], sc: Scenario) -> dict[str, Any]:
    res: dict[str, Any] = {"check": check.describe(), "met": False, "measured": ""}
    system = by_name.get(check.system)
    if system is None or system.status != "ok":
        res["measured"] = "not measured" + (
            f" ({system.status}: {system.reason[:200]})" if system else ""
        )
        return res
    met = True
    measured = []
    if check.at_rps is not None and check.p99_ms is not None:
        step = system.step_at(check.at_rps)
        if step is None:
            met = False
            measured.append(f"no run at {check.at_rps:g} req/s")
        else:
            r = step.report
            ok = (
                r.valid
                and r.latency.p99_ms <= check.p99_ms
                and r.error_ratio <= sc.max_error_ratio
                and r.partial_ratio <= sc.max_partial_ratio
            )
            met &= ok
            measured.append(
                f"p99 {r.latency.p99_ms:.2f} ms at {check.at_rps:g} req/s"
                + ("" if r.valid else " (client fell behind: does not count)")
            )
    if check.min_max_rps is not None:
        best = system.max_rps or 0.0
        met &= best >= check.min_max_rps
        measured.append(f"max {best:g} req/s within p99 <= {sc.budget_p99_ms:g} ms")
    res["met"] = bool(met)
    res["measured"] = "; ".join(measured)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenarios", nargs="*", help="names in benchmarks/scenarios/ or TOML paths")
    p.add_argument("--systems", help="comma-separated subset of the scenario's systems")
    p.add_argument("--quick", action="store_true", help="3 s runs, no bisection (a try-out)")
    p.add_argument("--duration", type=float, help="override every run's duration (s)")
    p.add_argument("--out", type=Path, default=RESULTS, help="report folder")
    p.add_argument("--strict", action="store_true", help="missed targets fail too")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the system under test during the first fixed rate: CPU per stage",
    )
    args = p.parse_args(argv)
    from benchmarks.report import write_reports

    systems = args.systems.split(",") if args.systems else None
    code = 0
    for name in args.scenarios or DEFAULT_SCENARIOS:
        scenario = load_scenario(find_scenario(name))
        if args.quick:
            scenario = scenario.quick()
        if args.duration:
            scenario = scenario.quick(args.duration)
        started = dt.datetime.now(dt.UTC)
        machine = machine_info()
        results = Runner(scenario, out=args.out, systems=systems, profile=args.profile).run()
        checks = evaluate(scenario, results)
        paths = write_reports(
            scenario, results, checks, machine, started, args.out, plots=not args.no_plots
        )
        for c in checks:
            verdict = {True: "MET", False: "MISSED", None: "SKIPPED"}[c["met"]]
            log(f"{c['kind']}: {c['check']}: {verdict} ({c['measured']})")
            if c["met"] is False and (c["kind"] == "require" or args.strict):
                code = 1
        under_test = next((r for r in results if r.name == scenario.under_test), None)
        if under_test is not None and under_test.status != "ok":
            code = 1
        log("reports: " + ", ".join(str(x) for x in paths))
    return code


if __name__ == "__main__":
    sys.exit(main())
