"""Traffic for the small world and reading a served-feature log back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ranking.api.v1 import ranking_pb2 as pb
from ranking.api.v1 import ranking_pb2_grpc


def small_request(
    rng: np.random.Generator,
    k: int,
    *,
    n: int = 20,
    top_k: int = 0,
    hour: float | None = None,
    inline: bool | None = None,
    request_id: str | None = None,
) -> pb.RankRequest:
    """A request on the small world: a user, `n` distinct items (some unknown), an hour."""
    user = f"u{int(rng.integers(0, 60))}"  # u50.. are unknown users
    items = rng.choice(520, size=n, replace=False)  # i500.. are unknown items
    req = pb.RankRequest(
        request_id=f"r{k}" if request_id is None else request_id,
        user_id=user,
        top_k=top_k,
        context={"c_hour": float(rng.integers(0, 24)) if hour is None else hour},
    )
    with_inline = bool(rng.random() < 0.5) if inline is None else inline
    if with_inline:
        req.feature_names.append("q_match")
    for i in items.tolist():
        cand = req.candidates.add(id=f"i{i}")
        if with_inline:
            cand.feature_values.append(float(rng.normal()))
    return req


async def send(
    stub: ranking_pb2_grpc.RankingServiceStub, requests: list[pb.RankRequest]
) -> list[pb.RankResponse]:
    return [await stub.Rank(r, timeout=10) for r in requests]


def read_log_rows(folder: Path) -> pa.Table:
    """Every complete file under `folder`, one table (asserts no temporary file is left)."""
    tmp = [p for p in folder.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert not tmp, tmp
    files = sorted(folder.rglob("*.parquet"))
    assert files, f"no log files under {folder}"
    for f in files:
        rel = f.relative_to(folder).parts
        assert rel[0].startswith("date=") and rel[1].startswith("hour="), rel
    return pa.concat_tables([pq.ParquetFile(f).read() for f in files])


def by_request(table: pa.Table) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        out.setdefault(row["request_id"], []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: r["position"])
    return out
