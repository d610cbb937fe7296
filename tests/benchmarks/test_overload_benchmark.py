"""The overload benchmark end to end on the smoke world: real server processes, real load.

Figures are printed, never asserted (CI machines are noisy); the structure is: every
configuration ran at every rate, each call ended in a status the report accounts for, and the
configuration's settings reached the server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.overload import main


@pytest.mark.slow
def test_overload_runs_each_configuration_and_accounts_for_every_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only = "off,latency-first (vegas + backlog 1)"
    code = main(
        [
            *("--scenario", "smoke", "--rates", "100", "--duration", "1.5"),
            *("--server-warmup", "0.5", "--workers", "1", "--only", only),
            *("--out", str(tmp_path)),
        ]
    )
    with capsys.disabled():
        print((tmp_path / "overload-smoke-w1.md").read_text())
    assert code == 0
    doc = json.loads((tmp_path / "overload-smoke-w1.json").read_text())
    assert [r["config"] for r in doc["runs"]] == only.split(",")
    assert doc["meta"]["configs"]["off"] == {
        "RANKING_LIMITER": "off",
        "RANKING_MAX_PENDING_CALLS": "0",
    }
    for run in doc["runs"]:
        report = run["report"]
        assert report["sent"] > 0
        assert sum(report["status_counts"].values()) == report["completed"] == report["sent"]
        assert report["status_counts"].get("OK", 0) > 0
        # The server's own counters came back: it answered the calls the client saw answered
        # (warm-up included, hence >=).
        assert run["counters"]["ok"] >= report["status_counts"]["OK"]
