"""The model being served: bundle, scorer and matrix plan, swapped atomically on reload.

A request takes `holder.current` once and uses that `ServingModel` to the end, so requests in
flight finish on the model they started with and one response never mixes two models.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ranking.core.assemble import MatrixPlan
from ranking.errors import BundleError
from ranking.scoring.bundle import Bundle, load_bundle
from ranking.scoring.load_check import check_in_child
from ranking.scoring.model_text import parse_model_text
from ranking.scoring.scorer import Scorer

__all__ = ["ModelHolder", "ScoreCost", "ServingModel", "build_serving_model"]

log = logging.getLogger(__name__)


@dataclass
class ScoreCost:
    """Learned cost of scoring: fixed + per-row seconds, smoothed over recent batches.

    Used to decide how many candidates fit in the time left. Updated from every scored batch
    with an exponentially weighted mean of the per-row cost (the fixed part is measured once).
    """

    per_row_s: float
    fixed_s: float = 20e-6
    alpha: float = 0.05

    def observe(self, rows: int, seconds: float) -> None:
        if rows >= 8:
            sample = max(seconds - self.fixed_s, 0.0) / rows
            self.per_row_s += self.alpha * (sample - self.per_row_s)

    def rows_within(self, seconds: float) -> int:
        if seconds <= self.fixed_s:
            return 0
        return int((seconds - self.fixed_s) / self.per_row_s) if self.per_row_s > 0 else 1 << 30


@dataclass
class ServingModel:
    bundle: Bundle
    scorer: Scorer
    plan: MatrixPlan
    num_trees: int
    cost: ScoreCost
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return self.bundle.version


ScorerFactory = Callable[[str, str], Scorer]


def _default_scorer_factory(model_text: str, engine: str) -> Scorer:
    from ranking.scoring.engines import build_scorer

    return build_scorer(model_text, engine)


def build_serving_model(
    bundle: Bundle,
    user_columns: tuple[str, ...],
    item_columns: tuple[str, ...],
    *,
    engine: str = "auto",
    scorer_factory: ScorerFactory = _default_scorer_factory,
    isolate: bool = True,
) -> ServingModel:
    """Build the scorer and plan and smoke-test them; blocking (call it off the event loop).

    The model text already passed the strict parser (`parse_bundle`); with `isolate` it is also
    loaded by LightGBM in a short-lived child process first (`scoring.load_check`), so a text
    that would still crash LightGBM's native loader kills only that child. The smoke test scores
    a batch of defaults-and-noise rows and times it, which seeds the cost model. Any failure
    raises BundleError so a reload can refuse the bundle and keep serving.
    """
    if isolate:
        model = parse_model_text(bundle.model_text, bundle.model_hash)  # memoised: no re-parse
        check_in_child(bundle.model_text, model)
    try:
        scorer = scorer_factory(bundle.model_text, engine)
    except BundleError:
        raise
    except Exception as exc:
        log.exception("scorer build failed")
        raise BundleError(
            f"{bundle.path}: the model cannot be scored ({type(exc).__name__})"
        ) from exc
    if scorer.num_features != len(bundle.features):
        raise BundleError(
            f"{bundle.path}: the model takes {scorer.num_features} features, "
            f"the schema lists {len(bundle.features)}"
        )
    plan = MatrixPlan(bundle, user_columns, item_columns)
    rng = np.random.default_rng(0)
    smoke = np.tile(plan.defaults, (200, 1))
    smoke[:, ::2] = rng.normal(size=(200, (plan.num_features + 1) // 2))
    try:
        scorer.score(smoke)  # warm-up
        started = time.perf_counter()
        scores = scorer.score(smoke)
        elapsed = time.perf_counter() - started
    except Exception as exc:
        log.exception("smoke score failed")
        raise BundleError(f"{bundle.path}: smoke scoring failed ({type(exc).__name__})") from exc
    if not np.all(np.isfinite(scores)):
        raise BundleError(f"{bundle.path}: smoke scoring produced non-finite scores")
    num_trees = len(parse_model_text(bundle.model_text, bundle.model_hash).trees)
    log.info(
        "model %s: %d features, %d trees, engine %s, %.0f us per 200 rows",
        bundle.version,
        len(bundle.features),
        num_trees,
        scorer.name,
        elapsed * 1e6,
    )
    return ServingModel(bundle, scorer, plan, num_trees, ScoreCost(per_row_s=elapsed / 200))


class ModelHolder:
    """Holds the serving model; reloads from a folder off the event loop and swaps atomically."""

    def __init__(
        self,
        model: ServingModel,
        *,
        build: Callable[[Bundle], ServingModel],
        executor: Executor | None = None,
    ) -> None:
        self.current = model
        self._build = build
        self._executor = executor
        self._lock: asyncio.Lock | None = None
        self.reloads = 0
        self.failed_reloads = 0

    async def reload(self, path: Path) -> ServingModel:
        """Load, validate, compile and smoke-test the bundle at `path`, then swap it in.

        On any failure the old model keeps serving and BundleError is raised.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            loop = asyncio.get_running_loop()
            try:
                model = await loop.run_in_executor(self._executor, self._load, path)
            except BundleError as exc:
                self.failed_reloads += 1
                log.error("reload refused, still serving %s: %s", self.current.version, exc)
                raise
            self.current = model
            self.reloads += 1
            log.info("now serving model %s", model.version)
            return model

    def _load(self, path: Path) -> ServingModel:
        return self._build(load_bundle(path))
