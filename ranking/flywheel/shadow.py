"""A shadow model: scored on a sample of requests in the background, never seen by callers.

The shadow bundle is loaded and compiled like the live one. Its features are taken by name
from the live matrix as served, so it must use a subset of the live model's features (a model
trained from the served-feature log always does); a live model without one of them (after a
hot reload) makes those requests skip the shadow, counted as `shadow_incompatible`.

Scoring runs on the event loop right after the response was handed to gRPC (a callback
`Flywheel.observe` schedules with `call_soon`), within a CPU budget: a token bucket of CPU
seconds filled at `cpu_share` seconds per second (up to half a second's worth) and debited with
the thread CPU each score took; a request that finds it empty is not shadow-scored
(`shadow_skipped_budget`). Nor is it while the event loop is late (`gate.py`,
`shadow_skipped_lag`), while the worker has other live calls in flight (`Flywheel.busy`,
`RANKING_SHADOW_BUSY_INFLIGHT`, `shadow_skipped_busy`: a shadow score then would hold those
calls for its whole scoring time), or while the machine has little idle CPU (`idle.py`,
`shadow_skipped_idle`). Every failure (loading, scoring, a non-finite score) is caught, logged
once and counted; live answers never depend on it. The folder is hot-reloaded
(`shadow_watch.py`).

Why the loop and not the background thread: measured with the demo model, scoring in the
thread tripled the live p99 (its Python steps hold the GIL, and the loop then waits up to the
5 ms switch interval for it), while on the loop a shadow score delays the next request by at
most its own ~1 ms, and the budget bounds how often. The shadow's scores are logged right
after it scored; the background thread computes the agreement.

Agreement per shadow-scored request, over the candidates the live model scored: Spearman rank
correlation of the two score vectors and the overlap of their top 10 (|live ∩ shadow| / k),
exported as running means.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ranking.core.models import ServingModel, build_serving_model
from ranking.flywheel.served import Served
from ranking.scoring.bundle import Bundle, load_bundle

__all__ = ["Shadow", "ShadowStats", "load_shadow", "rank_agreement"]

log = logging.getLogger(__name__)

TOP_K = 10


def _ranks(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Ranks 0..n-1, ties sharing their average rank (so the correlation ignores input order)."""
    n = x.shape[0]
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.concatenate(([True], xs[1:] != xs[:-1]))
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ((starts + ends - 1) / 2.0)[np.cumsum(new) - 1]
    return ranks


def rank_agreement(
    live: npt.NDArray[np.float64], shadow: npt.NDArray[np.float64], k: int = TOP_K
) -> tuple[float, float]:
    """(Spearman correlation, top-k overlap) of two score vectors over the same candidates.

    Spearman is the Pearson correlation of tie-averaged ranks (1.0 when both vectors are
    constant, 0.0 when only one is); the top k of each break ties by candidate order.
    """
    n = live.shape[0]
    if n < 2:
        return 1.0, 1.0
    a = _ranks(live) - (n - 1) / 2.0
    b = _ranks(shadow) - (n - 1) / 2.0
    denom = math.sqrt(float(a @ a) * float(b @ b))
    if denom == 0.0:
        rho = 1.0 if float(a @ a) == float(b @ b) == 0.0 else 0.0
    else:
        rho = float(a @ b) / denom
    top = min(k, n)
    live_top = np.argsort(-live, kind="stable")[:top]
    shadow_top = np.argsort(-shadow, kind="stable")[:top]
    overlap = np.intersect1d(live_top, shadow_top).size / top
    return rho, float(overlap)


@dataclass(slots=True)
class ShadowStats:
    """What the shadow models of one worker did, across reloads."""

    scored: int = 0
    failed: int = 0
    skipped_budget: int = 0
    skipped_busy: int = 0
    skipped_idle: int = 0
    skipped_lag: int = 0
    incompatible: int = 0
    cpu_s: float = 0.0
    rho_sum: float = 0.0
    overlap_sum: float = 0.0
    reloads: int = 0
    reload_failures: int = 0


class Shadow:
    """Scores `Served` requests with a second model (`score` on the event loop, `finish` on
    the flywheel's thread)."""

    def __init__(
        self,
        model: ServingModel,
        *,
        cpu_share: float = 0.1,
        burst_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        stats: ShadowStats | None = None,
    ) -> None:
        self.model = model
        self.cpu_share = cpu_share
        # Half a second's worth by default: a burst cannot take more than that at once.
        self.burst_s = cpu_share * 0.5 if burst_s is None else burst_s
        self._clock = clock
        self._tokens = self.burst_s
        self._last = clock()
        self._columns: dict[int, npt.NDArray[np.intp] | None] = {}
        #: Counters; a reloaded shadow is handed its predecessor's (they count per worker).
        self.stats = ShadowStats() if stats is None else stats

    @property
    def version(self) -> str:
        return self.model.version

    def _columns_for(self, live: Bundle) -> npt.NDArray[np.intp] | None:
        key = id(live)
        if key not in self._columns:
            where = {name: j for j, name in enumerate(live.feature_names)}
            missing = [n for n in self.model.bundle.feature_names if n not in where]
            if missing:
                log.warning(
                    "shadow %s needs features the live model %s does not serve: %s",
                    self.version,
                    live.version,
                    ", ".join(missing[:5]),
                )
                self._columns[key] = None
            else:
                cols = [where[n] for n in self.model.bundle.feature_names]
                self._columns[key] = np.asarray(cols, dtype=np.intp)
            if len(self._columns) > 8:  # old live models: forget the oldest mapping
                self._columns.pop(next(iter(self._columns)))
        return self._columns[key]

    def _admit(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst_s, self._tokens + (now - self._last) * self.cpu_share)
        self._last = now
        return self._tokens > 0

    def score(self, served: Served) -> None:
        """Shadow-score one request: its raw scores go to `served.shadow_raw` (aligned with
        the rows the live model scored). Cheap checks, then the scorer; never raises. Runs on
        the event loop after the response went out (`Flywheel.observe` schedules it)."""
        served.shadow_tried = True
        columns = self._columns_for(served.bundle)
        if columns is None:
            self.stats.incompatible += 1
            return
        if not self._admit():
            self.stats.skipped_budget += 1
            return
        started = time.thread_time()
        try:
            rows = served.scored_rows
            matrix = served.matrix if rows is None else served.matrix[rows]
            raw = self.model.scorer.score(np.ascontiguousarray(matrix[:, columns]))
            if raw.ndim == 2:
                raw = raw[:, self.model.bundle.output_index]
            if not np.all(np.isfinite(raw)):
                raise ValueError("non-finite shadow scores")
        except Exception:
            self.stats.failed += 1
            if self.stats.failed == 1 or math.log2(self.stats.failed).is_integer():
                log.exception(
                    "shadow %s failed to score (%d failures)", self.version, self.stats.failed
                )
            return
        finally:
            spent = time.thread_time() - started
            self.stats.cpu_s += spent
            self._tokens -= spent
        served.shadow_raw = raw
        # The returned rows' shadow scores, for the log (written right after this).
        if served.scored_rows is None:
            served.shadow_scores = raw[served.rows]
        else:
            full = np.full(served.matrix.shape[0], np.nan)
            full[served.scored_rows] = raw
            served.shadow_scores = full[served.rows]
        served.shadow_version = self.version

    def finish(self, served: Served) -> None:
        """The background thread's part: the agreement with the live scores."""
        raw = served.shadow_raw
        if raw is None:
            return
        rho, overlap = rank_agreement(served.scored, raw)
        self.stats.scored += 1
        self.stats.rho_sum += rho
        self.stats.overlap_sum += overlap

    def metrics(self) -> dict[str, float]:
        n = max(self.stats.scored, 1)
        return {
            "shadow_reloads": float(self.stats.reloads),
            "shadow_reload_failures": float(self.stats.reload_failures),
            "shadow_scored": float(self.stats.scored),
            "shadow_failed": float(self.stats.failed),
            "shadow_skipped_budget": float(self.stats.skipped_budget),
            "shadow_skipped_busy": float(self.stats.skipped_busy),
            "shadow_skipped_idle": float(self.stats.skipped_idle),
            "shadow_skipped_lag": float(self.stats.skipped_lag),
            "shadow_incompatible": float(self.stats.incompatible),
            "shadow_cpu_s": self.stats.cpu_s,
            "shadow_spearman_mean": self.stats.rho_sum / n if self.stats.scored else math.nan,
            "shadow_top10_overlap_mean": self.stats.overlap_sum / n
            if self.stats.scored
            else math.nan,
        }


def load_shadow(
    path: Path,
    *,
    engine: str = "auto",
    cpu_share: float = 0.1,
    build: Callable[[Bundle], ServingModel] | None = None,
) -> Shadow | None:
    """Load and compile the shadow bundle (blocking); None, logged, when it cannot be used."""
    try:
        bundle = load_bundle(path)
        model = (build or _build(engine))(bundle)
    except Exception as exc:
        log.error("shadow bundle %s not loaded, serving without it: %s", path, exc)
        return None
    log.info("shadow model %s loaded (%s)", model.version, model.scorer.name)
    return Shadow(model, cpu_share=cpu_share)


def _build(engine: str) -> Callable[[Bundle], ServingModel]:
    def build(bundle: Bundle) -> ServingModel:
        # Its plan is never used (features come from the live matrix); name every column as
        # present so building it does not warn about a store it will never read.
        def cols(source: str) -> tuple[str, ...]:
            return tuple(f.store_column for f in bundle.features if f.source == source)

        return build_serving_model(bundle, cols("user"), cols("item"), engine=engine)

    return build
