"""The scenario's service-level checks: one verdict per load run, and the SLO checks of a run.

A run passes when it is valid (the client kept to its schedule), its p99 from the intended send
time is within the budget, and errors and answers cut short stay under their ceilings. A run
whose client fell behind is "inconclusive, client-limited" unless the server's own service time
already fails it.
"""

from __future__ import annotations

from typing import Any

from benchmarks.scenario import Check, Scenario
from benchmarks.steps import SystemResult
from ranking.loadgen import LoadReport

__all__ = ["CLIENT_BEHIND", "evaluate", "judge"]

#: How the verdict of a client-limited run starts (the runner retries those).
CLIENT_BEHIND = "inconclusive, client-limited: "


def judge(sc: Scenario, report: LoadReport) -> tuple[bool, str]:
    """(passed, why) for one load run against the scenario's budget and error ceilings."""
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
