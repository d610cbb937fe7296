"""The benchmark world: the demo's users and items, one model bundle, and feature files.

Every system in a run is given the same things: the bundle folder (model.txt + schema.json),
and the user / item feature tables as Parquet files with an `id` column. The service under test
reads them with `--bundle` and `--features` (or from Redis after `ranking features load`), the
naive baseline loads them into its own Redis keys, and MLServer gets the bundle's model.txt and
the feature matrices the schema describes. Everything is cached under the cache folder, keyed by
the world's shape, so only the first run trains.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

__all__ = ["BenchWorld", "WorldSpec", "default_cache_dir", "prepare_world"]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ranking-bench"


@dataclass(frozen=True)
class WorldSpec:
    """The shape of a scenario's world and model (`[world]` in a scenario)."""

    n_users: int = 10_000
    n_items: int = 50_000
    trees: int = 500
    leaves: int = 63
    seed: int = 0
    #: Queries x 100 candidates to train on when the service's demo builder is not available.
    train_queries: int = 500
    #: Model features the scenario expects (checked against the bundle; None: not checked).
    #: The demo world has 64: 24 user, 32 item, 8 context.
    features: int | None = None

    @property
    def key(self) -> str:  # `features` is a check, not part of the world
        return f"u{self.n_users}-i{self.n_items}-t{self.trees}-l{self.leaves}-s{self.seed}"


@dataclass(frozen=True)
class BenchWorld:
    spec: WorldSpec
    folder: Path
    bundle: Path
    model_file: Path
    user_features: Path
    item_features: Path
    feature_names: tuple[str, ...]

    def placeholders(self) -> dict[str, str]:
        return {
            "bundle": str(self.bundle),
            "model": str(self.model_file),
            "user_features": str(self.user_features),
            "item_features": str(self.item_features),
            "n_users": str(self.spec.n_users),
            "n_items": str(self.spec.n_items),
            "trees": str(self.spec.trees),
            "leaves": str(self.spec.leaves),
            "world": str(self.folder),
        }


def prepare_world(spec: WorldSpec, cache_dir: Path | None = None) -> BenchWorld:
    """Build (once) and return the world's files. Training a 500 x 63 model takes minutes."""
    folder = (cache_dir or default_cache_dir()) / spec.key
    folder.mkdir(parents=True, exist_ok=True)
    bundle = folder / "bundle"
    users_file, items_file = folder / "user.parquet", folder / "item.parquet"
    world = None
    if not (users_file.exists() and items_file.exists()):
        world = _make_world(spec)
        _write_table(users_file, world.user_ids, world.user_columns, world.user_matrix)
        _write_table(items_file, world.item_ids, world.item_columns, world.item_matrix)
    if not (bundle / "model.txt").exists() or _stale_fallback(bundle):
        world = world or _make_world(spec)
        _train_bundle(world, spec, bundle)
    from ranking.scoring.bundle import load_bundle

    loaded = load_bundle(bundle)
    if spec.features is not None and len(loaded.features) != spec.features:
        raise ValueError(
            f"the scenario expects {spec.features} features; the bundle in {bundle} has "
            f"{len(loaded.features)}"
        )
    return BenchWorld(
        spec=spec,
        folder=folder,
        bundle=bundle,
        model_file=bundle / "model.txt",
        user_features=users_file,
        item_features=items_file,
        feature_names=loaded.feature_names,
    )


_SOURCE_FILE = "source.txt"


def _demo_builder() -> Any:
    try:
        from ranking.demo.model import build_demo_bundle
    except ImportError:
        return None
    return build_demo_bundle


def _stale_fallback(bundle: Path) -> bool:
    """A bundle trained here while the service's demo builder was missing is rebuilt with the
    builder once it exists, so the benchmark serves the model `ranking serve` would."""
    source = bundle / _SOURCE_FILE
    return source.exists() and source.read_text().strip() == "fallback" and bool(_demo_builder())


def _make_world(spec: WorldSpec):  # type: ignore[no-untyped-def]
    from ranking.demo.world import make_world

    return make_world(n_users=spec.n_users, n_items=spec.n_items, seed=spec.seed)


def _write_table(
    path: Path, ids: Sequence[str], columns: Sequence[str], matrix: npt.NDArray[np.float32]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [pa.array(list(ids), pa.string())]
    arrays += [pa.array(matrix[:, j]) for j in range(matrix.shape[1])]
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_arrays(arrays, names=["id", *columns]), tmp)
    tmp.replace(path)


def _train_bundle(world, spec: WorldSpec, out: Path) -> None:  # type: ignore[no-untyped-def]
    """Prefer the service's own demo builder (the very model `ranking serve` would build);
    train a LambdaRank model on the demo world here when that builder is not available."""
    build_demo_bundle = _demo_builder()
    if build_demo_bundle is not None:
        built = Path(
            build_demo_bundle(
                out.parent / "demo-cache",
                trees=spec.trees,
                leaves=spec.leaves,
                n_users=spec.n_users,
                n_items=spec.n_items,
                progress=True,
            )
        )
        out.mkdir(parents=True, exist_ok=True)
        for name in ("model.txt", "schema.json"):
            (out / name).write_bytes((built / name).read_bytes())
        (out / _SOURCE_FILE).write_text("demo-builder\n")
        return
    import lightgbm as lgb

    from ranking.scoring.bundle import FeatureSpec, write_bundle

    started = time.monotonic()
    sample = world.sample_queries(
        spec.train_queries, candidates_per_query=min(100, spec.n_items), seed=1
    )
    x = world.feature_matrix(sample).astype(np.float64)
    y = sample.relevance.reshape(-1)
    group = sample.group_sizes()
    names = list(world.feature_row_order())
    print(
        f"training a {spec.trees} x {spec.leaves} LambdaRank model on {x.shape[0]} rows "
        f"(cached afterwards in {out})",
        flush=True,
    )
    booster = lgb.train(
        {
            "objective": "lambdarank",
            "num_leaves": spec.leaves,
            "learning_rate": 0.05,
            "min_data_in_leaf": 5,
            "verbose": -1,
            "num_threads": 2,
            "seed": 7,
        },
        lgb.Dataset(x, y, group=group, feature_name=names),
        num_boost_round=spec.trees,
    )
    features = [FeatureSpec(n, {"u": "user", "i": "item", "c": "context"}[n[0]]) for n in names]
    write_bundle(out, booster.model_to_string(), features, version=f"bench-{spec.key}")
    (out / _SOURCE_FILE).write_text("fallback\n")
    print(f"trained in {time.monotonic() - started:.0f} s", flush=True)


class MatrixBuilder:
    """Feature matrices in model order for (user, candidates, context), as the service builds
    them: user and item columns from the tables, context from the request, the schema's
    default (NaN unless set) for unknown entities and missing values."""

    def __init__(self, world: BenchWorld) -> None:
        import pyarrow.parquet as pq

        from ranking.scoring.bundle import load_bundle

        bundle = load_bundle(world.bundle)
        self.n_features = len(bundle.features)
        self._defaults = bundle.defaults()
        tables = {}
        for entity, path in (("user", world.user_features), ("item", world.item_features)):
            t = pq.read_table(path)
            ids = [str(x) for x in t.column("id").to_pylist()]
            cols = [c for c in t.column_names if c != "id"]
            matrix = np.column_stack([t.column(c).to_numpy(zero_copy_only=False) for c in cols])
            tables[entity] = ({i: r for r, i in enumerate(ids)}, cols, matrix.astype(np.float64))
        self._user_index, user_cols, self._users = tables["user"]
        self._item_index, item_cols, self._items = tables["item"]
        self._user_pos = [(j, user_cols.index(f.store_column)) for j, f in _of(bundle, "user")]
        self._item_pos = [(j, item_cols.index(f.store_column)) for j, f in _of(bundle, "item")]
        self._ctx = [(j, f.name) for j, f in _of(bundle, "context")]

    def matrix(
        self, user_id: str, item_ids: Sequence[str], context: Mapping[str, float]
    ) -> npt.NDArray[np.float64]:
        n = len(item_ids)
        x = np.tile(self._defaults, (n, 1))
        u = self._user_index.get(user_id)
        if u is not None:
            for j, c in self._user_pos:
                x[:, j] = self._users[u, c]
        rows = np.array([self._item_index.get(i, -1) for i in item_ids])
        known = rows >= 0
        for j, c in self._item_pos:
            x[known, j] = self._items[rows[known], c]
        for j, name in self._ctx:
            if name in context and not math.isnan(context[name]):
                x[:, j] = context[name]
        return x


def _of(bundle, source: str):  # type: ignore[no-untyped-def]
    return [(j, f) for j, f in enumerate(bundle.features) if f.source == source]
