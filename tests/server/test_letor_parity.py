"""The server ranks exactly as LightGBM does offline, on a real learning-to-rank sample.

Train a LambdaRank model on 70% of the LETOR queries, then send every held-out query's
documents to a real server with all 300 features inline, and compare the order and the scores
with `Booster.predict(raw_score=True)` on the same rows.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.scoring.bundle import FeatureSpec, write_bundle
from ranking.server.app import App
from ranking.settings import Settings


def read_letor(folder: Path) -> tuple[np.ndarray, np.ndarray, list[int]]:
    labels, rows, width = [], [], 0
    for line in (folder / "rank.train").read_text().splitlines():
        parts = line.split()
        labels.append(float(parts[0]))
        pairs = [(int(k), float(v)) for k, v in (p.split(":") for p in parts[1:])]
        rows.append(pairs)
        width = max(width, *(k + 1 for k, _ in pairs))
    x = np.zeros((len(rows), width))
    for r, pairs in enumerate(rows):
        for k, v in pairs:
            x[r, k] = v
    groups = [int(g) for g in (folder / "rank.train.query").read_text().split()]
    assert sum(groups) == len(rows)
    return x, np.asarray(labels), groups


async def test_every_heldout_query_ranks_like_lightgbm(letor_dir: Path, tmp_path: Path) -> None:
    x, y, groups = read_letor(letor_dir)
    bounds = np.cumsum([0, *groups])
    n_train = int(len(groups) * 0.7)
    cut = bounds[n_train]
    names = [f"f{k}" for k in range(x.shape[1])]
    ds = lgb.Dataset(x[:cut], y[:cut], group=groups[:n_train], feature_name=names)
    params = {
        "objective": "lambdarank",
        "num_leaves": 31,
        "min_data_in_leaf": 20,
        "verbose": -1,
        "seed": 3,
        "deterministic": True,
        "num_threads": 1,
    }
    booster = lgb.train(params, ds, num_boost_round=60)
    write_bundle(
        tmp_path / "letor",
        booster.model_to_string(),
        [FeatureSpec(n, "inline") for n in names],
        version="letor-test",
    )
    settings = Settings(
        bundle=tmp_path / "letor",
        host="127.0.0.1",
        port=0,
        workers=1,
        reload_poll_s=0,
        budget_ms=5000.0,
        limiter="off",
    )
    app = App(settings)
    await app.start()
    checked = 0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            for q in range(n_train, len(groups)):
                rows = x[bounds[q] : bounds[q + 1]]
                ids = [f"q{q}d{d}" for d in range(len(rows))]
                req = pb.RankRequest(
                    user_id="",
                    feature_names=names,
                    candidates=[
                        pb.Candidate(id=i, feature_values=r.tolist())
                        for i, r in zip(ids, rows, strict=True)
                    ],
                )
                resp = await stub.Rank(req, timeout=10)
                expected = booster.predict(rows, raw_score=True)
                order = np.argsort(-expected, kind="stable")
                got_scores = np.array([it.score for it in resp.items])
                np.testing.assert_allclose(got_scores, expected[order], rtol=0, atol=1e-9)
                # Order must match except among exact ties, where both keep the caller's order.
                assert [it.id for it in resp.items] == [ids[i] for i in order]
                assert list(resp.degraded_reasons) == []
                checked += 1
    finally:
        await app.stop(0.5)
    assert checked == len(groups) - n_train > 50
