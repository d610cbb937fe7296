"""The runner's pure parts: scenarios, the rate search, SLO verdicts, wire encodings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from benchmarks.baselines.mlserver import infer_request, model_ready_request
from benchmarks.profile import classify
from benchmarks.runner import search_max_rate
from benchmarks.scenario import SCENARIO_DIR, find_scenario, load_scenario
from benchmarks.slo import evaluate
from benchmarks.steps import Step, SystemResult
from ranking.loadgen import LatencySummary, LoadReport


def _report(p99_ms: float, valid: bool = True, errors: float = 0.0) -> LoadReport:
    lat = LatencySummary(100, p99_ms / 2, p99_ms / 3, p99_ms / 2, p99_ms, p99_ms, p99_ms)
    return LoadReport(
        mode="open",
        target="x",
        target_rps=1,
        scheduled_rps=1,
        achieved_rps=1,
        throughput_rps=1,
        duration_s=1,
        scheduled=100,
        sent=100,
        completed=100,
        warmup_sent=0,
        status_counts={"OK": 100},
        degraded_counts={},
        degraded_ratio=0,
        partial_ratio=0,
        error_ratio=errors,
        latency=lat,
        latency_ok=lat,
        service_time=lat,
        send_lag=lat,
        client_cpu_ms_per_request=0.1,
        processes=1,
        valid=valid,
        problems=[] if valid else ["client fell behind"],
        error_samples=[],
        config={},
        histograms={},
    )


def _capacity(limit: float):  # type: ignore[no-untyped-def]
    """A fake system that meets the budget up to `limit` req/s; records the rates tried."""
    tried: list[float] = []

    def run_at(rate: float, i: int) -> Step:
        tried.append(rate)
        ok = rate <= limit
        return Step(rate, _report(5.0 if ok else 50.0), ok, "pass" if ok else "over budget")

    return run_at, tried


def test_ladder_climbs_then_bisects() -> None:
    run_at, tried = _capacity(820)
    best, fail = search_max_rate(run_at, [100, 300, 500, 700, 1000, 1300], bisect_steps=2)
    assert tried == [100, 300, 500, 700, 1000, 850, 780]
    assert best == 780 and fail is not None and fail.rate == 850


def test_ladder_all_pass_or_first_fails() -> None:
    run_at, _ = _capacity(10_000)
    assert search_max_rate(run_at, [100, 200], bisect_steps=2) == (200, None)
    run_at, tried = _capacity(10)
    best, _ = search_max_rate(run_at, [100, 200], bisect_steps=1)
    assert best is None and tried == [100, 50]


def test_shipped_scenarios_load() -> None:
    names = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
    assert {"r200", "smoke"} <= set(names)
    r200 = load_scenario(find_scenario("r200"))
    assert r200.under_test == "ranking"
    assert r200.mix.candidates.max == 200 and r200.world.trees == 500
    assert r200.world.leaves == 63 and r200.store == "redis"
    assert r200.load.arrivals == "poisson" and r200.budget_p99_ms == 10
    assert [c.describe() for c in r200.targets] == [
        "ranking: p99 <= 5 ms at 300 req/s",
        "ranking: max rate within budget >= 1000 req/s",
    ]
    quick = r200.quick()
    assert quick.load.duration_s == 3 and quick.load.bisect_steps == 0


def test_bad_scenarios_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[load]\nladder = [300, 100]\n")
    with pytest.raises(ValueError, match="ascending"):
        load_scenario(bad)
    bad.write_text("[[slo.require]]\nat_rps = 100\n")
    with pytest.raises(ValueError, match="check needs"):
        load_scenario(bad)
    with pytest.raises(FileNotFoundError):
        find_scenario("no-such-scenario")


def test_checks_are_judged_on_valid_runs_only() -> None:
    sc = load_scenario(find_scenario("r200"))
    ours = SystemResult("ranking", "ours")
    ours.fixed[300.0] = Step(300.0, _report(4.0), True, "")
    ours.max_rps = 1200
    verdicts = {c["check"]: c["met"] for c in evaluate(sc, [ours])}
    assert verdicts == {
        "ranking: p99 <= 10 ms at 300 req/s": True,
        "ranking: p99 <= 5 ms at 300 req/s": True,
        "ranking: max rate within budget >= 1000 req/s": True,
    }
    ours.fixed[300.0] = Step(300.0, _report(4.0, valid=False), False, "")
    ours.max_rps = 900
    assert not any(c["met"] for c in evaluate(sc, [ours]))
    assert all(c["met"] is None for c in evaluate(sc, [SystemResult("floor", "floor")]))


def _oip_classes():  # type: ignore[no-untyped-def]
    """The OIP messages we encode by hand, built from a descriptor (no MLServer needed)."""
    f = descriptor_pb2.FileDescriptorProto(
        name="oip_test.proto", package="inference", syntax="proto3"
    )
    T = descriptor_pb2.FieldDescriptorProto
    contents = f.message_type.add(name="InferTensorContents")
    contents.field.add(name="fp64_contents", number=7, type=T.TYPE_DOUBLE, label=T.LABEL_REPEATED)
    tensor = f.message_type.add(name="InferInputTensor")
    tensor.field.add(name="name", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    tensor.field.add(name="datatype", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    tensor.field.add(name="shape", number=3, type=T.TYPE_INT64, label=T.LABEL_REPEATED)
    tensor.field.add(
        name="contents",
        number=5,
        type=T.TYPE_MESSAGE,
        label=T.LABEL_OPTIONAL,
        type_name=".inference.InferTensorContents",
    )
    req = f.message_type.add(name="ModelInferRequest")
    req.field.add(name="model_name", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    req.field.add(
        name="inputs",
        number=5,
        type=T.TYPE_MESSAGE,
        label=T.LABEL_REPEATED,
        type_name=".inference.InferInputTensor",
    )
    ready = f.message_type.add(name="ModelReadyRequest")
    ready.field.add(name="name", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    get = message_factory.GetMessageClass
    return (
        get(pool.FindMessageTypeByName("inference.ModelInferRequest")),
        get(pool.FindMessageTypeByName("inference.ModelReadyRequest")),
    )


def test_oip_requests_encode_the_matrix() -> None:
    infer_cls, ready_cls = _oip_classes()
    x = np.arange(200 * 64, dtype=np.float64).reshape(200, 64) / 7.0
    x[3, 5] = np.nan
    msg = infer_cls.FromString(infer_request("ranker", x))
    assert msg.model_name == "ranker"
    (tensor,) = msg.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("input-0", "FP64", [200, 64])
    got = np.array(tensor.contents.fp64_contents).reshape(200, 64)
    np.testing.assert_array_equal(got, x)
    assert ready_cls.FromString(model_ready_request("ranker")).name == "ranker"


def test_profile_buckets_by_innermost_service_frame() -> None:
    stack = (
        "process 1;main (x.py:1);rank (ranking/core/service.py:10);"
        "score (ranking/scoring/engine.py:5);predict (lightgbm/basic.py:9)"
    )
    assert classify(stack) == "score"
    assert classify("process 1;serve (ranking/server/workers.py:67)") == "idle"
    assert classify("process 1;x (ranking/server/app.py:3);run (asyncio/runners.py:1)") == (
        "event loop + gRPC core"
    )
    assert classify("process 1;run (asyncio/runners.py:118)") == "event loop + gRPC core"
    assert classify("process 1;Rank (ranking/server/servicer.py:3)") == "servicer"
