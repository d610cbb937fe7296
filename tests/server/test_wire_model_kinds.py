"""Every model kind ranks through the server path (native decode, top-k and encode) exactly as
`Booster.predict(raw_score=True)` scores the same rows, with both engines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import lightgbm as lgb
import numpy as np
import pytest

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc
from ranking.scoring.bundle import FeatureSpec, write_bundle
from ranking.server.app import App
from ranking.settings import Settings

WIDTH = 6
KINDS: dict[str, tuple[dict[str, Any], int]] = {
    "lambdarank": ({"objective": "lambdarank"}, 0),
    "regression": ({"objective": "regression"}, 0),
    "binary": ({"objective": "binary"}, 0),
    "multiclass": ({"objective": "multiclass", "num_class": 3}, 2),
    "random_forest": (
        {"objective": "regression", "boosting": "rf", "bagging_freq": 1, "bagging_fraction": 0.7},
        0,
    ),
}


def labels(kind: str, x: np.ndarray) -> np.ndarray:
    signal = np.nan_to_num(x[:, 0] + x[:, 1] * x[:, 2])
    if kind == "lambdarank":
        return np.clip(signal + 2, 0, 4).astype(int)
    if kind == "binary":
        return (signal > 0).astype(int)
    if kind == "multiclass":
        return np.digitize(signal, [-0.5, 0.5])
    return signal


def bundle(tmp: Path, kind: str) -> tuple[Path, lgb.Booster, int]:
    params, output_index = KINDS[kind]
    rng = np.random.default_rng(11)
    x = rng.normal(size=(1200, WIDTH))
    x[rng.random(x.shape) < 0.1] = np.nan
    names = [f"f{k}" for k in range(WIDTH)]
    extra: dict[str, Any] = {"feature_name": names}
    if kind == "lambdarank":
        extra["group"] = [20] * 60
    base = {"verbose": -1, "num_threads": 1, "seed": 5, "deterministic": True, "num_leaves": 15}
    booster = lgb.train({**base, **params}, lgb.Dataset(x, labels(kind, x), **extra), 25)
    folder = tmp / kind
    write_bundle(
        folder,
        booster.model_to_string(),
        [FeatureSpec(n, "inline") for n in names],
        version=kind,
    )
    if output_index:
        schema = json.loads((folder / "schema.json").read_text())
        schema["output_index"] = output_index
        (folder / "schema.json").write_text(json.dumps(schema))
    return folder, booster, output_index


@pytest.mark.parametrize("engine", ["auto", "lightgbm"])
@pytest.mark.parametrize("kind", list(KINDS))
async def test_model_kind_ranks_like_lightgbm(tmp_path: Path, kind: str, engine: str) -> None:
    folder, booster, output_index = bundle(tmp_path, kind)
    app = App(
        Settings(
            bundle=folder,
            host="127.0.0.1",
            port=0,
            workers=1,
            reload_poll_s=0,
            budget_ms=5000.0,
            limiter="off",
            engine=engine,
        )
    )
    await app.start()
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(80, WIDTH))
    rows[rng.random(rows.shape) < 0.15] = np.nan
    rows[rng.random(rows.shape) < 0.05] = -0.0
    silent = rng.random(80) < 0.2  # these candidates send no values: all NaN
    ids = [f"c{k}" for k in range(80)]
    request = pb.RankRequest(
        feature_names=[f"f{k}" for k in range(WIDTH)],
        candidates=[
            pb.Candidate(id=i) if quiet else pb.Candidate(id=i, feature_values=r.tolist())
            for i, r, quiet in zip(ids, rows, silent, strict=True)
        ],
    )
    matrix = rows.copy()
    matrix[silent] = np.nan
    raw = np.asarray(booster.predict(matrix, raw_score=True))
    expected = raw[:, output_index] if raw.ndim == 2 else raw
    order = np.argsort(-expected, kind="stable")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            for top_k in (0, 7):
                request.top_k = top_k
                resp = await stub.Rank(request, timeout=10)
                want = order[:top_k] if top_k else order
                assert [it.id for it in resp.items] == [ids[i] for i in want]
                np.testing.assert_array_equal([it.score for it in resp.items], expected[want])
                assert resp.model_version == kind and not resp.degraded_reasons
    finally:
        await app.stop(0.5)
