"""LambdaRank training: a model bundle from judged query results, with NDCG@10 held out.

`ranking train` calls `train_command`: read the data (`ranking.train.data`), hold out whole
queries, train LightGBM's `lambdarank` with the parameters of one `TrainParams`, report NDCG@10
on the held-out queries, computed by `ranking.train.ndcg.ndcg_at_k` and, for comparison, by
LightGBM's own `ndcg@10` metric, and write the bundle.

The schema says where each feature comes from when the bundle is served: by default columns
prefixed `u_` / `i_` / `c_` are user / item / context features and all others (and every LETOR
feature) are sent inline with the candidates; `sources` changes the prefix mapping.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ranking.scoring.bundle import SOURCES, Bundle, FeatureSpec, write_bundle
from ranking.train.data import RankingData, TrainDataError, load_ranking_data
from ranking.train.ndcg import ndcg_at_k

__all__ = ["DEFAULT_SOURCES", "TqdmCallback", "TrainParams", "TrainReport", "train_command"]

logger = logging.getLogger(__name__)

DEFAULT_SOURCES: Mapping[str, str] = {"u_": "user", "i_": "item", "c_": "context"}


@dataclass(frozen=True)
class TrainParams:
    """The model's training parameters: the one place their defaults live (the CLI reads them).

    `num_threads` 0 uses every core. Checked when built: `TrainDataError` names the bad one.
    """

    trees: int = 300
    leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 20
    valid_fraction: float = 0.2
    seed: int = 0
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.trees < 1 or self.leaves < 2 or self.min_data_in_leaf < 1:
            raise TrainDataError("need trees >= 1, leaves >= 2 and min_data_in_leaf >= 1")
        if not 0.0 < self.learning_rate <= 1.0:
            raise TrainDataError("learning_rate must be in (0, 1]")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise TrainDataError("valid_fraction must be in [0, 1)")
        if self.num_threads < 0:
            raise TrainDataError("num_threads must be >= 0 (0 = every core)")

    def lightgbm_params(self) -> dict[str, Any]:
        """LightGBM's parameters for these settings: every LambdaRank model the project trains
        (from data files or from the served-feature log) is fitted with exactly these."""
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "num_leaves": self.leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "deterministic": True,
            # LightGBM otherwise picks row- or col-wise by timing: not repeatable.
            "force_row_wise": True,
            "seed": self.seed,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }


@dataclass(frozen=True, eq=False)
class TrainReport:
    """What `train_command` did. `heldout` is the held-out split (None without one)."""

    out: Path
    bundle: Bundle
    n_rows: int
    n_features: int
    n_train_queries: int
    n_valid_queries: int
    ndcg_at_10: float | None
    lightgbm_ndcg_at_10: float | None
    seconds: float
    heldout: RankingData | None
    ignored_columns: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        """Lines for the CLI to print."""
        sources = [f.source for f in self.bundle.features]
        counts = ", ".join(f"{sources.count(s)} {s}" for s in SOURCES if s in sources)
        lines = [
            f"bundle     {self.out} (model_version {self.bundle.version})",
            f"data       {self.n_rows} rows, {self.n_features} features ({counts})",
            f"queries    {self.n_train_queries} train, {self.n_valid_queries} held out",
            f"trained in {self.seconds:.1f} s",
        ]
        if self.ndcg_at_10 is not None:
            lines.append(f"NDCG@10    {self.ndcg_at_10:.4f} on the held-out queries")
        if self.ignored_columns:
            lines.append(f"ignored    non-numeric columns: {', '.join(self.ignored_columns)}")
        return "\n".join(lines)


class TqdmCallback:
    """A LightGBM callback that advances a tqdm bar by one tree per boosting round."""

    order = 40
    before_iteration = False

    def __init__(self, bar: tqdm[Any]) -> None:
        self.bar = bar

    def __call__(self, env: Any) -> None:
        self.bar.update(1)
        results = env.evaluation_result_list or []
        if results and (env.iteration + 1) % 10 == 0:
            self.bar.set_postfix({f"{r[0]} {r[1]}": f"{r[2]:.4f}" for r in results}, refresh=False)


def _source_of(name: str, sources: Mapping[str, str]) -> str:
    best = ""
    for prefix in sources:
        if name.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return sources[best] if best else "inline"


def train_command(
    data: Path,
    query: Path | None,
    out: Path,
    *,
    params: TrainParams | None = None,
    group_column: str = "query_id",
    label_column: str = "label",
    sources: Mapping[str, str] | None = None,
    prior: str | None = None,
    version: str | None = None,
    progress: bool = True,
    trees: int | None = None,
    leaves: int | None = None,
    learning_rate: float | None = None,
    min_data_in_leaf: int | None = None,
    valid_fraction: float | None = None,
    seed: int | None = None,
    num_threads: int | None = None,
) -> TrainReport:
    """Train a LambdaRank model on `data` and write a bundle to folder `out`.

    The model's parameters are `params` (default `TrainParams()`), with any of its fields
    given by keyword (`trees=...`) replacing that one. Whole queries (a `valid_fraction` share,
    drawn with `seed`) are held out of training; the report's `ndcg_at_10` is measured on
    them. `sources` maps feature-name prefixes to bundle sources (default `DEFAULT_SOURCES`;
    unmatched names are `inline`); `prior` names an item feature as the bundle's cheap prior.
    Raises `TrainDataError` (a ValueError) for unusable inputs or arguments.
    """
    given: dict[str, Any] = {
        "trees": trees,
        "leaves": leaves,
        "learning_rate": learning_rate,
        "min_data_in_leaf": min_data_in_leaf,
        "valid_fraction": valid_fraction,
        "seed": seed,
        "num_threads": num_threads,
    }
    import lightgbm as lgb

    started = time.perf_counter()
    p = dataclasses.replace(
        params or TrainParams(), **{k: v for k, v in given.items() if v is not None}
    )
    mapping = dict(DEFAULT_SOURCES if sources is None else sources)
    for prefix, source in mapping.items():
        if source not in SOURCES:
            raise TrainDataError(
                f"source {source!r} for prefix {prefix!r} must be one of {', '.join(SOURCES)}"
            )

    dataset = load_ranking_data(data, query, group_column=group_column, label_column=label_column)
    n_queries = dataset.n_queries
    n_valid = max(1, round(p.valid_fraction * n_queries)) if p.valid_fraction > 0 else 0
    if n_queries - n_valid < 1:
        raise TrainDataError(f"{data}: {n_queries} queries are too few to hold {n_valid} out")
    perm = np.random.default_rng(p.seed).permutation(n_queries)
    valid_q, train_q = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
    train = dataset.take_queries(train_q)
    heldout = dataset.take_queries(valid_q) if n_valid else None

    names = list(dataset.feature_names)
    specs = [FeatureSpec(name, _source_of(name, mapping)) for name in names]
    if prior is not None and not any(s.name == prior and s.source == "item" for s in specs):
        raise TrainDataError(f"prior {prior!r} is not an item feature of {data}")

    lgb_params = p.lightgbm_params()
    train_set = lgb.Dataset(
        train.features, train.labels, group=train.group_sizes, feature_name=names
    )
    valid_sets: list[Any] = []
    evals: dict[str, dict[str, list[float]]] = {}
    if heldout is not None:
        valid_sets.append(
            lgb.Dataset(
                heldout.features, heldout.labels, group=heldout.group_sizes, reference=train_set
            )
        )
    desc = f"training {p.trees}x{p.leaves}"
    with tqdm(total=p.trees, desc=desc, unit="tree", file=sys.stderr, disable=not progress) as bar:
        booster = lgb.train(
            lgb_params,
            train_set,
            num_boost_round=p.trees,
            valid_sets=valid_sets,
            valid_names=["heldout"][: len(valid_sets)],
            callbacks=[TqdmCallback(bar), lgb.record_evaluation(evals)],
        )

    ndcg = lgb_ndcg = None
    if heldout is not None:
        predicted = booster.predict(heldout.features, raw_score=True)
        ndcg = ndcg_at_k(predicted, heldout.labels, heldout.group_sizes, 10)
        lgb_ndcg = float(evals["heldout"]["ndcg@10"][-1])
    from ranking.flywheel.reference import build_reference, write_reference

    # The training rows' distribution, for drift monitoring; written before the model so a
    # server watching `out` finds it when it reloads.
    write_reference(out, build_reference(train.features, names))
    bundle = write_bundle(out, booster.model_to_string(), specs, version=version, prior=prior)
    seconds = time.perf_counter() - started
    logger.debug("trained %s in %.1f s (NDCG@10 %s)", out, seconds, ndcg)
    return TrainReport(
        out=Path(out),
        bundle=bundle,
        n_rows=int(dataset.labels.shape[0]),
        n_features=len(names),
        n_train_queries=train.n_queries,
        n_valid_queries=n_valid,
        ndcg_at_10=ndcg,
        lightgbm_ndcg_at_10=lgb_ndcg,
        seconds=seconds,
        heldout=heldout,
        ignored_columns=dataset.ignored_columns,
    )
