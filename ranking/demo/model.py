"""The demo's model: a LambdaRank bundle trained on the synthetic world, built once and cached.

`build_demo_bundle` returns a bundle folder in the cache, training it the first time. The folder
name carries everything the model depends on (trees, leaves, world size and `CODE_VERSION`), so
a cached bundle is only reused for the same demo. A build trains into a private temporary
folder and renames it into place, under an exclusive `flock` on a lock file beside it: a second
process asking for the same bundle waits for the first and then reuses its result, and no
reader ever sees a half-written bundle.

Training data: 300 requests x 200 candidates (60,000 rows) sampled from the world, 64 features
in `World.feature_row_order()` (user, item, context); 100 other requests are held out for the
NDCG@10 printed at the end.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ranking.demo.sizes import DEMO
from ranking.demo.world import World, make_world
from ranking.scoring.bundle import MODEL_FILE, SCHEMA_FILE, FeatureSpec, write_bundle
from ranking.train import TqdmCallback, ndcg_at_k

__all__ = [
    "CANDIDATES_PER_QUERY",
    "CODE_VERSION",
    "DEMO_SEED",
    "PRIOR",
    "build_demo_bundle",
    "demo_bundle_name",
    "demo_feature_specs",
]

logger = logging.getLogger(__name__)

#: Bump when the world or the training recipe changes: cached bundles of older versions are
#: then rebuilt (the folder name carries it).
CODE_VERSION = 1
DEMO_SEED = 0
PRIOR = "i_popularity"
CANDIDATES_PER_QUERY = 200
TRAIN_QUERIES = 300
VALID_QUERIES = 100
_TRAIN_SAMPLE_SEED = 1
_VALID_SAMPLE_SEED = 2


def demo_bundle_name(trees: int, leaves: int, n_users: int, n_items: int) -> str:
    """The cache folder name of a demo bundle."""
    return f"demo-{trees}x{leaves}-{n_users}x{n_items}-v{CODE_VERSION}"


def demo_feature_specs(world: World) -> list[FeatureSpec]:
    """Schema entries for the world's 64 features, in model order; missing values stay NaN."""
    return (
        [FeatureSpec(name, "user") for name in world.user_columns]
        + [FeatureSpec(name, "item") for name in world.item_columns]
        + [FeatureSpec(name, "context") for name in world.context_columns]
    )


def build_demo_bundle(
    cache_dir: Path,
    *,
    trees: int = DEMO.trees,
    leaves: int = DEMO.leaves,
    n_users: int = DEMO.n_users,
    n_items: int = DEMO.n_items,
    progress: bool = True,
    num_threads: int | None = None,
) -> Path:
    """The demo bundle folder in `cache_dir`, trained only when no complete one is cached
    (500 x 63: 77 s of CPU, 103 s on two cores shared with other work). The world is
    `make_world(n_users, n_items, DEMO_SEED)`.

    `progress` shows a bar and the held-out NDCG@10 on stderr; otherwise they are logged.
    `num_threads` (default: every core) only changes how fast the model trains.
    Safe to call from several processes at once: one builds, the others wait and reuse it.
    """
    if trees < 1 or leaves < 2:
        raise ValueError("trees must be >= 1 and leaves >= 2")
    cache_dir = Path(cache_dir)
    name = demo_bundle_name(trees, leaves, n_users, n_items)
    final = cache_dir / name
    if _complete(final):
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_dir / f".{name}.lock", name, progress):
        if _complete(final):  # built by the process we waited for
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=cache_dir))
        try:
            threads = num_threads or os.cpu_count() or 1
            _train_into(tmp, name, trees, leaves, n_users, n_items, progress, threads)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is for every reader
            if final.exists():  # an incomplete leftover (not ours: ours are renamed whole)
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _complete(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / SCHEMA_FILE).is_file()


@contextmanager
def _exclusive_lock(path: Path, name: str, progress: bool) -> Iterator[None]:
    """flock(LOCK_EX) on `path` for the duration of the block; says so when it has to wait."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(progress, f"waiting for another process building {name} ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing releases the lock. The lock file stays: unlinking it would let a third
        # process lock a new inode while a second still holds the old one.
        os.close(fd)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
    else:
        logger.info("%s", message)


def _train_into(
    folder: Path,
    name: str,
    trees: int,
    leaves: int,
    n_users: int,
    n_items: int,
    progress: bool,
    num_threads: int,
) -> None:
    import lightgbm as lgb
    from tqdm import tqdm

    started = time.perf_counter()
    logger.info("building demo bundle %s", name)
    world = make_world(n_users, n_items, seed=DEMO_SEED)
    train = world.sample_queries(TRAIN_QUERIES, CANDIDATES_PER_QUERY, seed=_TRAIN_SAMPLE_SEED)
    valid = world.sample_queries(VALID_QUERIES, CANDIDATES_PER_QUERY, seed=_VALID_SAMPLE_SEED)
    names = list(world.feature_row_order())
    params: dict[str, Any] = {
        "objective": "lambdarank",
        "num_leaves": leaves,
        "learning_rate": 0.05,
        # 60,000 rows leave room for 63 leaves of >= 20 rows; LambdaRank hessians get tiny as
        # the fit improves, so the hessian floor is lowered to let every tree grow all leaves.
        "min_data_in_leaf": 20,
        "min_sum_hessian_in_leaf": 1e-6,
        "deterministic": True,
        "force_row_wise": True,  # LightGBM otherwise picks row/col-wise by timing: not repeatable
        "seed": DEMO_SEED,
        "num_threads": num_threads,
        "verbosity": -1,
    }
    train_set = lgb.Dataset(
        world.feature_matrix(train),
        train.relevance.ravel(),
        group=train.group_sizes(),
        feature_name=names,
    )
    desc = f"training demo model {trees}x{leaves}"
    with tqdm(total=trees, desc=desc, unit="tree", file=sys.stderr, disable=not progress) as bar:
        booster = lgb.train(params, train_set, num_boost_round=trees, callbacks=[TqdmCallback(bar)])
    model_text = booster.model_to_string()
    digest = hashlib.sha256(model_text.encode()).hexdigest()[:8]
    write_bundle(
        folder,
        model_text,
        demo_feature_specs(world),
        version=f"demo-{trees}x{leaves}-{digest}",
        prior=PRIOR,
    )

    x_valid = world.feature_matrix(valid).astype(np.float64)
    labels = valid.relevance.ravel().astype(np.float64)
    sizes = valid.group_sizes()
    ndcg = ndcg_at_k(booster.predict(x_valid, raw_score=True), labels, sizes, 10)
    prior_only = ndcg_at_k(x_valid[:, names.index(PRIOR)], labels, sizes, 10)
    _say(
        progress,
        f"demo model {trees}x{leaves}: NDCG@10 {ndcg:.4f} on {VALID_QUERIES} held-out requests "
        f"(popularity prior alone {prior_only:.4f}); built in "
        f"{time.perf_counter() - started:.0f} s",
    )
