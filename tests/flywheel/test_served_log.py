"""Served-feature logging end to end: `ranking serve --log-dir`, SIGTERM, read the Parquet back.

The logged feature rows, re-scored by LightGBM, must equal the logged and the returned scores
exactly: the log holds what the model scored, not a reconstruction of it.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np
import pyarrow.parquet as pq

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.flywheel.logwriter import FEATURES_KEY
from tests.conftest import FEATURES, SmallWorld, free_port
from tests.flywheel.helpers import by_request, read_log_rows, send, small_request
from tests.server.test_lifecycle import start_server, stop, wait_serving

NAMES = [f.name for f in FEATURES]


async def test_serve_log_sigterm_rescore_exactly(small_world: SmallWorld, tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    port = free_port()
    # A long roll: every row is still buffered or in an open file when SIGTERM arrives.
    os.environ["RANKING_LOG_ROLL_S"] = "3600"
    try:
        proc = start_server(small_world, port, "--workers", "1", "--log-dir", str(log_dir))
    finally:
        del os.environ["RANKING_LOG_ROLL_S"]
    rng = np.random.default_rng(3)
    requests = [small_request(rng, k, top_k=[0, 5, 0][k % 3]) for k in range(60)]
    for r in requests[::10]:
        r.request_id = ""  # the server generates one and echoes it
    try:
        await wait_serving(port, proc)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            responses = await send(ranking_pb2_grpc.RankingServiceStub(ch), requests)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop(proc)

    table = read_log_rows(log_dir)
    assert table.num_rows == sum(len(r.items) for r in responses)
    logged = by_request(table)
    booster: lgb.Booster = small_world.booster
    for req, resp in zip(requests, responses, strict=True):
        assert resp.request_id, "a logged request without an id gets a generated one"
        if req.request_id:
            assert resp.request_id == req.request_id
        rows = logged[resp.request_id]
        assert [r["item_id"] for r in rows] == [it.id for it in resp.items]
        assert [r["position"] for r in rows] == list(range(len(resp.items)))
        assert {r["user_id"] for r in rows} == {req.user_id}
        assert {r["model_version"] for r in rows} == {"small-v1"}
        assert all(r["degraded_reasons"] == list(resp.degraded_reasons) for r in rows)
        features = np.array([[r[n] for n in NAMES] for r in rows], dtype=np.float64)
        rescored = booster.predict(features, raw_score=True)
        logged_scores = np.array([r["score"] for r in rows])
        returned = np.array([it.score for it in resp.items])
        assert not any(it.unscored for it in resp.items)
        np.testing.assert_array_equal(rescored, logged_scores)  # bit for bit
        np.testing.assert_array_equal(logged_scores, returned)
        # And the features are the ones the world holds (no skew), NaN where missing.
        inline = [c.feature_values[0] for c in req.candidates] if req.feature_names else None
        ids = [c.id for c in req.candidates]
        expected = small_world.matrix(req.user_id, ids, req.context["c_hour"], inline)
        index = {i: k for k, i in enumerate(ids)}
        want = expected[[index[it.id] for it in resp.items]]
        np.testing.assert_array_equal(features, want)

    generated = [r.request_id for q, r in zip(requests, responses, strict=True) if not q.request_id]
    assert len(set(generated)) == len(generated)
    files = sorted(log_dir.rglob("*.parquet"))
    meta = json.loads(pq.ParquetFile(files[0]).schema_arrow.metadata[FEATURES_KEY])
    assert [f["name"] for f in meta["features"]] == NAMES
    assert meta["prior"] == "i_pop"
    for f in files:
        schema = pq.ParquetFile(f).schema_arrow
        for n in NAMES:
            assert str(schema.field(n).type) == "double"
    # Unknown users and items were sent: their NaN defaults are logged as NaN, not zero.
    assert any(math.isnan(v) for v in table.column("u_a").to_pylist())
    assert any(math.isnan(v) for v in table.column("i_x").to_pylist())


async def test_log_sample_zero_logs_nothing(small_world: SmallWorld, tmp_path: Path) -> None:
    from ranking.server.app import App
    from tests.conftest import small_settings

    log_dir = tmp_path / "log"
    app = App(small_settings(small_world, log_dir=log_dir, log_sample=0.0))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            resp = await stub.Rank(pb.RankRequest(candidates=[pb.Candidate(id="i1")]))
            assert resp.request_id == ""  # not logged: no id is made up
    finally:
        await app.stop(grace_s=0.5)
    assert not list(log_dir.rglob("*.parquet"))
