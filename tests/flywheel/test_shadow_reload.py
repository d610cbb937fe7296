"""The shadow model is hot-reloaded from its folder; a broken bundle keeps the old shadow (or
none) and live answers never change."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np

from ranking.api.v1 import ranking_pb2_grpc
from ranking.flywheel.hook import Flywheel
from ranking.scoring.bundle import write_bundle
from ranking.server.app import App
from tests.conftest import FEATURES, SmallWorld, small_settings, train_small
from tests.flywheel.helpers import by_request, read_log_rows, send, small_request

NAMES = [f.name for f in FEATURES]


def write_shadow(folder: Path, version: str, seed: int) -> lgb.Booster:
    booster = train_small(np.random.default_rng(seed), trees=10, leaves=5)
    staging = folder.parent / f".{folder.name}-{version}"
    write_bundle(staging, booster.model_to_string(), FEATURES, version=version)
    folder.mkdir(exist_ok=True)
    for name in ("schema.json", "model.txt"):  # replaced one after the other, as a copy does
        (staging / name).replace(folder / name)
    shutil.rmtree(staging)
    return booster


async def until(check: object, timeout_s: float = 30.0) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_shadow_hot_reload(small_world: SmallWorld, tmp_path: Path) -> None:
    shadow_dir = tmp_path / "shadow"
    v1 = write_shadow(shadow_dir, "shadow-v1", 1)
    log_dir = tmp_path / "log"
    app = App(
        small_settings(
            small_world, log_dir=log_dir, shadow_bundle=shadow_dir, shadow_sample=1.0,
            shadow_cpu_share=1.0, reload_poll_s=0.05, shadow_min_idle=0.0, shadow_max_lag_ms=0.0,
        )
    )  # fmt: skip
    await app.start()
    rng = np.random.default_rng(4)
    sent: dict[str, list[object]] = {}
    try:
        fly = app.flywheel
        assert isinstance(fly, Flywheel) and fly.shadow is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)

            async def batch(tag: str, k0: int) -> None:
                reqs = [small_request(rng, k, request_id=f"{tag}{k}") for k in range(k0, k0 + 15)]
                resps = await send(stub, reqs)
                sent[tag] = list(zip(reqs, resps, strict=True))

            await batch("a", 0)
            v2 = write_shadow(shadow_dir, "shadow-v2", 2)
            await until(lambda: fly.shadow is not None and fly.shadow.version == "shadow-v2")
            await batch("b", 100)

            # A broken bundle: refused (the strict parser), the v2 shadow goes on.
            (shadow_dir / "model.txt").write_text("tree\nnot a model\n")
            await until(lambda: fly.shadow_stats.reload_failures >= 1)
            assert fly.shadow is not None and fly.shadow.version == "shadow-v2"
            await batch("c", 200)
            assert fly.flush(roll=True)
            assert fly.shadow_stats.reloads == 1 and fly.shadow_stats.failed == 0
            assert fly.shadow_stats.scored == 45
    finally:
        await app.stop(grace_s=0.5)

    logged = by_request(read_log_rows(log_dir))
    for tag, booster, version in (("a", v1, "shadow-v1"), ("b", v2, "shadow-v2"),
                                  ("c", v2, "shadow-v2")):  # fmt: skip
        for _, resp in sent[tag]:
            rows = logged[resp.request_id]  # type: ignore[attr-defined]
            x = np.array([[r[n] for n in NAMES] for r in rows])
            assert {r["shadow_model_version"] for r in rows} == {version}
            np.testing.assert_array_equal(
                [r["shadow_score"] for r in rows], booster.predict(x, raw_score=True)
            )
            # The live answers are the live model's, whatever the shadow did.
            np.testing.assert_array_equal(
                [it.score for it in resp.items],  # type: ignore[attr-defined]
                small_world.booster.predict(x, raw_score=True),
            )


async def test_shadow_broken_at_start_then_fixed(small_world: SmallWorld, tmp_path: Path) -> None:
    """No shadow while its folder holds a broken bundle; a good one is picked up later."""
    shadow_dir = tmp_path / "shadow"
    shadow_dir.mkdir()
    (shadow_dir / "model.txt").write_text("not a model\n")
    (shadow_dir / "schema.json").write_text("{}")
    app = App(
        small_settings(
            small_world, shadow_bundle=shadow_dir, shadow_sample=1.0, shadow_cpu_share=1.0,
            reload_poll_s=0.05, shadow_min_idle=0.0, shadow_max_lag_ms=0.0,
        )
    )  # fmt: skip
    await app.start()
    try:
        fly = app.flywheel
        assert isinstance(fly, Flywheel) and fly.shadow is None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            rng = np.random.default_rng(5)
            before = await send(stub, [small_request(rng, k) for k in range(5)])
            (shadow_dir / "schema.json").write_text("{broken")  # still broken: refused
            await until(lambda: fly.shadow_stats.reload_failures >= 1)
            assert fly.shadow is None
            write_shadow(shadow_dir, "shadow-v3", 3)
            await until(lambda: fly.shadow is not None)
            assert fly.shadow is not None and fly.shadow.version == "shadow-v3"
            rng = np.random.default_rng(5)
            after = await send(stub, [small_request(rng, k) for k in range(5)])
            assert fly.flush()
            assert fly.shadow_stats.scored == 5
    finally:
        await app.stop(grace_s=0.5)
    for a, b in zip(before, after, strict=True):
        assert [(i.id, i.score) for i in a.items] == [(i.id, i.score) for i in b.items]
