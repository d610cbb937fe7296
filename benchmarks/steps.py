"""What a scenario run measured: one `Step` per load run, one `SystemResult` per system.

Plain data with `as_dict` for the JSON report; the runner fills them, the SLO checks and the
report writers read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ranking.loadgen import LoadReport

__all__ = ["Step", "SystemResult"]


@dataclass
class Step:
    """One load run at one rate."""

    rate: float
    report: LoadReport
    passed: bool
    why: str
    server_cpu_ms_per_request: float | None = None
    #: The feature store's own process (redis-server), when the runner started one.
    store_cpu_ms_per_request: float | None = None
    #: Every process on the machine and the kernel: server, client, store and anything else.
    machine_cpu_ms_per_request: float | None = None
    #: The machine's busy CPU seconds per second of the run (2.0 = both cores of two, full).
    machine_busy_cores: float | None = None
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
            "store_cpu_ms_per_request": self.store_cpu_ms_per_request,
            "machine_cpu_ms_per_request": self.machine_cpu_ms_per_request,
            "machine_busy_cores": self.machine_busy_cores,
            "server_stage_mean_us": self.stages_us,
            "profile_share": self.profile,
            "profile_cpu_ms_per_request": self.profile_cpu_ms(),
            "report": self.report.as_dict(),
        }


@dataclass
class SystemResult:
    """Everything measured for one system in one scenario run (or why it was not)."""

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
