"""Shadow models: scored off the critical path, logged beside the live scores, and harmless when
they fail to load or to score."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np
import pytest

from ranking.api.v1 import admin_pb2, admin_pb2_grpc, ranking_pb2_grpc
from ranking.api.v1 import ranking_pb2 as pb
from ranking.features.memory import MemoryFeatureStore
from ranking.features.store import FetchResult, Gathered, Lookup, Target
from ranking.flywheel.idle import IdleMeter, read_proc_stat
from ranking.flywheel.shadow import rank_agreement
from ranking.scoring.bundle import FeatureSpec, write_bundle
from ranking.server.app import App
from tests.conftest import (
    FEATURES,
    SmallWorld,
    free_port,
    small_settings,
    small_tables,
    train_small,
)
from tests.flywheel.helpers import by_request, read_log_rows, send, small_request

NAMES = [f.name for f in FEATURES]


def shadow_bundle(folder: Path, seed: int = 42) -> lgb.Booster:
    booster = train_small(np.random.default_rng(seed), trees=15, leaves=5)
    write_bundle(folder, booster.model_to_string(), FEATURES, version="shadow-v1")
    return booster


async def serve_and_send(
    world: SmallWorld, n: int, **settings: object
) -> tuple[list[tuple[pb.RankRequest, pb.RankResponse]], dict[str, float]]:
    # shadow_min_idle and _max_lag_ms 0: count every shadow score whatever else runs on this
    # shared machine.
    settings.setdefault("shadow_min_idle", 0.0)
    settings.setdefault("shadow_max_lag_ms", 0.0)
    app = App(small_settings(world, admin_port=free_port(), **settings))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            rng = np.random.default_rng(8)
            requests = [small_request(rng, k) for k in range(n)]
            responses = await send(ranking_pb2_grpc.RankingServiceStub(ch), requests)
            if app.flywheel is not None:
                app.flywheel.flush()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.listeners.admin}") as ch:
            stats = await admin_pb2_grpc.AdminServiceStub(ch).GetStats(admin_pb2.GetStatsRequest())
    finally:
        await app.stop(grace_s=0.5)
    return list(zip(requests, responses, strict=True)), dict(stats.counters)


async def test_shadow_scores_logged_beside_live(small_world: SmallWorld, tmp_path: Path) -> None:
    shadow = shadow_bundle(tmp_path / "shadow")
    log_dir = tmp_path / "log"
    pairs, counters = await serve_and_send(
        small_world,
        40,
        log_dir=log_dir,
        shadow_bundle=tmp_path / "shadow",
        shadow_sample=1.0,
        shadow_cpu_share=1.0,
    )
    assert counters["shadow_scored"] == 40
    assert counters["shadow_failed"] == 0
    assert -1.0 <= counters["shadow_spearman_mean"] <= 1.0
    assert 0.0 <= counters["shadow_top10_overlap_mean"] <= 1.0
    logged = by_request(read_log_rows(log_dir))
    rhos = []
    for _, resp in pairs:
        rows = logged[resp.request_id]
        x = np.array([[r[n] for n in NAMES] for r in rows])
        np.testing.assert_array_equal(
            [r["shadow_score"] for r in rows], shadow.predict(x, raw_score=True)
        )
        assert {r["shadow_model_version"] for r in rows} == {"shadow-v1"}
        # Live answers are the live model's, untouched by the shadow.
        np.testing.assert_array_equal(
            [it.score for it in resp.items], small_world.booster.predict(x, raw_score=True)
        )
        rhos.append(rank_agreement(np.array([r["score"] for r in rows]), shadow.predict(x))[0])
    assert counters["shadow_spearman_mean"] == pytest.approx(np.mean(rhos), rel=1e-9)


async def test_shadow_budget_limits_scoring(small_world: SmallWorld, tmp_path: Path) -> None:
    shadow_bundle(tmp_path / "shadow")
    _, counters = await serve_and_send(
        small_world, 60, shadow_bundle=tmp_path / "shadow", shadow_sample=1.0,
        shadow_cpu_share=1e-6,  # a burst's worth, then nearly nothing
    )  # fmt: skip
    assert counters["shadow_skipped_budget"] > 0
    assert counters["shadow_scored"] + counters["shadow_skipped_budget"] == 60


async def test_broken_shadow_never_affects_live(small_world: SmallWorld, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.txt").write_text("not a model\n")
    (broken / "schema.json").write_text("{}")
    baseline, _ = await serve_and_send(small_world, 20)
    pairs, counters = await serve_and_send(
        small_world, 20, shadow_bundle=broken, shadow_sample=1.0, log_dir=tmp_path / "log"
    )
    assert "shadow_scored" not in counters  # not loaded: no shadow at all
    for (_, live), (_, base) in zip(pairs, baseline, strict=True):
        assert [(i.id, i.score) for i in live.items] == [(i.id, i.score) for i in base.items]
    # The log still works; the shadow columns are null.
    table = read_log_rows(tmp_path / "log")
    assert table.column("shadow_score").null_count == table.num_rows


async def test_shadow_failing_to_score_never_affects_live(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    """A shadow whose scorer raises (injected fault) and one needing a feature the live model
    does not serve: both are counted, live answers stay exact."""
    shadow_bundle(tmp_path / "shadow")
    other = tmp_path / "other"
    booster = lgb.train(
        {"objective": "regression", "verbose": -1, "num_leaves": 4, "min_data_in_leaf": 2},
        lgb.Dataset(np.random.default_rng(0).normal(size=(50, 2)), np.arange(50.0),
                    feature_name=["u_a", "not_served"]),
        num_boost_round=3,
    )  # fmt: skip
    write_bundle(
        other,
        booster.model_to_string(),
        [FeatureSpec("u_a", "user"), FeatureSpec("not_served", "inline")],
    )
    pairs, counters = await serve_and_send(small_world, 10, shadow_bundle=other, shadow_sample=1.0)
    assert counters["shadow_incompatible"] == 10 and counters["shadow_scored"] == 0

    class Exploding:
        name = "exploding"
        num_features = len(FEATURES)

        def score(self, matrix: np.ndarray) -> np.ndarray:
            raise RuntimeError("boom")

    app = App(
        small_settings(
            small_world,
            shadow_bundle=tmp_path / "shadow",
            shadow_sample=1.0,
            shadow_min_idle=0.0,
            shadow_max_lag_ms=0.0,
        )
    )
    await app.start()
    try:
        assert app.flywheel is not None and app.flywheel.shadow is not None
        app.flywheel.shadow.model.scorer = Exploding()  # type: ignore[assignment]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            rng = np.random.default_rng(8)
            reqs = [small_request(rng, k) for k in range(10)]
            responses = await send(ranking_pb2_grpc.RankingServiceStub(ch), reqs)
        app.flywheel.flush()
        assert app.flywheel.shadow.stats.failed == 10
    finally:
        await app.stop(grace_s=0.5)
    for (_, base), resp in zip(pairs, responses, strict=True):
        assert [(i.id, i.score) for i in resp.items] == [(i.id, i.score) for i in base.items]


def test_rank_agreement() -> None:
    a = np.array([3.0, 2.0, 1.0, 0.0])
    assert rank_agreement(a, a) == (1.0, 1.0)
    assert rank_agreement(a, -a)[0] == -1.0
    live = np.arange(20.0)
    shadow = live.copy()
    shadow[:5] += 100.0  # the five worst become the five best
    rho, overlap = rank_agreement(live, shadow)
    assert overlap == 0.5 and -1 < rho < 1
    ties = np.array([1.0, 1.0, 2.0])  # tied scores: the order they come in does not matter
    other = np.array([5.0, 6.0, 7.0])
    perm = [2, 1, 0]
    rho = rank_agreement(ties, other)[0]
    assert rho == pytest.approx(rank_agreement(ties[perm], other[perm])[0], abs=1e-15)
    assert rho == pytest.approx(0.8660254037844387)  # Pearson of ranks (0.5, 0.5, 2) and (0, 1, 2)


def test_without_an_event_loop_observe_scores(small_world: SmallWorld, tmp_path: Path) -> None:
    """A tool calling `observe` outside a loop still gets shadow scores (scored in the call)."""
    from ranking.core.models import build_serving_model
    from ranking.flywheel.hook import Flywheel
    from ranking.flywheel.shadow import Shadow
    from ranking.scoring.bundle import load_bundle

    booster = shadow_bundle(tmp_path / "shadow")
    model = build_serving_model(load_bundle(tmp_path / "shadow"), (), ())
    fly = Flywheel(shadow=Shadow(model, cpu_share=1.0), shadow_sample=1.0)
    fly.start()
    try:
        live = load_bundle(small_world.bundle)
        x = np.random.default_rng(0).normal(size=(6, len(FEATURES)))
        scores = small_world.booster.predict(x, raw_score=True)
        rows = np.argsort(-scores, kind="stable").astype(np.intp)
        fly.observe(
            "r", "u1", live, x, [f"i{k}" for k in range(6)], rows, scores[rows].tolist(),
            0, [], None, scores,
        )  # fmt: skip
        assert fly.flush()
        assert fly.shadow is not None and fly.shadow.stats.scored == 1
        rho, _ = rank_agreement(scores, booster.predict(x, raw_score=True))
        assert fly.shadow.stats.rho_sum == pytest.approx(rho, abs=1e-12)
    finally:
        fly.close()


class UserGatedStore(MemoryFeatureStore):
    """The in-process store, but a fetch for user `u_slow` waits for `gate` (a live call held
    in flight while others are served)."""

    gate: asyncio.Event

    async def fetch(
        self, lookups: Sequence[Lookup], *, timeout_s: float | None = None
    ) -> list[FetchResult]:
        if any(lk.entity_type == "user" and "u_slow" in list(lk.ids) for lk in lookups):
            await self.gate.wait()
        return self.fetch_now(lookups)

    async def gather(
        self,
        lookups: Sequence[Lookup],
        targets: Sequence[Target],
        *,
        timeout_s: float | None = None,
    ) -> list[Gathered]:
        if any(lk.entity_type == "user" and "u_slow" in list(lk.ids) for lk in lookups):
            await self.gate.wait()
        return self.gather_now(lookups, targets)


async def test_shadow_waits_for_no_live_call(small_world: SmallWorld, tmp_path: Path) -> None:
    """While a live call is in flight on the worker the shadow is skipped (counted), so its
    scoring never delays one; once the worker is idle again it scores."""
    shadow_bundle(tmp_path / "shadow")
    app = App(
        small_settings(
            small_world, shadow_bundle=tmp_path / "shadow", shadow_sample=1.0,
            shadow_cpu_share=1.0, limiter="fixed", limiter_fixed=8, shadow_min_idle=0.0,
            shadow_max_lag_ms=0.0,
        )
    )  # fmt: skip
    await app.start()
    try:
        assert app.core is not None and app.flywheel is not None
        store = UserGatedStore(small_tables(small_world))
        store.gate = asyncio.Event()
        app.core.store = store
        stats = app.flywheel.shadow_stats
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            rng = np.random.default_rng(9)
            slow = small_request(rng, 0)
            slow.user_id = "u_slow"
            held = asyncio.ensure_future(stub.Rank(slow, timeout=10))  # type: ignore[call-overload]
            await until_true(lambda: app.core is not None and app.core.limiter.inflight == 1)
            await send(stub, [small_request(rng, k) for k in range(1, 6)])
            await asyncio.sleep(0.05)  # their shadow callbacks have run
            assert stats.skipped_busy == 5 and stats.scored == 0
            store.gate.set()
            await held
            await send(stub, [small_request(rng, k) for k in range(6, 11)])
            assert app.flywheel.flush()
            assert stats.skipped_busy == 5 and stats.scored == 6  # the slow one, then 5
    finally:
        await app.stop(grace_s=0.5)


async def until_true(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def write_stat(path: Path, idle: int, busy: int) -> None:
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    path.write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")


def test_idle_meter_reads_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    write_stat(stat, idle=1000, busy=1000)
    now = [0.0]
    meter = IdleMeter(every_s=0.1, read=lambda: read_proc_stat(stat), clock=lambda: now[0])
    assert meter.idle == 1.0  # nothing measured yet
    write_stat(stat, idle=1030, busy=1070)  # 30 of 100 ticks idle
    meter.tick()
    assert meter.idle == 1.0  # too soon: no new reading
    now[0] = 0.2
    meter.tick()
    assert meter.idle == pytest.approx(0.3)
    assert read_proc_stat(tmp_path / "missing") is None
    real = read_proc_stat()
    assert real is not None and 0 <= real[0] <= real[1]


async def test_shadow_skipped_while_the_machine_is_busy(
    small_world: SmallWorld, tmp_path: Path
) -> None:
    """A real server whose idle meter reads a stat file the test writes: while the machine
    reads busy the shadow is skipped, once it reads idle again it scores."""
    shadow_bundle(tmp_path / "shadow")
    app = App(
        small_settings(
            small_world, shadow_bundle=tmp_path / "shadow", shadow_sample=1.0,
            shadow_cpu_share=1.0, shadow_min_idle=0.5, shadow_max_lag_ms=0.0,
        )
    )  # fmt: skip
    await app.start()
    stat = tmp_path / "stat"
    write_stat(stat, idle=0, busy=0)
    try:
        fly = app.flywheel
        assert fly is not None and fly.idle is not None and fly.min_idle == 0.5
        fly.idle = IdleMeter(every_s=0.01, read=lambda: read_proc_stat(stat))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            rng = np.random.default_rng(10)
            write_stat(stat, idle=20, busy=80)  # 20 % idle
            await until_true(lambda: fly.idle is not None and fly.idle.idle < 0.5)
            await send(stub, [small_request(rng, k) for k in range(5)])
            assert fly.flush()
            assert fly.shadow_stats.skipped_idle == 5 and fly.shadow_stats.scored == 0
            write_stat(stat, idle=1020, busy=100)  # the next interval: 1000 of 1020 idle
            await until_true(lambda: fly.idle is not None and fly.idle.idle > 0.5)
            await send(stub, [small_request(rng, k) for k in range(5, 10)])
            assert fly.flush()
            assert fly.shadow_stats.skipped_idle == 5 and fly.shadow_stats.scored == 5
            assert fly.shadow_stats.skipped_busy == 0
    finally:
        await app.stop(grace_s=0.5)
