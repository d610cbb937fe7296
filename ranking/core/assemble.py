"""Assemble the candidate x feature matrix in the model's feature order.

A `MatrixPlan` is built once per (bundle, store columns) and reused by every request: it knows
where each model feature comes from and where it lands. A request's matrix starts as the
bundle's defaults (`new_matrix`); the feature store gathers stored rows straight into it through
the plan's column maps (`item_target`, `user_target`: the cache does this natively, with no
intermediate row block); `finish` broadcasts the user row and writes the context values in one
native pass over the rows (`_order.fill_rows`), then the inline values.
Values nobody supplied keep the bundle's default (NaN unless the bundle says otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from ranking.core import _order
from ranking.errors import InvalidRequest
from ranking.features.store import Target
from ranking.scoring.bundle import Bundle

__all__ = ["MatrixPlan"]

log = logging.getLogger(__name__)


class MatrixPlan:
    """How to fill the model's feature matrix for one bundle and one store layout."""

    def __init__(
        self,
        bundle: Bundle,
        user_columns: Sequence[str] = (),
        item_columns: Sequence[str] = (),
    ) -> None:
        self.num_features = len(bundle.features)
        self.defaults = bundle.defaults()
        self.unfilled: list[str] = []  # store features the store does not hold: always default
        self._user_pos, self._user_src = self._entity(bundle, "user", user_columns)
        self._item_pos, self._item_src = self._entity(bundle, "item", item_columns)
        self.context_positions = {
            f.name: i for i, f in enumerate(bundle.features) if f.source == "context"
        }
        self.inline_positions = {
            f.name: i for i, f in enumerate(bundle.features) if f.source in ("inline", "item")
        }
        self.prior_position = (
            bundle.feature_names.index(bundle.prior) if bundle.prior is not None else None
        )
        if self.unfilled:
            log.warning(
                "the feature store lacks %d model features; they take their defaults: %s",
                len(self.unfilled),
                ", ".join(self.unfilled[:10]),
            )

    def _entity(
        self, bundle: Bundle, source: str, columns: Sequence[str]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(matrix positions, store columns) of the model features taken from `source`."""
        where = {name: j for j, name in enumerate(columns)}
        positions, sources = [], []
        for i, spec in enumerate(bundle.features):
            if spec.source != source:
                continue
            j = where.get(spec.store_column)
            if j is None:
                self.unfilled.append(spec.name)
                continue
            positions.append(i)
            sources.append(j)
        return np.asarray(positions, dtype=np.int64), np.asarray(sources, dtype=np.int64)

    def check_names(self, context: Mapping[str, float], inline_names: Sequence[str]) -> None:
        """Refuse names the model does not know, naming them, before any work is done."""
        unknown = [k for k in context if k not in self.context_positions]
        if unknown:
            raise InvalidRequest(
                f"context: unknown feature names {sorted(unknown)[:5]}; the model's context "
                f"features are {sorted(self.context_positions)[:20]}"
            )
        unknown = [k for k in inline_names if k not in self.inline_positions]
        if unknown:
            raise InvalidRequest(
                f"feature_names: unknown or not per-candidate: {sorted(unknown)[:5]}"
            )

    @property
    def uses_users(self) -> bool:
        """Whether any model feature comes from the user's stored row."""
        return bool(self._user_src.size)

    def new_matrix(self, n: int) -> npt.NDArray[np.float64]:
        """An (n, num_features) float64 matrix holding the bundle's defaults."""
        matrix = np.empty((n, self.num_features), dtype=np.float64)
        matrix[...] = self.defaults
        return matrix

    def item_target(self, matrix: npt.NDArray[np.float64]) -> Target:
        """Where candidate i's stored row lands: row i, the item features' positions."""
        return Target(matrix, self._item_pos, self._item_src)

    def user_target(self, matrix: npt.NDArray[np.float64]) -> Target:
        """Where the user's stored row lands: row 0 (`finish` copies it to every row)."""
        return Target(matrix, self._user_pos, self._user_src)

    def finish(
        self,
        matrix: npt.NDArray[np.float64],
        user_found: bool,
        context: Mapping[str, float],
        inline_names: Sequence[str] = (),
        inline_values: npt.NDArray[np.float64] | None = None,
        inline_rows: npt.NDArray[np.bool_] | None = None,
    ) -> npt.NDArray[np.float64]:
        """Complete a matrix the store gathered into; names must have passed `check_names`.

        `inline_values` (n, len(inline_names)) override stored values; when `inline_rows` is
        given, only the rows it marks carry inline values (the others sent none).
        """
        if context or (user_found and self._user_pos.size):
            n = len(context)
            _order.fill_rows(
                matrix,
                self._user_pos,
                user_found,
                np.fromiter(map(self.context_positions.__getitem__, context), np.int64, n),
                np.fromiter(context.values(), np.float64, n),
            )
        if inline_names and inline_values is not None:
            positions = np.array([self.inline_positions[n] for n in inline_names], np.intp)
            if inline_rows is None:
                matrix[:, positions] = inline_values
            else:
                rows = np.flatnonzero(inline_rows)
                matrix[np.ix_(rows, positions)] = inline_values[rows]
        return matrix
