"""The loop on the small world: serve with a log, label outcomes, retrain from the log, hot-reload
the new bundle, then catch a distribution shift (GetStats and `ranking drift`)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from ranking.api.v1 import admin_pb2, admin_pb2_grpc, ranking_pb2_grpc
from ranking.flywheel.drift_report import drift_command, log_drift
from ranking.flywheel.reference import REFERENCE_FILE
from ranking.flywheel.train_log import train_from_log
from ranking.scoring.bundle import load_bundle
from ranking.server.app import App
from ranking.train import TrainDataError, TrainParams
from tests.conftest import SmallWorld, free_port, small_settings
from tests.flywheel.helpers import read_log_rows, send, small_request

ROOT = Path(__file__).resolve().parents[2]


def outcome(world: SmallWorld, user: str, item: str, rng: np.random.Generator) -> int:
    """The small world's hidden preference (not what the served model learned), graded 0..4."""
    k = int(item[1:])
    if k >= len(world.items):
        return 0
    i = world.items[k]
    u = world.users[int(user[1:])] if int(user[1:]) < len(world.users) else np.zeros(3)
    value = 1.5 * i[2] - float(np.nan_to_num(u[1])) * i[3] + 0.3 * rng.normal()
    return int(np.clip(np.round(value + 1.0), 0, 4))


def write_labels(world: SmallWorld, log_dir: Path, path: Path) -> int:
    table = read_log_rows(log_dir)
    rng = np.random.default_rng(11)
    rids, items, labels = [], [], []
    for row in table.select(["request_id", "user_id", "item_id"]).to_pylist():
        grade = outcome(world, row["user_id"], row["item_id"], rng)
        if grade:  # only engaged rows are reported; the rest count as 0
            rids.append(row["request_id"])
            items.append(row["item_id"])
            labels.append(grade)
    pa_csv.write_csv(pa.table({"request_id": rids, "item_id": items, "label": labels}), path)
    return len(labels)


async def stats(port: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = await admin_pb2_grpc.AdminServiceStub(ch).GetStats(admin_pb2.GetStatsRequest())
    return dict(reply.counters)


async def test_retrain_from_log_reload_and_catch_drift(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    shutil.copytree(small_world.bundle, live)
    log1, log2 = tmp_path / "log1", tmp_path / "log2"
    app = App(small_settings(small_world, bundle=live, reload_poll_s=0.05, log_dir=log1))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            rng = np.random.default_rng(5)
            await send(stub, [small_request(rng, k, inline=False) for k in range(400)])
            assert app.flywheel is not None
            assert app.flywheel.flush(roll=True)  # the open log file completes
            labels = tmp_path / "labels.csv"
            assert write_labels(small_world, log1, labels) > 100

            params = TrainParams(trees=60, leaves=15)
            report = train_from_log(log1, labels, live, params=params, progress=False)
            text = str(report)
            assert "NDCG@10" in text and "served" in text
            assert report.n_valid_requests == 80 and report.n_train_requests == 320
            assert report.served_versions == ("small-v1",)
            # The new model learned the outcomes; the served one was trained on other labels.
            assert report.ndcg_new > report.ndcg_served + 0.1, text
            assert (live / REFERENCE_FILE).is_file()

            # Hot reload picks the retrained bundle up; its schema is the served one.
            for _ in range(200):
                if app.core is not None and app.core.models.current.version == report.version:
                    break
                await asyncio.sleep(0.05)
            assert app.core is not None
            assert app.core.models.current.version == report.version
            bundle = load_bundle(live)
            old = load_bundle(small_world.bundle)
            assert bundle.features == old.features and bundle.prior == old.prior

            # Re-scoring a held-out request's logged rows with the new model file reproduces
            # what the new model serves for the same request.
            req = small_request(np.random.default_rng(99), 0, inline=False)
            resp = await stub.Rank(req)
            booster = lgb.Booster(model_str=bundle.model_text)
            ids = [c.id for c in req.candidates]
            x = small_world.matrix(req.user_id, ids, req.context["c_hour"])
            np.testing.assert_array_equal(
                sorted(booster.predict(x, raw_score=True).tolist(), reverse=True),
                [it.score for it in resp.items],
            )
    finally:
        await app.stop(grace_s=0.5)

    # Serve the new model: like-for-like traffic shows no drift; a shift in c_hour does.
    for shifted, log_dir in ((False, log2), (True, tmp_path / "log3")):
        app = App(
            small_settings(
                small_world, bundle=live, log_dir=log_dir, drift_sample=1.0, admin_port=free_port()
            )
        )
        await app.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
                stub = ranking_pb2_grpc.RankingServiceStub(ch)
                rng = np.random.default_rng(6)
                hour = 3.0 if shifted else None
                await send(
                    stub, [small_request(rng, k, hour=hour, inline=False) for k in range(300)]
                )
            assert app.flywheel is not None
            assert app.flywheel.flush()
            counters = await stats(app.listeners.admin)
        finally:
            await app.stop(grace_s=0.5)
        psi = {k.split(".", 1)[1]: v for k, v in counters.items() if k.startswith("drift_psi.")}
        assert set(psi) == {f.name for f in bundle.features}
        assert 0.0 <= counters["drift_missing.i_x"] <= 1.0
        offline = {f.name: f.psi for f in log_drift(log_dir, live)}
        code = drift_command(log_dir, live, threshold=0.25)
        if shifted:
            assert psi["c_hour"] > 1.0 and max(psi, key=psi.__getitem__) == "c_hour", psi
            assert offline["c_hour"] > 1.0
            assert code == 1
        else:
            assert max(psi.values()) < 0.25, psi
            assert code == 0
        for name in psi:  # the server's window and the offline report count the same rows
            assert psi[name] == pytest.approx(offline[name], rel=1e-9, abs=1e-12)

    # log1 was served by the old model but for the last request: the new bundle's report
    # counts only its own model's rows, unless asked for all of them.
    assert {f.rows for f in log_drift(log1, live)} == {20}
    assert {f.rows for f in log_drift(log1, live, all_versions=True)} == {401 * 20}
    other = tmp_path / "other"
    shutil.copytree(live, other)
    schema = json.loads((other / "schema.json").read_text())
    (other / "schema.json").write_text(json.dumps({**schema, "model_version": "never-served"}))
    with pytest.raises(ValueError, match="no rows served by model never-served"):
        log_drift(log1, other)

    # The CLI entries: `ranking drift` exits 1 on the shifted log, 2 without a reference.
    log3 = str(tmp_path / "log3")
    shifted_run = await asyncio.to_thread(cli, "drift", "--log", log3, "--bundle", str(live))
    assert shifted_run.returncode == 1, shifted_run.stderr
    assert b"c_hour" in shifted_run.stdout.splitlines()[1]  # the largest PSI comes first
    bundle_dir = str(small_world.bundle)
    no_ref = await asyncio.to_thread(cli, "drift", "--log", log3, "--bundle", bundle_dir)
    assert no_ref.returncode == 2 and b"reference.json" in no_ref.stderr


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ranking.cli", *args], cwd=ROOT, capture_output=True
    )


def test_train_from_log_cli(small_world: SmallWorld, tmp_path: Path) -> None:
    """`ranking train --log` refuses bad input with a message naming the file."""
    empty = tmp_path / "empty"
    empty.mkdir()
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,item_id,label\nr1,i1,2\n")
    run = cli("train", "--log", str(empty), "--labels", str(labels), "--out", str(tmp_path / "b"))
    assert run.returncode != 0
    assert b"no complete log files" in run.stderr
    with pytest.raises(TrainDataError, match="no complete log files"):
        train_from_log(empty, labels, tmp_path / "b")


def test_bad_labels_are_refused(tmp_path: Path) -> None:
    from ranking.flywheel.train_log import read_labels

    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,item_id,label\nr1,i1,2.5\n")
    with pytest.raises(TrainDataError, match="integer grade"):
        read_labels(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("request_id,item_id,label\nr1,i1,2\nr1,i1,3\n")
    with pytest.raises(TrainDataError, match="more than one label"):
        read_labels(dup)
    missing = tmp_path / "missing.csv"
    missing.write_text("request_id,label\nr1,2\n")
    with pytest.raises(TrainDataError, match="item_id"):
        read_labels(missing)
