"""The benchmark harness end to end: the smoke scenario against real server processes.

Figures are printed, never asserted (CI machines are noisy); only structural facts are: the
servers started, requests went out and came back OK, the report has its keys, and the HDR
histograms hold exactly the recorded responses. Until the service's scoring engines exist the
run covers the floor baseline alone (a real grpc.aio server process), which still exercises the
whole runner: subprocess start, health wait, warm-up, ladder, reports.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks.run import main
from ranking.loadgen import decode_histogram


def _service_can_score() -> bool:
    return importlib.util.find_spec("ranking.scoring.engines") is not None


@pytest.mark.slow
def test_smoke_scenario_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    systems = "ranking,floor" if _service_can_score() else "floor"
    code = main(["smoke", "--systems", systems, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    with capsys.disabled():
        print(out)
        print((tmp_path / "smoke.md").read_text())
    assert code == 0

    doc = json.loads((tmp_path / "smoke.json").read_text())
    for key in (
        "scenario",
        "machine",
        "world",
        "mix",
        "load",
        "checks",
        "systems",
        "budget_p99_ms",
    ):
        assert key in doc
    assert [s["name"] for s in doc["systems"]] == systems.split(",")
    for system in doc["systems"]:
        assert system["status"] == "ok", system["reason"]
        steps = list(system["fixed"].values()) + system["ladder"]
        assert steps and [s["rate"] for s in system["ladder"]] == [100.0]
        for step in steps:
            report = step["report"]
            assert report["sent"] > 0
            assert report["status_counts"] == {"OK": report["sent"]}
            assert report["completed"] == report["sent"]
            for name, summary in (("latency", "latency"), ("service", "service_time")):
                histogram = decode_histogram(report["histograms"][name])
                assert histogram.get_total_count() == report[summary]["count"] == report["sent"]
            assert report["latency"]["p50_ms"] <= report["latency"]["p99_ms"]
            # The machine's busy time holds the server's (both from /proc, in clock ticks, so
            # a little rounding either way), and there is no store process (in-process store).
            assert step["store_cpu_ms_per_request"] is None
            assert step["machine_busy_cores"] > 0
            assert step["machine_cpu_ms_per_request"] >= 0.9 * step["server_cpu_ms_per_request"]
    assert "## CPU per request on the machine" in (tmp_path / "smoke.md").read_text()
    assert (tmp_path / "smoke-latency-vs-rate.png").stat().st_size > 0
    assert (tmp_path / "smoke-cdf.png").stat().st_size > 0
