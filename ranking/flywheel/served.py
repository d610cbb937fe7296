"""`Served`: one answered request as the core scored it, handed to the flywheel by reference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ranking.scoring.bundle import Bundle

__all__ = ["Served"]


@dataclass(slots=True, eq=False)
class Served:
    """What the flywheel's background thread needs about one request; nothing is copied.

    `matrix` is the (n_candidates, n_features) float64 matrix exactly as scored (the core
    allocates a fresh one per request and never touches it again after the hook). `rows` are
    the matrix rows of the returned items, in response order (unscored ones last); `scores`
    the returned scores of the scored ones (the `unscored` at the end score 0). `ids` are the
    candidates' ids (`ranking.ids.Ids`, or any sequence of str). `scored_rows` are the rows
    that were scored (None: all, in order) and `scored` their raw scores, aligned with
    `scored_rows`.
    """

    timestamp: float
    request_id: str
    user_id: str
    bundle: Bundle
    matrix: npt.NDArray[np.float64]
    ids: Sequence[str]
    rows: npt.NDArray[np.intp]
    scores: npt.NDArray[np.float64]
    unscored: int
    degraded: list[str]
    scored_rows: npt.NDArray[np.intp] | None
    scored: npt.NDArray[np.float64]
    log: bool
    shadow: bool
    drift: bool = True
    #: Filled by the background thread when the shadow model scored this request: its score
    #: for each returned row (NaN where it did not score), and its version.
    shadow_scores: npt.NDArray[np.float64] | None = None
    shadow_version: str = ""
    #: The shadow's raw scores of the scored rows (aligned with `scored_rows`), and whether
    #: it was tried at all (it may have been refused by its budget or failed).
    shadow_raw: npt.NDArray[np.float64] | None = None
    shadow_tried: bool = False
    #: When the shadow's callback was scheduled (`time.perf_counter`; 0: run at once).
    scheduled: float = 0.0
