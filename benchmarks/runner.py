"""Orchestration of one scenario: start each system, measure it at each rate, stop it.

For each system in turn: build its command from `benchmarks.systems`, run its setup steps,
start it as a subprocess, wait on its readiness probe, warm it up, run the fixed rates and the
rate ladder (open loop), bisect between the last rate within the budget and the first one over
it, and stop it. Verdicts come from `benchmarks.slo`, results are `benchmarks.steps` types.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, log, run_async
from benchmarks.ports import free_port
from benchmarks.profile import start_profile, summarize_profile
from benchmarks.redis_server import RedisServer, start_redis
from benchmarks.scenario import Scenario
from benchmarks.servers import (
    ManagedProcess,
    machine_busy_cpu_s,
    process_tree_cpu_s,
    process_tree_pids,
    wait_ready,
)
from benchmarks.slo import CLIENT_BEHIND, judge
from benchmarks.stats import get_stats, stage_delta
from benchmarks.steps import Step, SystemResult
from benchmarks.systems import MLSERVER_VENV, system_spec
from benchmarks.world import BenchWorld, prepare_world
from ranking.loadgen import LoadConfig, LoadGenError, Payload, RankPayload, run_load

__all__ = ["REPO", "Runner", "search_max_rate"]


class Runner:
    """Runs one scenario: every system in turn, started, measured at each rate, stopped."""

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
        self.redis: RedisServer | None = None
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
                self.redis = start_redis(self.workdir, log_path=self.logs / "redis.log")
                self.redis_port = self.redis.port
                log(f"redis-server pid {self.redis.pid} on 127.0.0.1:{self.redis_port}")
            for name in self.systems:
                results.append(self._run_system(name))
        finally:
            if self.redis is not None:
                self.redis.stop()
        return results

    def _spec(self, name: str) -> dict[str, Any]:
        return system_spec(name, self.sc.system_overrides)

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
        env.update(spec.get("env", {}))
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
        """MLServer's venv (installed when missing, bounded) and folder; "" or a reason."""
        from benchmarks.baselines.mlserver import install_mlserver, write_mlserver_folder

        if not (MLSERVER_VENV / "bin" / "mlserver").exists():
            log(f"mlserver: creating {MLSERVER_VENV} (benchmarks/setup_mlserver.sh)")
        reason = install_mlserver(MLSERVER_VENV)
        if reason:
            return reason
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
            store_pid = self.redis.pid if self.redis is not None else None
            cpu0 = process_tree_cpu_s(server.pid)
            store0 = process_tree_cpu_s(store_pid) if store_pid else 0.0
            machine0, wall0 = machine_busy_cpu_s(), time.monotonic()
            cfg = self._config(target, payload, rate, plan.duration_s, plan.warmup_s)
            spies = (
                start_profile(process_tree_pids(server.pid), plan.duration_s, profile_to)
                if profile_to
                else []
            )
            report = run_async(run_load(cfg))
            cpu = process_tree_cpu_s(server.pid) - cpu0
            store = process_tree_cpu_s(store_pid) - store0 if store_pid else None
            machine = machine_busy_cpu_s() - machine0
            wall = time.monotonic() - wall0
            for spy, _ in spies:
                try:
                    spy.wait(plan.duration_s + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
            after_stats = get_stats(self.stats_target) if stats else None
            passed, why = judge(self.sc, report)
            sent = report.sent + report.warmup_sent
            step = Step(
                rate,
                report,
                passed,
                why,
                server_cpu_ms_per_request=1000.0 * cpu / sent if sent else None,
                store_cpu_ms_per_request=(
                    1000.0 * store / sent if sent and store is not None else None
                ),
                machine_cpu_ms_per_request=1000.0 * machine / sent if sent else None,
                machine_busy_cores=machine / wall if wall > 0 else None,
                stages_us=stage_delta(before_stats, after_stats),
            )
            if spies:
                step.profile = summarize_profile([out for _, out in spies])
            if not why.startswith(CLIENT_BEHIND) or attempt == attempts - 1:
                break
            log(f"    {why}; retrying")
        assert step is not None
        return step

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
