"""Reports of one scenario run: JSON (every figure), a Markdown table, PNG plots."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from benchmarks.scenario import Scenario
from benchmarks.steps import Step, SystemResult
from ranking.loadgen import decode_histogram

__all__ = ["markdown", "write_reports"]


def write_reports(
    scenario: Scenario,
    results: list[SystemResult],
    checks: list[dict[str, Any]],
    machine: dict[str, Any],
    started: dt.datetime,
    out: Path,
    *,
    plots: bool = True,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = scenario.name.lower()
    doc = {
        "scenario": scenario.name,
        "description": scenario.description,
        "scenario_file": str(scenario.path.name),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "world": vars(scenario.world),
        "mix": {
            "candidates": scenario.mix.candidates.describe(),
            "users": scenario.mix.users,
            "items": scenario.mix.items,
            "zipf_s": scenario.mix.zipf_s,
            "unknown_user_fraction": scenario.mix.unknown_user_fraction,
            "unknown_item_fraction": scenario.mix.unknown_item_fraction,
        },
        "store": scenario.store,
        "load": vars(scenario.load),
        "budget_p99_ms": scenario.budget_p99_ms,
        "checks": checks,
        "systems": [r.as_dict() for r in results],
    }
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    paths[1].write_text(markdown(scenario, results, checks, machine, started))
    if plots:
        paths += _plots(scenario, results, out, stem)
    return paths


def _json_default(o: object) -> object:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _ratio(v: float | None, ref: float | None) -> str:
    if v is None or ref is None or not ref or math.isnan(v) or math.isnan(ref):
        return "-"
    return f"{v / ref:.2f}x"


def markdown(
    scenario: Scenario,
    results: list[SystemResult],
    checks: list[dict[str, Any]],
    machine: dict[str, Any],
    started: dt.datetime,
) -> str:
    lines = [
        f"# {scenario.name}: {scenario.description}",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC on {machine.get('cpu') or 'unknown CPU'}, "
        f"{machine.get('cores')} cores, Python {machine.get('python')}, grpcio "
        f"{machine.get('grpcio')}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in machine.get('load_average_at_start', []))}.",
        f"World {scenario.world.n_users} users x {scenario.world.n_items} items; model "
        f"{scenario.world.trees} trees x {scenario.world.leaves} leaves; "
        f"{scenario.mix.candidates.describe()} candidates per request; store {scenario.store}; "
        f"{scenario.load.arrivals} arrivals, {scenario.load.duration_s:g} s per rate "
        f"({scenario.load.warmup_s:g} s warm-up); budget p99 <= {scenario.budget_p99_ms:g} ms.",
        "Latency is timed from each request's intended send time (open loop).",
        "",
    ]
    ours = next((r for r in results if r.name == scenario.under_test), None)
    for rate in scenario.load.fixed_rates:
        lines += [
            f"## At {rate:g} req/s",
            "",
            "| system | p50 ms | p99 ms | p99.9 ms | achieved req/s | errors | server CPU "
            "ms/req | client CPU ms/req | max req/s within budget | p99 vs ours | "
            "max rate vs ours |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        notes: list[str] = []
        ours_step = ours.step_at(rate) if ours else None
        for r in results:
            if r.status != "ok":
                lines.append(
                    f"| {r.label} | {r.status}: {r.reason.splitlines()[0][:120]} " + "| " * 10 + "|"
                )
                continue
            step = r.step_at(rate)
            if step is None:
                continue
            rep = step.report
            ours_p99 = ours_step.report.latency.p99_ms if ours_step else None
            flag = "" if rep.valid else " (client behind)"
            max_rps = "-" if r.max_rps is None else f"{r.max_rps:g}"
            if r.max_rps_note:
                max_rps += f" ({r.max_rps_note})"
            lines.append(
                f"| {r.label} | {_fmt(rep.latency.p50_ms)} | {_fmt(rep.latency.p99_ms)}{flag} | "
                f"{_fmt(rep.latency.p999_ms)} | {rep.achieved_rps:.0f} | "
                f"{rep.error_ratio:.2%} | {_fmt(step.server_cpu_ms_per_request)} | "
                f"{_fmt(rep.client_cpu_ms_per_request)} | {max_rps} | "
                f"{_ratio(rep.latency.p99_ms, ours_p99)} | "
                f"{_ratio(r.max_rps, ours.max_rps if ours else None)} |"
            )
            counts = ", ".join(f"{k} {v}" for k, v in sorted(rep.status_counts.items()))
            degraded = ", ".join(f"{k} {v}" for k, v in sorted(rep.degraded_counts.items()))
            notes.append(
                f"- {r.name}: status {counts}"
                + (f"; degraded answers: {degraded}" if degraded else "")
                + ("" if rep.valid else f"; not valid: {'; '.join(rep.problems)}")
            )
        lines += ["", *notes, ""]
    lines += [
        "## Rate ladder",
        "",
        "| system | rate | p50 ms | p99 ms | p99.9 ms | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for s in sorted(r.ladder, key=lambda s: s.rate):
            lat = s.report.latency
            lines.append(
                f"| {r.name} | {s.rate:g} | {_fmt(lat.p50_ms)} | {_fmt(lat.p99_ms)} | "
                f"{_fmt(lat.p999_ms)} | {'pass' if s.passed else 'FAIL'}: {s.why} |"
            )
    lines.append("")
    lines += _cpu_table(results)
    stages = _stage_table(results)
    if stages:
        lines += stages
    lines += _profile_table(results)
    if checks:
        lines += ["## SLO checks", ""]
        for c in checks:
            verdict = {True: "met", False: "**MISSED**", None: "skipped"}[c["met"]]
            lines.append(f"- {verdict} ({c['kind']}): {c['check']} -- {c['measured']}")
        lines.append("")
    return "\n".join(lines)


def _cpu_table(results: list[SystemResult]) -> list[str]:
    """Where the machine's cores went per request sent, at every rate measured."""
    rows = [(r.name, s) for r in results for s in _all_steps(r) if s.machine_cpu_ms_per_request]
    if not rows:
        return []
    out = [
        "## CPU per request on the machine (from /proc, per request sent)",
        "",
        "Server: its processes; store: redis-server, when the run started one; machine: every "
        "core's busy time (all processes and the kernel); the rest is mostly the load "
        "generator's processes.",
        "",
        "| system | rate | server ms | store ms | rest ms | machine ms | cores busy (run) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in rows:
        machine = s.machine_cpu_ms_per_request or 0.0
        rest = machine - (s.server_cpu_ms_per_request or 0.0) - (s.store_cpu_ms_per_request or 0.0)
        out.append(
            f"| {name} | {s.rate:g} | {_fmt(s.server_cpu_ms_per_request)} | "
            f"{_fmt(s.store_cpu_ms_per_request)} | {_fmt(rest)} | {_fmt(machine)} | "
            f"{_fmt(s.machine_busy_cores)} |"
        )
    out.append("")
    return out


def _stage_table(results: list[SystemResult]) -> list[str]:
    rows = []
    for r in results:
        for s in _all_steps(r):
            if s.stages_us:
                rows.append((r.name, s))
    if not rows:
        return []
    stages = sorted({k for _, s in rows for k in s.stages_us})
    out = [
        "## Server stage times (mean per OK request, from the service's GetStats)",
        "",
        "| system | rate | " + " | ".join(f"{k} us" for k in stages) + " | server CPU ms/req |",
        "|---|---:|" + "---:|" * (len(stages) + 1),
    ]
    for name, s in rows:
        out.append(
            f"| {name} | {s.rate:g} | "
            + " | ".join(_fmt(s.stages_us.get(k), 0) for k in stages)
            + f" | {_fmt(s.server_cpu_ms_per_request)} |"
        )
    out.append("")
    return out


def _profile_table(results: list[SystemResult]) -> list[str]:
    out: list[str] = []
    for r in results:
        s = r.profile_step
        if s is not None and s.profile:
            out += [
                f"## CPU per request by stage: {r.name} at {s.rate:g} req/s (py-spy)",
                "",
                f"Server CPU {_fmt(s.server_cpu_ms_per_request, 3)} ms per request (all "
                "processes, from /proc), split by the share of py-spy samples in each stage.",
                "",
                "| stage | share of samples | CPU ms per request |",
                "|---|---:|---:|",
            ]
            cpu = s.profile_cpu_ms()
            for k, share in s.profile.items():
                out.append(f"| {k} | {share:.1%} | {_fmt(cpu.get(k), 3)} |")
            out.append("")
    return out


def _all_steps(r: SystemResult) -> list[Step]:
    steps = list(r.fixed.values()) + [s for s in r.ladder if s not in r.fixed.values()]
    return sorted(steps, key=lambda s: s.rate)


def _plots(scenario: Scenario, results: list[SystemResult], out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ok = [r for r in results if r.status == "ok"]
    # 1. Latency percentiles vs offered rate, per system.
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in ok:
        steps = [s for s in _all_steps(r) if s.report.latency.count]
        if not steps:
            continue
        rates = [s.rate for s in steps]
        (line,) = ax.plot(
            rates, [s.report.latency.p99_ms for s in steps], marker="o", label=f"{r.name} p99"
        )
        ax.plot(
            rates,
            [s.report.latency.p50_ms for s in steps],
            marker=".",
            linestyle="--",
            color=line.get_color(),
            label=f"{r.name} p50",
        )
        behind = [s for s in steps if not s.report.valid]
        if behind:  # runs whose client fell behind: shown, but they do not count
            ax.plot(
                [s.rate for s in behind],
                [s.report.latency.p99_ms for s in behind],
                "x",
                color="black",
                markersize=9,
            )
    ax.axhline(scenario.budget_p99_ms, color="red", linewidth=0.8, label="budget (p99)")
    ax.plot([], [], "x", color="black", label="client fell behind (does not count)")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (req/s, Poisson)")
    ax.set_ylabel("latency from intended send (ms)")
    ax.set_title(f"{scenario.name}: latency vs offered rate")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    paths.append(out / f"{stem}-latency-vs-rate.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    # 2. Latency CDF at the first fixed rate.
    if scenario.load.fixed_rates:
        rate = scenario.load.fixed_rates[0]
        fig, ax = plt.subplots(figsize=(8, 5))
        for r in ok:
            step = r.step_at(rate)
            if step is None:
                continue
            h = decode_histogram(step.report.histograms.get("latency", ""))
            total = h.get_total_count()
            if not total:
                continue
            xs, ys = [], []
            for it in h.get_recorded_iterator():
                xs.append(it.value_iterated_to / 1000.0)
                ys.append(it.total_count_to_this_value / total)
            # Plot the tail on a "nines" axis: 1 / (1 - quantile).
            ax.plot(xs, [1.0 / max(1e-5, 1.0 - y) for y in ys], label=r.name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_yticks([1, 2, 10, 100, 1000, 10000])
        ax.set_yticklabels(["0", "50%", "90%", "99%", "99.9%", "99.99%"])
        ax.set_xlabel("latency from intended send (ms)")
        ax.set_ylabel("percentile")
        ax.set_title(f"{scenario.name}: latency distribution at {rate:g} req/s")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        paths.append(out / f"{stem}-cdf.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    # 3. Stage breakdown of the system under test, per rate.
    ours = next((r for r in ok if r.name == scenario.under_test), None)
    steps = [s for s in _all_steps(ours) if s.stages_us] if ours else []
    if steps:
        stages = [k for k in sorted(steps[0].stages_us) if k != "total" and not k.endswith(" cpu")]
        fig, ax = plt.subplots(figsize=(8, 5))
        bottom = [0.0] * len(steps)
        labels = [f"{s.rate:g}" for s in steps]
        for k in stages:
            vals = [s.stages_us.get(k, 0.0) / 1000.0 for s in steps]
            ax.bar(labels, vals, bottom=bottom, label=k)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        totals = [s.stages_us.get("total") for s in steps]
        if all(t is not None for t in totals):
            ax.plot(
                labels,
                [t / 1000.0 for t in totals if t is not None],
                "k_",
                markersize=30,
                label="total (server)",
            )
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel("mean server time per request (ms)")
        ax.set_title(f"{scenario.name}: where the server's time goes ({scenario.under_test})")
        ax.legend(fontsize=8)
        paths.append(out / f"{stem}-stages.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return paths
