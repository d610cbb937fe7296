"""The loop on the demo world: send its traffic, and label what was served from its hidden truth.

    python -m ranking.flywheel.demo bundle --out DIR                  # the demo model
    python -m ranking.flywheel.demo tables --out DIR                  # users/items.parquet
    python -m ranking.flywheel.demo traffic --requests 1500           # to 127.0.0.1:50051
    python -m ranking.flywheel.demo outcomes --log DIR --out labels.csv
    python -m ranking.flywheel.demo traffic --requests 300 --shift promo

`bundle` copies the demo bundle (built and cached on first use, like `ranking serve` does)
into a folder of its own, to serve and replace. `tables` writes the world's users and items as
Parquet entity tables (`id` + float32 feature columns, NaN = missing), so a demo server can
serve any bundle folder (`ranking serve --bundle DIR --features user=... --features
item=...`) and hot-reload it when it changes.

`traffic` draws requests the way the world's retrieval would (`World.sample_queries`: users by
activity, 200 candidates, a context) and sends them with request ids `{prefix}-{k}`. `--shift`
changes the world for a drift demo: `promo` runs the x3 points promotion on every request (it
is on 5 % of them normally), `hour` sends every request at 3 a.m.

`outcomes` reads a served-feature log and grades every logged (user, item, context) from the
world's hidden preference with fresh impression noise (`World.grade`), as users' engagement
would; it writes the engaged rows (grade > 0) as `request_id,item_id,label`, the form `ranking
train --log --labels` reads (rows it does not list count as 0).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ranking.demo.sizes import DEMO
from ranking.demo.world import CONTEXT_COLUMNS, World, make_world

__all__ = ["main", "outcomes", "traffic"]


def _world(users: int, items: int) -> World:
    return make_world(n_users=users, n_items=items)


def traffic(
    target: str,
    requests: int,
    *,
    seed: int = 0,
    shift: str | None = None,
    prefix: str = "demo",
    users: int = DEMO.n_users,
    items: int = DEMO.n_items,
    deadline_s: float = 1.0,
) -> int:
    """Send `requests` demo requests one after another; returns how many were answered."""
    import grpc

    from ranking.api.v1 import ranking_pb2 as pb
    from ranking.api.v1 import ranking_pb2_grpc

    world = _world(users, items)
    sample = world.sample_queries(requests, 200, seed=1000 + seed)
    context = sample.context.astype(np.float64)
    if shift == "promo":
        context[:, CONTEXT_COLUMNS.index("c_promo_multiplier")] = 3.0
    elif shift == "hour":
        context[:, CONTEXT_COLUMNS.index("c_hour")] = 3.0
    elif shift is not None:
        raise SystemExit(f"--shift: promo or hour, not {shift!r}")
    answered = 0
    started = time.perf_counter()
    with grpc.insecure_channel(target) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        for q in range(requests):
            ctx = {
                name: float(v)
                for name, v in zip(CONTEXT_COLUMNS, context[q], strict=True)
                if not np.isnan(v)
            }
            request = pb.RankRequest(
                request_id=f"{prefix}-{seed}-{q}",
                user_id=world.user_ids[int(sample.user_idx[q])],
                candidates=[pb.Candidate(id=world.item_ids[i]) for i in sample.item_idx[q]],
                context=ctx,
            )
            try:
                stub.Rank(request, timeout=deadline_s)
                answered += 1
            except grpc.RpcError as exc:
                print(f"request {q}: {exc.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - started
    print(f"{answered}/{requests} requests answered in {seconds:.1f} s")
    return answered


def outcomes(
    log_dir: Path, out: Path, *, seed: int = 0, users: int = DEMO.n_users, items: int = DEMO.n_items
) -> int:
    """Grade every logged row from the world's hidden preference; returns engaged rows."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from ranking.flywheel.logwriter import feature_column
    from ranking.flywheel.train_log import read_log

    world = _world(users, items)
    table = read_log(log_dir).table
    user_index = {u: i for i, u in enumerate(world.user_ids)}
    item_index = {u: i for i, u in enumerate(world.item_ids)}
    uids = table.column("user_id").to_pylist()
    iids = table.column("item_id").to_pylist()
    known = np.array(
        [u in user_index and i in item_index for u, i in zip(uids, iids, strict=True)], bool
    )
    u = np.array([user_index.get(x, 0) for x in uids], dtype=np.int64)
    i = np.array([item_index.get(x, 0) for x in iids], dtype=np.int64)
    ctx = np.column_stack(
        [table.column(feature_column(c)).to_numpy(zero_copy_only=False) for c in CONTEXT_COLUMNS]
    ).astype(np.float32)
    grades = world.grade(u, i[:, None], ctx, seed=seed)[:, 0]
    grades[~known] = 0
    engaged = np.flatnonzero(grades > 0)
    labels = pa.table(
        {
            "request_id": table.column("request_id").take(pa.array(engaged)),
            "item_id": table.column("item_id").take(pa.array(engaged)),
            "label": pa.array(grades[engaged].astype(np.int64)),
        }
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pa_csv.write_csv(labels, out)
    print(f"{len(engaged)} engaged of {table.num_rows} logged rows -> {out}")
    return len(engaged)


def bundle(out: Path) -> Path:
    """Copy the (cached, else built) demo bundle into folder `out`."""
    import shutil

    from ranking.server.app import demo_bundle_path
    from ranking.settings import Settings

    source = demo_bundle_path(Settings(), progress=True)
    shutil.copytree(source, out, dirs_exist_ok=True)
    print(f"{out}: demo bundle {source.name}")
    return Path(out)


def tables(out: Path, *, users: int = DEMO.n_users, items: int = DEMO.n_items) -> tuple[Path, Path]:
    """Write the world's entity tables; returns (users.parquet, items.parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    world = _world(users, items)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, ids, columns, matrix in (
        ("users", world.user_ids, world.user_columns, world.user_matrix),
        ("items", world.item_ids, world.item_columns, world.item_matrix),
    ):
        data = {"id": pa.array(ids, pa.string())}
        data.update({c: pa.array(matrix[:, j]) for j, c in enumerate(columns)})
        path = out / f"{name}.parquet"
        pq.write_table(pa.table(data), path)
        paths.append(path)
        print(f"{path}: {len(ids)} rows x {len(columns)} features")
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ranking.flywheel.demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("bundle", help="copy the demo bundle into a folder")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("tables", help="write the world's users and items as Parquet")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("traffic", help="send demo requests")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift", choices=["promo", "hour"])
    p = sub.add_parser("outcomes", help="label a served-feature log from the hidden preference")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "bundle":
        bundle(args.out)
        return 0
    if args.command == "tables":
        tables(args.out)
        return 0
    if args.command == "traffic":
        answered = traffic(args.target, args.requests, seed=args.seed, shift=args.shift)
        return 0 if answered == args.requests else 1
    outcomes(args.log, args.out, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
