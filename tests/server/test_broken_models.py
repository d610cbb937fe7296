"""No broken model file changes the serving model or fails a Rank call.

A real server (`ranking serve`, its own process) answers Rank calls under a bounded load while
every text of the broken-model corpus (`tests/scoring/model_corpus.py`: truncations, corrupted
fields, garbage, wrong tree counts, missing sections; most of them crash LightGBM's own loader)
is offered to it through AdminService/ReloadModel and through the watched bundle folder.
Each is refused with a message; every call succeeds, scored exactly by the old model; a good
model is still taken afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np
import pytest

from ranking.api.v1 import admin_pb2, admin_pb2_grpc, ranking_pb2_grpc
from ranking.api.v1 import ranking_pb2 as pb
from ranking.scoring.bundle import write_bundle
from tests.conftest import FEATURES, SmallWorld, free_port, train_small
from tests.scoring.model_corpus import broken_models
from tests.server.test_lifecycle import wait_serving

ROOT = Path(__file__).resolve().parents[2]
TOKEN = (("x-admin-token", "s3cret"),)


class Load:
    """Rank calls from `callers` tasks, each pausing `pause_s` between calls, until stopped;
    every outcome is kept. Caller k ranks items i0..i39 for user uk; `answers` holds each
    distinct (version, user, scores in id order) seen."""

    def __init__(self, port: int, callers: int = 2, pause_s: float = 0.01) -> None:
        self.port, self.callers, self.pause_s = port, callers, pause_s
        self.versions: dict[str, int] = {}
        self.errors: list[str] = []
        self.answers: set[tuple[str, str, tuple[float, ...]]] = set()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _caller(self, k: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=options) as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            req = pb.RankRequest(
                user_id=f"u{k}", candidates=[pb.Candidate(id=f"i{j}") for j in range(40)]
            )
            while not self._stop.is_set():
                try:
                    r = await stub.Rank(req, timeout=5)
                    self.versions[r.model_version] = self.versions.get(r.model_version, 0) + 1
                    got = {item.id: item.score for item in r.items}
                    scores = tuple(got[f"i{j}"] for j in range(40))
                    self.answers.add((r.model_version, req.user_id, scores))
                except grpc.aio.AioRpcError as exc:
                    self.errors.append(f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(self.pause_s)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._caller(k)) for k in range(self.callers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def serve(
    bundle: Path, world: SmallWorld, port: int, admin_port: int, log: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        *(sys.executable, "-m", "ranking.cli", "serve", "--bundle", str(bundle)),
        *("--port", str(port), "--workers", "1", "--admin-token", "s3cret"),
        *("--admin-port", str(admin_port)),
        *("--features", f"user={world.folder / 'users.csv'}"),
        *("--features", f"item={world.folder / 'items.csv'}"),
        *("--limiter", "off", "--budget-ms", "1000"),
    ]
    env = {**os.environ, "RANKING_RELOAD_POLL_S": "0.02", "RANKING_GRACE_S": "2"}
    with log.open("wb") as err:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)


def read_log(log: Path) -> str:
    return log.read_text(errors="replace")


async def wait_for_log(log: Path, needle: str, count: int, timeout_s: float = 10.0) -> None:
    until = time.monotonic() + timeout_s
    while read_log(log).count(needle) < count:
        if time.monotonic() > until:
            raise AssertionError(f"no {count}th {needle!r} in the log:\n{read_log(log)[-3000:]}")
        await asyncio.sleep(0.01)


@pytest.mark.timeout(300)
async def test_broken_models_never_change_the_serving_model(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    good = small_world.booster.model_to_string()
    corpus = broken_models(good)
    live = tmp_path / "live"
    write_bundle(live, good, FEATURES, version="small-v1", prior="i_pop")
    candidate = tmp_path / "candidate"
    write_bundle(candidate, good, FEATURES, version="candidate")
    port, admin_port = free_port(), free_port()
    log = Path(tempfile.mkstemp(prefix="ranking-broken-", suffix=".log")[1])
    proc = serve(live, small_world, port, admin_port, log)
    try:
        await wait_serving(port, proc)
        load = Load(port)
        load.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}") as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            # 1. Every broken text through ReloadModel.
            for name, text in corpus:
                (candidate / "model.txt").write_text(text, errors="surrogateescape")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await admin.ReloadModel(
                        admin_pb2.ReloadModelRequest(bundle_path=str(candidate)),
                        metadata=TOKEN,
                        timeout=30,
                    )
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name
                assert "old model still serving" in (info.value.details() or ""), name
                assert proc.poll() is None, name
            # 2. Every one through the watched folder: each is refused (a log line) while the
            #    old model serves on.
            refused = read_log(log).count("reload refused")
            for name, text in corpus:
                (live / "model.txt").write_text(text, errors="surrogateescape")
                refused += 1
                await wait_for_log(log, "reload refused", refused)
                assert proc.poll() is None, name
            # 3. The watcher still takes a good model.
            newer = train_small(np.random.default_rng(3), trees=8, leaves=5).model_to_string()
            write_bundle(live, newer, FEATURES, version="small-v2", prior="i_pop")
            until = time.monotonic() + 20
            while "small-v2" not in load.versions and time.monotonic() < until:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await load.stop()
        assert load.errors == []
        assert set(load.versions) == {"small-v1", "small-v2"}, load.versions
        assert load.versions["small-v1"] > 200
        # Every answer is wholly the old model's or the new one's, score for score.
        ids = [f"i{j}" for j in range(40)]
        models = {"small-v1": small_world.booster, "small-v2": lgb.Booster(model_str=newer)}
        for version, user, scores in load.answers:
            want = models[version].predict(small_world.matrix(user, ids, 12.0), raw_score=True)
            assert list(scores) == want.tolist(), (version, user)
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.unlink(log)
