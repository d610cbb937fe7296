"""Assemble the candidate x feature matrix in the model's feature order.

A `MatrixPlan` is built once per (bundle, store columns) and reused by every request: it knows
where each model feature comes from and where it lands, so a request's work is a few numpy
block copies (user row broadcast, item rows gathered, context broadcast, inline values).
Values nobody supplied keep the bundle's default (NaN unless the bundle says otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from ranking.errors import InvalidRequest
from ranking.features.store import FetchResult
from ranking.scoring.bundle import Bundle

__all__ = ["MatrixPlan"]

log = logging.getLogger(__name__)

Index = slice | npt.NDArray[np.intp]


def _as_index(positions: Sequence[int]) -> Index:
    """A slice when positions are consecutive (cheaper to copy into), else an index array."""
    if positions and list(positions) == list(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[0] + len(positions))
    return np.asarray(positions, dtype=np.intp)


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
        self._item_defaults = self.defaults[self._item_pos]
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
    ) -> tuple[Index, npt.NDArray[np.intp]]:
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
        return _as_index(positions), np.asarray(sources, dtype=np.intp)

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

    def assemble(
        self,
        user: FetchResult | None,
        items: FetchResult | None,
        n: int,
        context: Mapping[str, float],
        inline_names: Sequence[str] = (),
        inline_values: npt.NDArray[np.float64] | None = None,
        inline_rows: npt.NDArray[np.bool_] | None = None,
    ) -> npt.NDArray[np.float64]:
        """The (n, num_features) float64 matrix; names must have passed `check_names`.

        `inline_values` (n, len(inline_names)) override stored values; when `inline_rows` is
        given, only the rows it marks carry inline values (the others sent none).
        """
        matrix = np.empty((n, self.num_features), dtype=np.float64)
        matrix[...] = self.defaults
        if user is not None and self._user_src.size and user.found[0]:
            matrix[:, self._user_pos] = user.rows[0, self._user_src]
        if items is not None and self._item_src.size:
            block = items.rows[:, self._item_src]
            if not items.found.all():
                block = block.astype(np.float64)
                block[~items.found] = self._item_defaults
            matrix[:, self._item_pos] = block
        for name, value in context.items():
            matrix[:, self.context_positions[name]] = value
        if inline_names and inline_values is not None:
            positions = np.array([self.inline_positions[n] for n in inline_names], np.intp)
            if inline_rows is None:
                matrix[:, positions] = inline_values
            else:
                rows = np.flatnonzero(inline_rows)
                matrix[np.ix_(rows, positions)] = inline_values[rows]
        return matrix
