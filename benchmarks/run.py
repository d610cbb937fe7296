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

This module is the command line; the orchestration is `benchmarks.runner`, the start recipes
`benchmarks.systems`, the verdicts `benchmarks.slo`, the reports `benchmarks.report`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import REPO, log, machine_info
from benchmarks.report import write_reports
from benchmarks.runner import Runner
from benchmarks.scenario import find_scenario, load_scenario
from benchmarks.slo import evaluate

__all__ = ["main"]

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_SCENARIOS = ("r200",)


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
