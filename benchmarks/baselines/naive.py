"""The naive service: Rank as a user would first write it.

A synchronous `grpc.server` on a thread pool; per request, one `MGET` of the user's and the
candidates' feature vectors from Redis with plain redis-py (no cache, no hedging, no timeout
budget); the matrix assembled with numpy in the schema's order; `Booster.predict` on it; the
items sorted and returned. No admission control, no partial answers.

Its Redis layout is its own, agreed with nobody: one key per entity, `naive:{type}:{id}`, holding
the float32 vector as raw bytes (the reasonable first design; a hash per entity read with
pipelined HGETALL is slower still: 11-20 ms for 200 entities against under 1 ms for one MGET,
measured on the 2-core benchmark machine).

    python -m benchmarks.baselines.naive load  --redis redis://127.0.0.1:6390/0 \
        --user-features user.parquet --item-features item.parquet
    python -m benchmarks.baselines.naive serve --port 50071 --bundle BUNDLE \
        --redis redis://127.0.0.1:6390/0 [--threads 8]
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ranking.api.v1 import ranking_pb2, ranking_pb2_grpc

__all__ = ["NaiveRanker", "load_features", "main"]

PREFIX = "naive"


def load_features(redis_url: str, entity_type: str, parquet: Path, batch: int = 2000) -> int:
    """Write one `naive:{type}:{id}` key per row; also `naive:{type}:columns` (JSON)."""
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    ids = [str(x) for x in table.column("id").to_pylist()]
    cols = [c for c in table.column_names if c != "id"]
    matrix = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in cols]).astype(
        np.float32
    )
    r = redis.Redis.from_url(redis_url)
    try:
        r.set(f"{PREFIX}:{entity_type}:columns", json.dumps(cols))
        for start in range(0, len(ids), batch):
            pipe = r.pipeline(transaction=False)
            for k in range(start, min(start + batch, len(ids))):
                pipe.set(f"{PREFIX}:{entity_type}:{ids[k]}", matrix[k].tobytes())
            pipe.execute()
    finally:
        r.close()
    return len(ids)


class NaiveRanker(ranking_pb2_grpc.RankingServiceServicer):
    def __init__(self, bundle: Path, redis_url: str) -> None:
        self.booster = lgb.Booster(model_file=str(bundle / "model.txt"))
        schema = json.loads((bundle / "schema.json").read_text())
        self.redis = redis.Redis.from_url(redis_url)
        user_cols = json.loads(self.redis.get(f"{PREFIX}:user:columns") or "[]")
        item_cols = json.loads(self.redis.get(f"{PREFIX}:item:columns") or "[]")
        features = schema["features"]
        self.n = len(features)
        self.defaults = np.array(
            [math.nan if f.get("default") is None else f["default"] for f in features]
        )
        self.user_pos = [
            (j, user_cols.index(f.get("column") or f["name"]))
            for j, f in enumerate(features)
            if f["source"] == "user"
        ]
        self.item_pos = [
            (j, item_cols.index(f.get("column") or f["name"]))
            for j, f in enumerate(features)
            if f["source"] == "item"
        ]
        self.user_js = [j for j, _ in self.user_pos]
        self.user_cs = [c for _, c in self.user_pos]
        self.item_js = [j for j, _ in self.item_pos]
        self.item_cs = [c for _, c in self.item_pos]
        self.ctx_pos = [(j, f["name"]) for j, f in enumerate(features) if f["source"] == "context"]
        self.version = schema.get("model_version", "naive")

    def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.ServicerContext
    ) -> ranking_pb2.RankResponse:
        ids = [c.id for c in request.candidates]
        keys = [f"{PREFIX}:user:{request.user_id}"] + [f"{PREFIX}:item:{i}" for i in ids]
        values = self.redis.mget(keys)
        x = np.tile(self.defaults, (len(ids), 1))
        if values[0] is not None:
            user = np.frombuffer(values[0], dtype=np.float32)
            x[:, self.user_js] = user[self.user_cs]
        known = [k for k, raw in enumerate(values[1:]) if raw is not None]
        if known:
            items = np.frombuffer(b"".join(values[1 + k] for k in known), dtype=np.float32)
            items = items.reshape(len(known), -1)
            x[np.ix_(known, self.item_js)] = items[:, self.item_cs]
        for j, name in self.ctx_pos:
            if name in request.context:
                x[:, j] = request.context[name]
        scores = self.booster.predict(x)
        order = np.argsort(-scores, kind="stable")
        if request.top_k:
            order = order[: request.top_k]
        response = ranking_pb2.RankResponse(
            model_version=self.version, request_id=request.request_id
        )
        for k in order:
            response.items.add(id=ids[k], score=float(scores[k]))
        return response


def serve(port: int, bundle: Path, redis_url: str, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(NaiveRanker(bundle, redis_url), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"naive server listening on 127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(2.0).wait()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.baselines.naive",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bundle", type=Path, required=True)
    s.add_argument("--redis", required=True)
    s.add_argument("--threads", type=int, default=8)
    ld = sub.add_parser("load")
    ld.add_argument("--redis", required=True)
    ld.add_argument("--user-features", type=Path, required=True)
    ld.add_argument("--item-features", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.bundle, args.redis, args.threads)
    else:
        for entity, path in (("user", args.user_features), ("item", args.item_features)):
            print(f"{entity}: {load_features(args.redis, entity, path)} keys", flush=True)


if __name__ == "__main__":
    main()
