"""The request codec's per-request CPU: the Python path it replaced vs the native one.

    python -m benchmarks.codec            # R200-shaped request, top_k 0 and 50
    python -m benchmarks.codec --rounds 400

One R200-shaped request (200 candidates with demo item ids, a user, the scenario's 7 context
features, no inline values). Per request, in-process, CPU time (thread_time_ns):

    before: protobuf parse (grpc's deserializer) + to_query + validate + sort (numpy argsort)
            + to_response (RankedItem per candidate) + serialize
    after:  native decode into Ids + validate (native duplicate check) + native top-k
            + native encode

Rounds interleave the two paths (each round runs both, 100 requests each) and the figures are
medians over rounds, so background load on a shared machine hits both alike. Assembling the
matrix is the same code on both paths (the features area) and is not measured here.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import numpy as np
import numpy.typing as npt

from ranking.api.v1 import ranking_pb2 as pb
from ranking.core.service import RankingService, RankResult, _sort
from ranking.server.converters import to_query, to_response

CONTEXT = {
    "c_hour": 20.0,
    "c_dow": 4.0,
    "c_is_weekend": 0.0,
    "c_device": 1.0,
    "c_session_depth": 3.0,
    "c_from_push": 0.0,
    "c_promo_multiplier": 1.0,
}


def r200_body(top_k: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    items = rng.choice(50_000, size=200, replace=False)
    return pb.RankRequest(
        request_id="bench-1",
        user_id=f"u{int(rng.integers(10_000))}",
        candidates=[pb.Candidate(id=f"i{int(i)}") for i in items],
        context=CONTEXT,
        top_k=top_k,
    ).SerializeToString()


# ---- the path before (the code this branch replaced, kept to measure against) -------------


def old_to_query(request: pb.RankRequest) -> dict[str, object]:
    candidates = request.candidates
    ids = [c.id for c in candidates]
    names = list(request.feature_names)
    if not names and not _old_no_inline_values(request, ids):
        raise ValueError("candidates.feature_values: sent without feature_names")
    return {
        "ids": ids,
        "user_id": request.user_id,
        "context": dict(request.context),
        "top_k": request.top_k,
        "request_id": request.request_id,
    }


def _old_no_inline_values(request: pb.RankRequest, ids: list[str]) -> bool:
    lengths = list(map(len, ids))
    if not lengths or max(lengths) >= 126 or min(lengths) == 0 or not "".join(ids).isascii():
        return not any(len(c.feature_values) for c in request.candidates)
    rest = pb.RankRequest(
        request_id=request.request_id,
        user_id=request.user_id,
        context=request.context,
        top_k=request.top_k,
        feature_names=request.feature_names,
        strict=request.strict,
    )
    return bool(request.ByteSize() - rest.ByteSize() == sum(lengths) + 4 * len(ids))


def old_validate(ids: list[str], top_k: int, context: dict[str, float]) -> None:
    n = len(ids)
    if n == 0 or n > 1000 or top_k < 0:
        raise ValueError("bad")
    if len(set(ids)) != n:
        raise ValueError("duplicate")
    if not all(ids):
        raise ValueError("empty")
    for value in context.values():
        if math.isinf(value):
            raise ValueError("inf")


def old_sort(
    ids: Sequence[str], scores: npt.NDArray[np.float64], top_k: int
) -> tuple[list[str], list[float], int]:
    n = len(ids)
    limit = top_k if 0 < top_k < n else n
    order = np.argsort(-scores, kind="stable")[:limit]
    return [ids[i] for i in order.tolist()], scores[order].tolist(), 0


def old_to_response(ids: list[str], scores: list[float], request_id: str) -> bytes:
    response = pb.RankResponse(model_version="bench-v1", degraded_reasons=[], request_id=request_id)
    add = response.items.add
    for item_id, score in zip(ids, scores, strict=True):
        add(id=item_id, score=score)
    return response.SerializeToString()


def before(body: bytes, scores: npt.NDArray[np.float64]) -> bytes:
    q = old_to_query(pb.RankRequest.FromString(body))
    ids = q["ids"]
    assert isinstance(ids, list)
    old_validate(ids, q["top_k"], q["context"])  # type: ignore[arg-type]
    ranked, ranked_scores, _ = old_sort(ids, scores, q["top_k"])  # type: ignore[arg-type]
    return old_to_response(ranked, ranked_scores, q["request_id"])  # type: ignore[arg-type]


# ---- the path after --------------------------------------------------------------------------

_CORE = SimpleNamespace(max_candidates=1000)


def after(body: bytes, scores: npt.NDArray[np.float64]) -> bytes:
    query = to_query(body, 1000, 64)
    RankingService._validate(_CORE, query)  # type: ignore[arg-type]
    ids = query.candidate_ids
    order, ranked, unscored = _sort(ids, scores, None, len(ids), query.top_k)
    result = RankResult(ids, order, ranked, unscored, "bench-v1", [])
    return to_response(result, query.request_id)


def stages_after(body: bytes, scores: npt.NDArray[np.float64]) -> dict[str, int]:
    """CPU ns of each native step, for the README's breakdown."""
    t = time.thread_time_ns
    t0 = t()
    query = to_query(body, 1000, 64)
    t1 = t()
    RankingService._validate(_CORE, query)  # type: ignore[arg-type]
    t2 = t()
    ids = query.candidate_ids
    order, ranked, unscored = _sort(ids, scores, None, len(ids), query.top_k)
    t3 = t()
    to_response(RankResult(ids, order, ranked, unscored, "bench-v1", []), query.request_id)
    t4 = t()
    return {"decode": t1 - t0, "validate": t2 - t1, "top-k": t3 - t2, "encode": t4 - t3}


def per_request_us(fn: Callable[[], object], reps: int) -> float:
    start = time.thread_time_ns()
    for _ in range(reps):
        fn()
    return (time.thread_time_ns() - start) / reps / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--reps", type=int, default=100)
    args = parser.parse_args()
    scores = np.random.default_rng(1).normal(size=200)
    for top_k in (0, 50):
        body = r200_body(top_k)
        a = pb.RankResponse.FromString(before(body, scores))
        b = pb.RankResponse.FromString(after(body, scores))
        assert a == b, "the two paths disagree"
        old, new = [], []
        steps: dict[str, list[int]] = {}
        for _ in range(args.rounds):
            old.append(per_request_us(lambda: before(body, scores), args.reps))  # noqa: B023
            new.append(per_request_us(lambda: after(body, scores), args.reps))  # noqa: B023
            for k, v in stages_after(body, scores).items():
                steps.setdefault(k, []).append(v)
        mo, mn = statistics.median(old), statistics.median(new)
        parts = ", ".join(f"{k} {statistics.median(v) / 1e3:.1f}" for k, v in steps.items())
        print(
            f"R200 top_k={top_k}: before {mo:.1f} us, after {mn:.1f} us per request "
            f"({mo / mn:.1f}x); after by step (single calls, us): {parts}"
        )


if __name__ == "__main__":
    main()
