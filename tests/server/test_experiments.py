"""gRPC core experiments reach the server's processes before grpc loads
(`ranking/server/experiments.py`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from ranking.api.v1 import ranking_pb2, ranking_pb2_grpc
from ranking.server.experiments import ENV, apply, merged
from ranking.settings import Settings
from tests.conftest import SmallWorld, free_port
from tests.server.test_lifecycle import start_server, stop, wait_serving
from tests.server.test_workers import worker_pids

DEFAULT = Settings.model_fields["grpc_experiments"].default


def test_an_operators_own_entries_win_and_ours_fill_in_the_rest() -> None:
    assert merged("", "-a,-b") == "-a,-b"
    assert merged("a", "-a,-b") == "a,-b"  # the operator turned `a` on: it stays on
    assert merged(" -c , b ", "-a,-b") == "-c,b,-a"
    assert merged("x", "") == "x"


def test_the_default_turns_eventengine_io_off_and_bad_values_are_refused() -> None:
    assert DEFAULT == "-event_engine_listener,-event_engine_for_all_other_endpoints"
    with pytest.raises(ValueError, match="grpc_experiments"):
        Settings(grpc_experiments="a;rm -rf /")


def test_applying_after_grpc_loaded_says_it_is_too_late(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert "grpc" in sys.modules  # this test module imported it
    assert apply("-some_experiment") is False
    assert os.environ[ENV] == "-some_experiment"


def test_the_cli_sets_it_before_grpc_is_imported() -> None:
    """What `ranking serve` imports up to `apply()` (the module, its parser with every
    subcommand's defaults, the settings) must not load grpc, or the setting is silently lost in
    a one-process server. The parser once imported `ranking.train`, whose bundle code imported
    the errors, which imported grpc."""
    code = (
        "import sys, ranking.cli, ranking.settings, ranking.server.experiments\n"
        "args = ranking.cli.build_parser().parse_args(['serve', '--port', '1'])\n"
        "import pydantic\n"
        "print('grpc' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().partition("=")[::2] for e in raw if b"=" in e)


@pytest.mark.timeout(90)
async def test_every_worker_runs_with_them_and_serves(small_world: SmallWorld) -> None:
    port = free_port()
    proc = start_server(small_world, port, "--workers", "2", env={ENV: "event_engine_listener"})
    try:
        await wait_serving(port, proc)
        pids = worker_pids(proc.pid)
        assert len(pids) == 2
        for pid in pids:  # the operator's entry kept, ours added
            assert (
                _environ(pid)[ENV] == "event_engine_listener,-event_engine_for_all_other_endpoints"
            )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            got = await ranking_pb2_grpc.RankingServiceStub(ch).Rank(
                ranking_pb2.RankRequest(
                    user_id="u1",
                    candidates=[ranking_pb2.Candidate(id=f"i{k}") for k in range(5)],
                ),
                timeout=5,
            )
        assert len(got.items) == 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop(proc)
