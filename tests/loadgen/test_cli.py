"""`ranking load` end to end against a floor server process, and its argument handling."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.ports import free_port
from benchmarks.servers import ManagedProcess, wait_ready
from ranking.loadgen import CandidateCount
from ranking.loadgen.cli import build_parser, config_from_args, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def floor_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("floor") / "floor.log"
    with ManagedProcess(
        "floor",
        [sys.executable, "-m", "benchmarks.baselines.floor", "--port", str(port)],
        log,
        cwd=ROOT,
    ) as proc:
        wait_ready(proc, f"127.0.0.1:{port}", timeout_s=30)
        yield f"127.0.0.1:{port}"


def test_cli_runs_and_writes_the_json_report(
    floor_process: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    code = main(
        [
            "--target",
            floor_process,
            "--rate",
            "100",
            "--duration",
            "1",
            "--candidates",
            "20-40",
            "--n-items",
            "1000",
            "--n-users",
            "50",
            "--users",
            "zipf",
            "--max-in-flight",
            "64",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    print(printed)
    assert code in (0, 2)  # 2: this machine was too busy for the client to keep up
    assert "latency ms: p50" in printed
    report = json.loads(out.read_text())
    assert report["sent"] > 0 and report["status_counts"] == {"OK": report["sent"]}
    assert report["config"]["rate_rps"] == 100


def test_cli_closed_loop(floor_process: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", floor_process, "--closed", "4", "--requests", "50"]) == 0
    assert "closed-loop" in capsys.readouterr().out


def test_cli_unreachable_target_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    assert main(["--target", target, "--duration", "1", "--connect-timeout", "0.3"]) == 1


def test_cli_mix_from_a_scenario_with_overrides() -> None:
    args = build_parser().parse_args(
        [
            "--scenario",
            str(ROOT / "benchmarks" / "scenarios" / "r200.toml"),
            "--unknown-items",
            "0.2",
            "--context",
            "c_hour=7",
        ]
    )
    cfg = config_from_args(args)
    mix = cfg.payload.mix  # type: ignore[attr-defined]
    assert mix.n_users == 10_000 and mix.n_items == 50_000
    assert mix.candidates == CandidateCount.fixed(200)
    assert mix.users == "zipf" and mix.unknown_item_fraction == 0.2
    assert mix.context["c_hour"] == 7.0 and mix.context["c_dow"] == 4.0


def test_cli_refuses_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        main(["--candidates", "0"])
