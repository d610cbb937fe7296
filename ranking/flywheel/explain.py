"""Explanations on demand: the largest feature contributions to the best items' scores.

With `RankRequest.explain`, the core asks `Explainer.explain` for the first `MAX_ITEMS` scored
items of the response. Contributions are LightGBM's SHAP values (`Booster.predict(...,
pred_contrib=True)`): per item one value per feature plus the expected value (`bias`), which
sum to the raw score. The response lists the `TOP_FEATURES` largest by absolute value and the
sum of the others (`rest`), so `bias + sum(top) + rest` is the score up to float rounding.

Cost: TreeSHAP is O(trees x leaves x depth^2) per row, far more than scoring: about 8 ms per
item for the demo's 500-tree, 63-leaf model (80 ms for 10 items) on this machine, against
~5 us to score it. So it is off by default, runs in the scoring thread (the event loop stays
free), and explains only as many items as the caller's deadline leaves time for (by the cost
per item measured so far); when that cuts the list, `explain.partial` is added to the
degraded reasons. The first explain for a model also builds a LightGBM `Booster` from its
text (~15 ms for the demo model), cached per model.

`encode_explanations` turns them into protobuf bytes of a `RankResponse` holding only the
`explanations` field: serialized protobuf messages concatenate as a merge, so the transport
appends them to the main response bytes, whichever encoder produced those.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ranking.core.deadline import Deadline
from ranking.degraded import Degraded
from ranking.scoring.bundle import Bundle

__all__ = [
    "EXPLAIN_PARTIAL",
    "MAX_ITEMS",
    "TOP_FEATURES",
    "Contribution",
    "Explainer",
    "Explanation",
    "encode_explanations",
]

MAX_ITEMS = 10
TOP_FEATURES = 5
EXPLAIN_PARTIAL = Degraded.EXPLAIN_PARTIAL


@dataclass(frozen=True, slots=True)
class Contribution:
    feature: str
    value: float
    contribution: float


@dataclass(frozen=True, slots=True)
class Explanation:
    id: str
    bias: float
    top: tuple[Contribution, ...]
    rest: float


class Explainer:
    """Per-model LightGBM boosters for `pred_contrib`, built on first use and cached."""

    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor
        self._boosters: dict[str, Any] = {}
        self.per_item_s = 0.0  # learned cost per explained item (0 until the first)

    def _booster(self, bundle: Bundle) -> Any:
        booster = self._boosters.get(bundle.model_hash)
        if booster is None:
            import lightgbm as lgb

            booster = lgb.Booster(model_str=bundle.model_text)
            if len(self._boosters) >= 2:
                self._boosters.pop(next(iter(self._boosters)))
            self._boosters[bundle.model_hash] = booster
        return booster

    def fit(self, wanted: int, deadline: Deadline) -> int:
        """How many of `wanted` items can be explained before the caller's deadline."""
        k = wanted
        while k > 0 and self.per_item_s > 0 and deadline.caller_gone(slack_s=k * self.per_item_s):
            k -= 1
        return k

    def contributions(self, bundle: Bundle, rows: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        """(len(rows), n_features + 1) SHAP values, the last column the bias (blocking)."""
        started = time.perf_counter()
        raw = self._booster(bundle).predict(rows, pred_contrib=True, num_threads=1)
        width = len(bundle.features) + 1
        contrib = np.asarray(raw, dtype=np.float64)
        if contrib.shape[1] != width:  # multiclass: one block per class
            k = bundle.output_index
            contrib = contrib[:, k * width : (k + 1) * width]
        per_item = (time.perf_counter() - started) / max(len(rows), 1)
        old = self.per_item_s
        self.per_item_s = per_item if old == 0 else 0.8 * old + 0.2 * per_item
        return contrib

    async def explain(
        self,
        bundle: Bundle,
        matrix: npt.NDArray[np.float64],
        rows: npt.NDArray[np.intp],
        ids: Sequence[str],
    ) -> list[Explanation]:
        """Explanations for matrix rows `rows` (items `ids`, same order), off the event loop."""
        if not len(rows):
            return []
        x = np.ascontiguousarray(matrix[rows])
        loop = asyncio.get_running_loop()
        contrib = await loop.run_in_executor(self._executor, self.contributions, bundle, x)
        return summarize(bundle.feature_names, x, contrib, ids)


def summarize(
    names: Sequence[str],
    x: npt.NDArray[np.float64],
    contrib: npt.NDArray[np.float64],
    ids: Sequence[str],
    top: int = TOP_FEATURES,
) -> list[Explanation]:
    """The `top` largest contributions of each row, and the sum of the rest."""
    out = []
    per_feature = contrib[:, :-1]
    order = np.argsort(-np.abs(per_feature), axis=1, kind="stable")[:, :top]
    for r, item_id in enumerate(ids):
        picked = order[r].tolist()
        shown = tuple(
            Contribution(names[j], float(x[r, j]), float(per_feature[r, j])) for j in picked
        )
        rest = float(per_feature[r].sum() - per_feature[r, picked].sum())
        out.append(Explanation(item_id, float(contrib[r, -1]), shown, rest))
    return out


def encode_explanations(explanations: Sequence[Explanation]) -> bytes:
    """Protobuf bytes of a RankResponse with only `explanations`: append to the main response."""
    from ranking.api.v1 import ranking_pb2 as pb

    message = pb.RankResponse()
    for e in explanations:
        entry = message.explanations.add(id=e.id, bias=e.bias, rest=e.rest)
        for c in e.top:
            entry.top.add(feature=c.feature, value=c.value, contribution=c.contribution)
    return message.SerializeToString()
